"""The Redis baseline behind the grid's nginx front (loadtest/baseline_front.py): real
nginx, real uvicorn processes, a real redis-server of its own, all ended on SIGTERM."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import httpx

from loadtest.procs import Server, descendants, free_port
from omnigrid.api.runtime.front import front_socket_path

ROOT = Path(__file__).resolve().parents[2]


def test_the_baseline_answers_through_nginx_and_stops_with_every_child(tmp_path: Path) -> None:
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "loadtest.baseline_front",
        "--port",
        str(port),
        "--data",
        str(tmp_path),
    ]
    server = Server(
        "baseline-nginx",
        cmd,
        url=f"http://127.0.0.1:{port}",
        ready_path="/readyz",
        cwd=ROOT,
        env=dict(os.environ),
        log_path=tmp_path / "serve.log",
    )
    server.start(ready_timeout_s=60)
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
        server.proc.send_signal(signal.SIGTERM)
        code = server.proc.wait(30)
    assert code == 0
    alive = [pid for pid in children if Path(f"/proc/{pid}").exists()]
    assert not alive, f"left running: {alive}"
