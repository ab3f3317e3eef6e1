"""``omnigrid serve --front nginx`` on a real grid: every answer through nginx, each
request taken by the shard owning its key, live streams flowing, an online scale
followed, a clean stop."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from loadtest.procs import descendants
from omnigrid.actors.slots import slot_of
from tests.api.test_cluster_scale import run_job
from tests.api.test_live import Stream, add, stocked
from tests.conftest import Grid, new_id, write_headers


@pytest.fixture(scope="module")
def fronted() -> Iterator[Grid]:
    g = Grid(OMNIGRID_FRONT="nginx", OMNIGRID_FRONT_WORKERS="2")
    try:
        yield g
    finally:
        g.stop()


def counter(metrics: str, name: str, **labels: str) -> dict[str, float]:
    """shard -> a counter's value summed over its other labels."""
    out: dict[str, float] = {}
    for line in metrics.splitlines():
        if not line.startswith(name + "{"):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line))
        if all(found.get(k) == v for k, v in labels.items()):
            out[found["shard"]] = out.get(found["shard"], 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def forwarded(c: httpx.Client) -> float:
    return sum(counter(c.get("/metrics").text, "omnigrid_shard_forward_batch_size_count").values())


def test_requests_reach_their_owner_through_nginx(fronted: Grid) -> None:
    with httpx.Client(base_url=fronted.url, timeout=10) as c:
        skus = [stocked(c) for _ in range(40)]
        before = forwarded(c)
        for sku in skus:  # a stock read touches its SKU alone
            r = c.get(f"/v1/skus/{sku}/stock")
            assert r.status_code == 200 and r.json()["on_hand"] == 100
        served = counter(c.get("/metrics").text, "omnigrid_http_requests_total", route="get_stock")
        assert forwarded(c) == before, "a request reached a shard that does not own its key"
        assert len(served) == 2  # both shards took their own
        assert c.get("/v1/cluster").json()["front"] == {"kind": "nginx", "workers": 2}

        uid = new_id("u")
        assert add(c, uid, skus[0], "miniprogram").status_code == 200
        cart = c.get(f"/v1/carts/{uid}", headers=write_headers("app"))
        assert cart.status_code == 200 and cart.json()["lines"][0]["sku"] == skus[0]
        assert cart.headers["etag"]
        # the grid's own answers pass as they are: problems, bodies, status codes
        bad = c.post(f"/v1/carts/{uid}/lines", content=b"{", headers=write_headers())
        assert bad.status_code == 400
        assert bad.headers["content-type"].startswith("application/problem+json")
        big = c.post(f"/v1/carts/{uid}/lines", content=b"x" * 70_000, headers=write_headers())
        assert big.status_code == 413


def test_a_change_reaches_a_stream_through_nginx(fronted: Grid) -> None:
    with httpx.Client(base_url=fronted.url, timeout=10) as c:
        sku = stocked(c)
        uid = new_id("u")
        stream = Stream(f"{fronted.url}/v1/streams/users/{uid}")
        try:
            assert stream.status == 200
            assert add(c, uid, sku, "pos").status_code == 200
            event = stream.next()  # not held in nginx's buffers
            assert event["event"] == "cart" and event["data"]["uid"] == uid
        finally:
            stream.close()


def test_an_online_scale_is_followed_by_the_front(fronted: Grid) -> None:
    with httpx.Client(base_url=fronted.url, timeout=30) as c:
        readings = run_job(c, "/v1/cluster/scale", {"shards": 3})
        assert readings[-1]["state"] == "done", readings[-1]
        shards = c.get("/v1/cluster").json()["shards"]
        ranges = next(s["slot_ranges"] for s in shards if s["shard"] == 2)

        def on_third(sku: str) -> bool:
            slot = slot_of(f"stock:{sku}")
            return any(first <= slot <= last for first, last in ranges)

        third = [sku for sku in (stocked(c) for _ in range(60)) if on_third(sku)]
        assert third
        # the front reloads within a couple of seconds of the new map
        deadline = time.monotonic() + 15
        while True:
            before = forwarded(c)
            for sku in third:
                assert c.get(f"/v1/skus/{sku}/stock").status_code == 200
            if forwarded(c) == before:
                break
            assert time.monotonic() < deadline, "nginx still sends shard 2's keys elsewhere"
            time.sleep(0.5)


def test_nginx_killed_is_started_again_and_a_stop_ends_it_cleanly() -> None:
    grid = Grid(OMNIGRID_FRONT="nginx", capture=True)
    pid_file = Path(grid.data_dir, "front", "nginx.pid")
    master = int(pid_file.read_text())
    time.sleep(2.5)  # omnigrid serve has seen nginx's workers once
    workers = list(descendants(master))
    assert workers
    os.kill(master, signal.SIGKILL)  # the master alone: its workers would serve on
    deadline = time.monotonic() + 15
    while not pid_file.exists() or int(pid_file.read_text()) == master:
        assert time.monotonic() < deadline, "nginx was not started again"
        time.sleep(0.2)
    grid.wait_ready(15)
    assert not any(alive(w) for w in workers), "the old workers serve on"
    nginx_pid = int(pid_file.read_text())
    grid.stop()
    out = grid.proc.stdout.read() if grid.proc.stdout else ""
    assert grid.proc.returncode == 0, out
    assert "nginx exited" in out and "starting it again" in out
    assert not os.path.exists(f"/proc/{nginx_pid}"), "nginx outlived the grid"
    with pytest.raises(httpx.TransportError):
        httpx.get(grid.url + "/readyz", timeout=2)


def alive(pid: int) -> bool:
    """Running, not a zombie waiting to be reaped."""
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def test_a_front_that_cannot_start_stops_the_grid_cleanly(tmp_path: Path) -> None:
    """nginx cannot take the port (another program holds it): the shards that started
    stop cleanly and ``omnigrid serve`` exits 1, saying why."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
        env.pop("RAY_ADDRESS", None)
        run = subprocess.run(
            [
                *(sys.executable, "-m", "omnigrid.api.runtime.cli", "serve", "--front", "nginx"),
                *("--port", str(port), "--data-dir", str(tmp_path), "--log-level", "error"),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
            start_new_session=True,
        )
    assert run.returncode == 1, run.stdout + run.stderr
    assert "nginx did not start" in run.stdout and "in use" in run.stdout, run.stdout
    assert "stopped cleanly" in run.stdout
