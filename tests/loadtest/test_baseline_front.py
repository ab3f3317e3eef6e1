"""The Redis baseline behind the grid's nginx front (loadtest/baseline_front.py): real
nginx, real uvicorn processes, a real redis-server of its own, all ended on SIGTERM;
and the floor (loadtest/floor.py, an app that does nothing) in its place."""

from __future__ import annotations

import signal
from collections.abc import Iterable
from pathlib import Path

import httpx

from loadtest.procs import Server, baseline_front_server, descendants, free_port
from omnigrid.api.runtime.front import front_socket_path


def started(tmp_path: Path, floor: bool = False) -> tuple[Server, int]:
    port = free_port()
    server = baseline_front_server(tmp_path, tmp_path / "serve.log", floor=floor, port=port)
    server.start(ready_timeout_s=60)
    assert server.proc is not None
    return server, port


def stop_and_check_children(server: Server, children: Iterable[int]) -> None:
    assert server.proc is not None
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(30) == 0
    alive = [pid for pid in children if Path(f"/proc/{pid}").exists()]
    assert not alive, f"left running: {alive}"


def test_the_baseline_answers_through_nginx_and_stops_with_every_child(tmp_path: Path) -> None:
    server, port = started(tmp_path)
    assert server.proc is not None
    try:
        children = descendants(server.proc.pid)
        names = " ".join(Path(f"/proc/{pid}/comm").read_text() for pid in children)
        assert "nginx" in names and "redis-server" in names, names
        with httpx.Client(base_url=server.url, headers={"X-Channel": "pos"}, timeout=10) as c:
            put = c.put("/v1/skus/bf-1/stock", json={"on_hand": 3})
            assert put.status_code == 200 and put.headers["server"].startswith("nginx")
            added = c.post("/v1/carts/bf-u/lines", json={"sku": "bf-1", "qty": 2})
            assert added.status_code == 200, added.text
            cart = c.get("/v1/carts/bf-u").json()
            assert [(ln["sku"], ln["qty"]) for ln in cart["lines"]] == [("bf-1", 2)]
            # a bad body is the baseline's own 422, passed through unchanged
            bad = c.post("/v1/carts/bf-u/lines", json={"sku": "bf-1", "qty": -1})
            assert bad.status_code == 422
        assert all(Path(front_socket_path(port, w)).exists() for w in range(2))
    finally:
        stop_and_check_children(server, children)


def test_the_floor_answers_every_request_alike_with_no_redis(tmp_path: Path) -> None:
    server, _ = started(tmp_path, floor=True)
    assert server.proc is not None
    children = descendants(server.proc.pid)
    try:
        names = " ".join(Path(f"/proc/{pid}/comm").read_text() for pid in children)
        assert "nginx" in names and "redis-server" not in names, names
        with httpx.Client(base_url=server.url, timeout=10) as c:
            read = c.get("/v1/carts/anyone")
            added = c.post("/v1/carts/anyone/lines", json={"sku": "x", "qty": 1})
        assert read.status_code == added.status_code == 200
        assert read.headers["server"].startswith("nginx")
        assert read.json() == added.json() and read.json()["lines"][0]["qty"] == 1
    finally:
        stop_and_check_children(server, children)
