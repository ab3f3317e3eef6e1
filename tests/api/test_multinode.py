"""The grid on a Ray cluster of two nodes, each a network namespace on a private subnet
(loadtest/netns.py), as two hosts would be: the journal in a Redis and the store in
PostgreSQL that both nodes reach, nothing on a node's own disk. Shards spread over
the nodes, HTTP answers on each node, slots move online across nodes, and a node
lost in the middle of a scale costs nothing acknowledged."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from loadtest.fault_makers import RedisServer
from loadtest.netns import Forward, Netns, RayNodes
from loadtest.procs import wait_ready
from omnigrid.api.client import GridAuth
from tests.api.test_cluster_scale import (
    SKUS,
    STOCK,
    Writers,
    check_everything_acknowledged_is_there,
    read_job,
)
from tests.conftest import PostgresDatabase, free_port, write_headers

KEY = GridAuth("k_nodes", "the multi-node test's bootstrap secret")
PORT = 8000


class TwoNodeGrid:
    def __init__(self) -> None:
        self.net = Netns(2)
        self.ray = RayNodes(self.net)
        self.redis = RedisServer(
            free_port(), fsync="always", host=self.net.bridge_ip, password=uuid.uuid4().hex
        )
        self.forward: Forward | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, postgres: PostgresDatabase) -> None:
        self.net.up()
        self.ray.start()
        self.ray.wait_alive(2)  # else Ray may place every shard on the head
        self.redis.start()
        self.forward = Forward(self.net.bridge_ip, ("127.0.0.1", 5432))
        dsn = f"postgresql://postgres@{self.net.bridge_ip}:{self.forward.port}/{postgres.name}"
        env = {
            **self.ray.env,
            "RAY_ADDRESS": self.ray.address,
            "OMNIGRID_REDIS_URL": self.redis.url,
            "OMNIGRID_POSTGRES_DSN": dsn,
            "OMNIGRID_IDENTITY_SECRET": "the multi-node test's identity secret",
            "OMNIGRID_BOOTSTRAP_KEY": f"{KEY.key_id}:{KEY.secret}",
            "OMNIGRID_NAMESPACE": f"nodes{self.net.k}",
        }
        self.env = env
        self.urls = [f"http://{self.net.ip(i)}:{PORT}" for i in range(2)]
        self.serve()
        self.wait_ready(self.urls)

    def serve(self) -> None:
        """``omnigrid serve`` on node 0, joining the cluster; its output in ``self.log``."""
        argv = [sys.executable, "-m", "omnigrid.api.runtime.cli", "serve", "--host", "0.0.0.0"]
        argv += ["--port", str(PORT), "--log-level", "error"]
        argv += ["--data-dir", tempfile.mkdtemp(prefix="omnigrid-nodes-")]
        fd, self.log = tempfile.mkstemp(prefix="omnigrid-serve-", suffix=".log")
        self.proc = subprocess.Popen(
            self.net.command(0, argv),
            env={**self.env, "OMNIGRID_SHARDS": "4"} if self.proc is None else self.env,
            start_new_session=True,
            stdout=fd,
            stderr=subprocess.STDOUT,
        )
        os.close(fd)  # the server has it

    def output(self) -> str:
        with open(self.log) as f:
            return f.read()

    def wait_ready(self, urls: list[str]) -> None:
        wait_ready(urls, 180, lambda: self.proc is not None and self.proc.poll() is None)

    def shards(self, url: str) -> list[dict[str, object]]:
        answer = httpx.get(url + "/v1/cluster", auth=KEY, timeout=10).json()
        shards: list[dict[str, object]] = answer["shards"]
        return shards

    def stop(self) -> None:
        """Everything it made, whatever of it was made."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.net.down()
        if self.forward is not None:
            self.forward.close()
        self.redis.kill()
        self.ray.stop()


@pytest.fixture()
def nodes(postgres: PostgresDatabase) -> Iterator[TwoNodeGrid]:
    assert os.geteuid() == 0, "network namespaces need root (CI and this machine have it)"
    grid = TwoNodeGrid()
    try:
        grid.start(postgres)
        yield grid
    finally:
        grid.stop()


def run_to_end(c: httpx.Client, job_id: str) -> dict[str, object]:
    deadline = time.monotonic() + 300
    while (job := read_job(c, job_id))["state"] == "running":
        assert time.monotonic() < deadline, job
        time.sleep(0.3)
    answer: dict[str, object] = job
    return answer


def test_two_nodes_serve_move_slots_and_lose_one_mid_scale_without_losing_a_write(
    nodes: TwoNodeGrid,
) -> None:
    first, second = nodes.urls
    shards = nodes.shards(first)
    assert len({s["node_id"] for s in shards}) == 2, shards  # spread over both nodes
    with (
        httpx.Client(base_url=first, timeout=30, auth=KEY) as c0,
        httpx.Client(base_url=second, timeout=30, auth=KEY) as c1,
    ):
        for i, sku in enumerate(SKUS):  # written through either node
            r = (c0, c1)[i % 2].put(
                f"/v1/skus/{sku}/stock", json={"on_hand": STOCK}, headers=write_headers()
            )
            assert r.status_code == 200, r.text
        for sku in SKUS:  # read through the other
            assert c1.get(f"/v1/skus/{sku}/stock").json()["on_hand"] == STOCK

        writers = Writers(first, threads=2, auth=KEY)  # the node that stays
        scaled = c1.post("/v1/cluster/scale", json={"shards": 6}, headers=write_headers())
        assert run_to_end(c0, scaled.json()["job_id"])["state"] == "done"
        six = nodes.shards(second)
        assert [s["shard"] for s in six] == [0, 1, 2, 3, 4, 5]
        assert len({s["node_id"] for s in six}) == 2

        back = c0.post("/v1/cluster/scale", json={"shards": 4}, headers=write_headers())
        job_id = back.json()["job_id"]
        deadline = time.monotonic() + 120
        while read_job(c0, job_id)["slots_moved"] == 0:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert nodes.net.kill_node(1) > 0  # the second node is gone, mid-job
        job = run_to_end(c0, job_id)
        for _ in range(3):  # it gave up on a shard of the lost node before Ray moved it
            if job["state"] == "done":
                break
            again = c0.post("/v1/cluster/scale", json={"shards": 4}, headers=write_headers())
            job = run_to_end(c0, again.json()["job_id"])
        assert job["state"] == "done", job
        nodes.wait_ready([first])  # Ray restarted the lost node's shards on this one
        writers.join()
        after = nodes.shards(first)
        assert [s["shard"] for s in after] == [0, 1, 2, 3]
        assert len({s["node_id"] for s in after}) == 1
        check_everything_acknowledged_is_there(c0, writers)

        # the driver crashes with a shard a job started (Ray keeps it: it is detached);
        # the next start finds it, stops it, and serves the stored shape with its own
        five = c0.post("/v1/cluster/scale", json={"shards": 5}, headers=write_headers())
        assert run_to_end(c0, five.json()["job_id"])["state"] == "done"
        assert nodes.proc is not None
        nodes.proc.kill()
        nodes.proc.wait(10)
        nodes.serve()
        nodes.wait_ready([first])
        assert "stopped 1 shard processes an earlier run left" in nodes.output()
        assert [s["shard"] for s in nodes.shards(first)] == [0, 1, 2, 3, 4]
        check_everything_acknowledged_is_there(c0, writers)
