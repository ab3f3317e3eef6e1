"""The load harness's lean HTTP client, against the real grid and misbehaving servers.

Importing locust patches the process for gevent, so the client runs in a
child Python; it prints what it saw as JSON and the test judges it.
"""

from __future__ import annotations

import http.server
import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.api.test_contract import stock
from tests.conftest import Grid

ROOT = Path(__file__).resolve().parents[2]

# Runs in the child: each step prints one JSON line.
CHILD = """
import json, sys, time
from loadtest.leanhttp import Connection, ConnectionClosed

def request(conn, method, path, body=b""):
    try:
        reply = conn.exchange(conn.request_bytes(method, path, "app", body))
    except (ConnectionClosed, OSError) as e:
        return {"error": type(e).__name__, "port": None}
    return {"status": reply.status, "body": reply.body.decode(), "port": conn.sock and
            conn.sock.getsockname()[1]}

conn = Connection("127.0.0.1", int(sys.argv[1]))
held = []
for step in json.loads(sys.argv[2]):
    if step[0] == "sleep":
        time.sleep(step[1])
    elif step[0] == "fds":  # a locust worker holds thousands of sockets
        while len(held) < step[1]:
            held.append(open("/dev/null"))
    else:
        body = step[2].encode() if len(step) > 2 else b""
        print(json.dumps(request(conn, step[0], step[1], body)))
"""


def _client(port: int, steps: list[list[Any]]) -> list[dict[str, Any]]:
    run = subprocess.run(
        [sys.executable, "-c", CHILD, str(port), json.dumps(steps)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    return [json.loads(line) for line in run.stdout.splitlines()]


def test_requests_share_one_kept_connection_to_the_grid(grid: Grid) -> None:
    import httpx

    with httpx.Client(base_url=grid.url, timeout=10) as client:
        sku = stock(client, 7)
    port = int(grid.url.rsplit(":", 1)[1])
    seen = _client(
        port,
        [
            ["GET", f"/v1/skus/{sku}/stock"],
            ["POST", f"/v1/skus/{sku}/reservations", '{"qty": 2, "ttl_s": 60}'],
            ["POST", f"/v1/skus/{sku}/reservations", '{"qty": "two"}'],
            ["GET", "/v1/skus/no-such-sku-anywhere/stock"],
            ["GET", f"/v1/skus/{sku}/stock"],
        ],
    )
    assert [s["status"] for s in seen] == [200, 201, 422, 404, 200]
    assert json.loads(seen[0]["body"])["on_hand"] == 7
    assert json.loads(seen[4]["body"])["reserved"] == 2
    assert len({s["port"] for s in seen}) == 1, "one connection for every request"


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    requests_seen = 0


class _Handler(http.server.BaseHTTPRequestHandler):
    """Keep-alive HTTP/1.1 that closes idle connections after 0.3 s; /cut dies mid-answer."""

    protocol_version = "HTTP/1.1"
    timeout = 0.3

    def do_GET(self) -> None:
        assert isinstance(self.server, _Server)
        self.server.requests_seen += 1
        if self.path == "/cut":
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            self.wfile.write(b"only part")
            self.close_connection = True
            return
        body = b'{"ok": true}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture()
def server() -> Iterator[_Server]:
    srv = _Server(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


def test_a_connection_the_server_closed_while_idle_is_opened_again(server: _Server) -> None:
    port = server.server_address[1]
    # above descriptor 1,023, where select() would refuse to look
    steps: list[list[Any]] = [
        ["fds", 1100],
        ["GET", "/a"],
        ["sleep", 1.0],
        ["GET", "/b"],
        ["GET", "/c"],
    ]
    seen = _client(port, steps)
    assert [s.get("status") for s in seen] == [200, 200, 200], seen
    assert seen[0]["port"] != seen[1]["port"] == seen[2]["port"]


def test_an_answer_cut_short_is_an_error_and_never_resent(server: _Server) -> None:
    port = server.server_address[1]
    seen = _client(port, [["GET", "/cut"], ["GET", "/after"]])
    assert seen[0] == {"error": "ConnectionClosed", "port": None}
    assert seen[1]["status"] == 200
    assert server.requests_seen == 2, "the cut request was not sent again"


def test_nothing_listening_is_an_error(server: _Server) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening
    seen = _client(port, [["GET", "/"]])
    assert seen == [{"error": "ConnectionRefusedError", "port": None}]
