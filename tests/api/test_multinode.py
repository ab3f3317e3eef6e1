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
from typing import Any

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
    """Ray on two namespaces; ``spare`` more namespaces for nodes that join later."""

    def __init__(self, spare: int = 0) -> None:
        self.net = Netns(2 + spare)
        self.ray = RayNodes(self.net)
        self.redis = RedisServer(
            free_port(), fsync="always", host=self.net.bridge_ip, password=uuid.uuid4().hex
        )
        self.forward: Forward | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, postgres: PostgresDatabase) -> None:
        self.net.up()
        self.ray.start(2)
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
        self.urls = [f"http://{self.net.ip(i)}:{PORT}" for i in range(self.net.nodes)]
        self.serve()
        self.wait_ready(self.urls[:2])

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


def running(postgres: PostgresDatabase, spare: int) -> Iterator[TwoNodeGrid]:
    assert os.geteuid() == 0, "network namespaces need root (CI and this machine have it)"
    grid = TwoNodeGrid(spare)
    try:
        grid.start(postgres)
        yield grid
    finally:
        grid.stop()


@pytest.fixture()
def nodes(postgres: PostgresDatabase) -> Iterator[TwoNodeGrid]:
    yield from running(postgres, spare=0)


@pytest.fixture()
def nodes_and_a_spare(postgres: PostgresDatabase) -> Iterator[TwoNodeGrid]:
    yield from running(postgres, spare=1)


def run_to_end(c: httpx.Client, job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 300
    while (job := read_job(c, job_id))["state"] == "running":
        assert time.monotonic() < deadline, job
        time.sleep(0.3)
    answer: dict[str, Any] = job
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


def test_a_node_that_joins_takes_shards_and_a_drained_node_gives_them_away_first(
    nodes_and_a_spare: TwoNodeGrid,
) -> None:
    grid = nodes_and_a_spare
    first, _, third = grid.urls
    with httpx.Client(base_url=first, timeout=30, auth=KEY) as c0:
        for sku in SKUS:
            r = c0.put(f"/v1/skus/{sku}/stock", json={"on_hand": STOCK}, headers=write_headers())
            assert r.status_code == 200, r.text
        two = {n["node_id"] for n in cluster(c0)["nodes"]}
        writers = Writers(first, threads=2, auth=KEY)  # node 0 stays throughout
        try:
            grid.ray.join(2)  # a third node joins: it runs nothing until a rebalance
            grid.ray.wait_alive(3)
            view = cluster(c0)
            joined = next(n["node_id"] for n in view["nodes"] if n["node_id"] not in two)
            assert shards_on(view, joined) == []
            rebalanced = c0.post("/v1/cluster/rebalance", headers=write_headers())
            job = run_to_end(c0, rebalanced.json()["job_id"])
            assert job["state"] == "done" and len(job["relocated"]) == 1, job  # 4 shards: 2/1/1
            grid.wait_ready([third])  # HTTP on the new node
            view = cluster(c0)
            assert len(shards_on(view, joined)) == 1 and slots_on(view, joined) > 0
            assert sorted(len(n["shards"]) for n in view["nodes"]) == [1, 1, 2]

            head = next(s["node_id"] for s in view["shards"] if s["shard"] == 0)
            second = next(n for n in two if n != head)
            drained = c0.post(
                "/v1/cluster/drain", json={"node": second[:12]}, headers=write_headers()
            )
            assert drained.status_code == 202, drained.text
            job = run_to_end(c0, drained.json()["job_id"])
            assert job["state"] == "done" and job["node"] == second, job
            view = cluster(c0)
            assert shards_on(view, second) == [] and slots_on(view, second) == 0
            assert next(n for n in view["nodes"] if n["node_id"] == second)["drained"]
            assert sorted(len(n["shards"]) for n in view["nodes"]) == [0, 2, 2]
            # a rebalance never places a shard on a drained node
            again = run_to_end(
                c0, c0.post("/v1/cluster/rebalance", headers=write_headers()).json()["job_id"]
            )
            assert again["state"] == "done" and again["relocated"] == {}, again

            # the node leaves: it ran nothing, so nothing restarts and no request fails for it
            assert grid.net.kill_node(1) > 0
            for url in (first, third):
                stock = httpx.get(f"{url}/v1/skus/{SKUS[0]}/stock", auth=KEY, timeout=10)
                assert stock.status_code == 200, stock.text
            time.sleep(2)
            writers.join()
            assert [s["shard"] for s in cluster(c0)["shards"]] == [0, 1, 2, 3]
            check_everything_acknowledged_is_there(c0, writers)
            print(
                f"drain of a node with two shards: {job['slots_moved']} slot moves, "
                f"{job['entities_moved']} entities, longest freeze {job['longest_freeze_ms']} ms"
            )
        finally:  # a failed check must not leave the writers running
            writers.stop.set()


def cluster(c: httpx.Client) -> dict[str, Any]:
    answer = c.get("/v1/cluster")
    assert answer.status_code == 200, answer.text
    view: dict[str, Any] = answer.json()
    return view


def shards_on(view: dict[str, Any], node: str) -> list[int]:
    return [s["shard"] for s in view["shards"] if s.get("node_id") == node]


def slots_on(view: dict[str, Any], node: str) -> int:
    return sum(
        b - a + 1 for s in view["shards"] if s.get("node_id") == node for a, b in s["slot_ranges"]
    )
