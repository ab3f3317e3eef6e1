"""How ``omnigrid serve`` stops and starts, as systemd, Docker and Kubernetes do it.

SIGTERM under load: streams end with a retry hint, every acknowledged write is
there after a restart, the process exits 0 well within its bound, says what it
did, and leaves no shard process or socket behind. A second signal forces the
stop. A dead ``ray start`` cluster named in /tmp/ray/ray_current_cluster does
not capture a plain ``omnigrid serve``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil

from tests.conftest import Grid, free_port, new_id, write_headers

STOP_TIMEOUT_S = 20


def serve() -> Grid:
    """A grid of its own whose output the test reads, with a short stop bound."""
    return Grid(capture=True, OMNIGRID_STOP_TIMEOUT_S=str(STOP_TIMEOUT_S))


def shard_pids(grid: Grid) -> list[int]:
    return [s["pid"] for s in httpx.get(f"{grid.url}/v1/cluster").json()["shards"]]


def kill_all(grid: Grid, pids: list[int]) -> None:
    """Whatever is left of a grid that may no longer answer (``Grid.kill`` asks it for
    its shards): its process group and the shard processes it had."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(grid.proc.pid, signal.SIGKILL)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        grid.proc.wait(10)


def test_sigterm_under_load_stops_cleanly_with_nothing_lost_or_left_behind() -> None:
    grid = serve()
    url, pids = grid.url, shard_pids(grid)
    uid, sku = new_id("u"), new_id("sku")
    acked = 0
    stop_load = threading.Event()
    stream_tail: list[str] = []

    def load() -> None:
        nonlocal acked
        with httpx.Client(base_url=url, timeout=5) as c:
            while not stop_load.is_set():
                try:
                    r = c.post(
                        f"/v1/carts/{uid}/lines",
                        json={"sku": sku, "qty": 1},
                        headers=write_headers(),
                    )
                except httpx.HTTPError:
                    continue  # refused while stopping: not acknowledged
                if r.status_code == 200:
                    acked += 1

    def watch() -> None:
        with (
            httpx.Client(timeout=httpx.Timeout(5.0, read=None)) as c,
            c.stream("GET", f"{url}/v1/streams/users/{uid}") as r,
            contextlib.suppress(httpx.HTTPError),
        ):
            for line in r.iter_lines():
                stream_tail[:] = [*stream_tail[-3:], line]

    try:
        httpx.put(f"{url}/v1/skus/{sku}/stock", json={"on_hand": 10**6}, headers=write_headers())
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        loader = threading.Thread(target=load, daemon=True)
        loader.start()
        time.sleep(2.0)
        assert acked > 0
        started = time.monotonic()
        grid.proc.send_signal(signal.SIGTERM)
        out, _ = grid.proc.communicate(timeout=STOP_TIMEOUT_S + 15)
        took = time.monotonic() - started
        stop_load.set()
        loader.join(10)
        watcher.join(10)
        assert grid.proc.returncode == 0, out
        assert took < STOP_TIMEOUT_S + 10, took  # the bound, and Ray's own exit
        assert "SIGTERM: stopping cleanly" in out and "stopped cleanly" in out, out
        assert "changes stored" in out and "streams ended" in out, out
        assert any(line.startswith("retry: 500") for line in stream_tail), stream_tail
        # nothing left behind: no shard process, no peer socket
        assert not [
            pid
            for pid in pids
            if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        ]
        assert not list(Path(tempfile.gettempdir()).glob(f"omnigrid-{grid.port}-*.sock"))
        # every acknowledged add is there after a restart
        grid.start()
        pids = shard_pids(grid)
        cart = httpx.get(f"{url}/v1/carts/{uid}").json()
        assert cart["lines"][0]["qty"] >= acked  # a write cut mid-answer may be in too
        assert cart["lines"][0]["qty"] <= acked + 1
    finally:
        stop_load.set()
        kill_all(grid, pids)


def test_a_second_signal_forces_the_stop() -> None:
    grid = serve()
    pids = shard_pids(grid)
    try:
        grid.proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        grid.proc.send_signal(signal.SIGINT)
        assert grid.proc.wait(timeout=15) == 1  # Ray's processes may hold stdout a while longer
    finally:
        kill_all(grid, pids)
    assert grid.proc.stdout is not None
    assert "forced to stop" in grid.proc.stdout.read()


def test_a_dead_ray_cluster_on_record_does_not_capture_a_plain_serve() -> None:
    """``ray start`` leaves /tmp/ray/ray_current_cluster; a head that died uncleanly
    leaves it naming a dead address. ``omnigrid serve`` starts a Ray of its own."""
    record = Path("/tmp/ray/ray_current_cluster")
    before = record.read_text() if record.exists() else None
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(f"127.0.0.1:{free_port()}")  # nobody listens there
    try:
        grid = serve()  # ready: it did not follow the record to the dead head
        kill_all(grid, shard_pids(grid))
    finally:
        if before is None:
            record.unlink(missing_ok=True)
        else:
            record.write_text(before)
