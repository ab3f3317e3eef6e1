"""The nginx front (api/runtime/front.py): real nginx, its generated configuration and
njs routing, in front of small HTTP servers on the shards' Unix sockets that say
which shard they are. No Ray: the grid behind the front is tests/api/test_front_grid.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from omnigrid.actors.kinds import kinds
from omnigrid.actors.kinds import load as load_kinds
from omnigrid.actors.slots import SlotMap
from omnigrid.api.runtime.front import NginxFront, front_socket, front_socket_path, key_routes
from omnigrid.api.runtime.settings import Settings
from tests.conftest import free_port


class FakeShards:
    """HTTP/1.1 servers on the shards' front sockets answering {"shard", "path"}."""

    def __init__(self, port: int, count: int) -> None:
        self.port = port
        self.loop = asyncio.new_event_loop()
        self.servers: dict[int, asyncio.AbstractServer] = {}
        self.open: dict[int, set[asyncio.StreamWriter]] = {}
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        for shard in range(count):
            self.start(shard)

    def start(self, shard: int) -> None:
        held = self.open.setdefault(shard, set())

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            held.add(writer)
            with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
                while True:
                    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
                    lines = head.split("\r\n")
                    length = next(
                        (
                            int(ln.split(":")[1])
                            for ln in lines
                            if ln.lower().startswith("content-length")
                        ),
                        0,
                    )
                    await reader.readexactly(length)
                    path = lines[0].split(" ")[1]
                    if "slow" in path:
                        await asyncio.sleep(1.0)
                    body = json.dumps({"shard": shard, "path": path}).encode()
                    writer.write(
                        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                        + f"content-length: {len(body)}\r\n\r\n".encode()
                        + body
                    )
                    await writer.drain()
            held.discard(writer)
            writer.close()

        async def listen() -> asyncio.AbstractServer:
            sock = front_socket(front_socket_path(self.port, shard))
            return await asyncio.start_unix_server(serve, sock=sock)

        self.servers[shard] = asyncio.run_coroutine_threadsafe(listen(), self.loop).result(5)

    def stop(self, shard: int) -> None:
        server = self.servers.pop(shard)

        async def close() -> None:
            server.close()
            for writer in list(self.open.get(shard, ())):  # the shard is gone: so are
                writer.transport.abort()  # the connections nginx kept to it

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(5)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(front_socket_path(self.port, shard))

    def close(self) -> None:
        for shard in list(self.servers):
            self.stop(shard)
        self.loop.call_soon_threadsafe(self.loop.stop)


Fronted = tuple[NginxFront, FakeShards, str, SlotMap]


@pytest.fixture()
def front(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Fronted]:
    load_kinds(())
    port = free_port()
    bound = getattr(request, "param", 4096)
    settings = Settings(
        port=port, shards=3, data_dir=str(tmp_path), front="nginx", max_client_connections=bound
    )
    # not the even ranges: some slots of each shard given to the next one
    slot_map = SlotMap.even(3).moved({s: (s // 5462 + 1) % 3 for s in range(0, 16384, 7)})
    shards = FakeShards(port, 3)
    nginx = NginxFront(settings, kinds())
    nginx.start(slot_map)
    try:
        yield nginx, shards, f"http://127.0.0.1:{port}", slot_map
    finally:
        nginx.stop()
        shards.close()


KEYED = [
    ("/v1/carts/{}", "cart"),
    ("/v1/carts/{}/lines", "cart"),
    ("/v1/carts/{}/lines/sku-1", "cart"),
    ("/v1/skus/{}/stock", "stock"),
    ("/v1/skus/{}/reservations/r-1/commit", "stock"),
    ("/v1/products/{}/reviews", "product"),
    ("/v1/members/{}/points/earn", "member"),
    ("/v1/users/{}/orders", "user_orders"),
    ("/v1/users/{}/coupons", "wallet"),
    ("/v1/users/{}/identities", "identity"),
    ("/v1/orders/{}/pay", "order"),
    ("/v1/coupons/{}", "coupon"),
]


def test_each_request_reaches_the_shard_owning_its_key(front: Fronted) -> None:
    _, _, url, slot_map = front
    idents = [f"u-{i}" for i in range(40)] + ["用户-7", "ü-1", "a.b_c~d"]
    with httpx.Client(base_url=url, timeout=5) as c:
        for template, kind in KEYED:
            for ident in idents:
                path = template.format(urllib.parse.quote(ident, safe=""))
                r = (
                    c.post(path, json={})
                    if path.endswith(("/pay", "/earn", "/lines"))
                    else c.get(path)
                )
                assert r.status_code == 200, (path, r.text)
                assert r.json() == {"shard": slot_map.owner(f"{kind}:{ident}"), "path": path}


def test_a_path_naming_no_entity_goes_to_any_shard(front: Fronted) -> None:
    _, _, url, _ = front
    with httpx.Client(base_url=url, timeout=5) as c:
        seen = {c.post("/v1/checkouts", json={}).json()["shard"] for _ in range(30)}
        seen |= {c.get(f"/v1/streams/users/u-{i}").json()["shard"] for i in range(30)}
        assert c.get("/metrics").status_code == 200
    assert len(seen) >= 2  # spread, not all on one shard


def test_a_shard_that_refuses_connections_is_stood_in_for(front: Fronted) -> None:
    """A restarting shard's socket refuses: another shard takes its requests (and
    forwards them to the owner once it is back); nothing is sent twice."""
    _, shards, url, slot_map = front
    owned_by_1 = next(f"u-{i}" for i in range(100) if slot_map.owner(f"cart:u-{i}") == 1)
    shards.stop(1)
    with httpx.Client(base_url=url, timeout=5) as c:
        for _ in range(5):
            r = c.get(f"/v1/carts/{owned_by_1}")
            assert r.status_code == 200
            assert r.json()["shard"] in (0, 2)
        shards.start(1)
        deadline = time.monotonic() + 5
        while c.get(f"/v1/carts/{owned_by_1}").json()["shard"] != 1:
            assert time.monotonic() < deadline, "the owner was not used again once back"
            time.sleep(0.2)


def test_no_shard_answering_is_a_503_problem(front: Fronted) -> None:
    _, shards, url, _ = front
    for shard in (0, 1, 2):
        shards.stop(shard)
    r = httpx.get(url + "/v1/carts/u-1", timeout=5)
    assert r.status_code == 503
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["code"] == "unavailable"


def test_a_new_slot_map_is_followed(front: Fronted) -> None:
    nginx, _, url, slot_map = front
    uid = "u-follow"
    old = slot_map.owner(f"cart:{uid}")
    new = (old + 1) % 3
    moved = slot_map.moved({slot: new for slot in range(16384) if slot_map.owners[slot] == old})
    with httpx.Client(base_url=url, timeout=5) as c:
        assert c.get(f"/v1/carts/{uid}").json()["shard"] == old
        assert not nginx.follow(slot_map)  # the same version: nothing to do
        assert nginx.follow(moved)
        deadline = time.monotonic() + 10
        while c.get(f"/v1/carts/{uid}").json()["shard"] != new:
            assert time.monotonic() < deadline, "nginx did not take the new map"
            time.sleep(0.1)


@pytest.mark.parametrize("front", [2], indirect=True)
def test_an_address_over_its_bound_is_told_to_slow_down(front: Fronted) -> None:
    """OMNIGRID_MAX_CLIENT_CONNECTIONS, as nginx counts it: connections with a request
    in progress (an idle kept connection is bounded by the keep-alive timeout)."""
    _, _, url, _ = front
    transport = httpx.HTTPTransport(local_address="127.0.0.2")  # loopback, not trusted
    with httpx.Client(base_url=url, timeout=5, transport=transport) as c:

        def get(i: int) -> httpx.Response:
            return c.get(f"/v1/carts/slow-{i}")

        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(get, range(4)))
    codes = sorted(r.status_code for r in answers)
    assert codes.count(200) == 2 and codes.count(429) == 2, codes
    refused = next(r for r in answers if r.status_code == 429)
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["code"] == "overloaded"
    # the trusted address is not bounded
    with httpx.Client(base_url=url, timeout=5) as c, ThreadPoolExecutor(4) as pool:
        assert {
            r.status_code for r in pool.map(lambda i: c.get(f"/v1/carts/slow-{i}"), range(4))
        } == {200}


def test_every_route_naming_an_entity_is_routed() -> None:
    """A kind's route with its identifier in the path is in the front's table."""
    load_kinds(())
    routed = [r for routes in key_routes(kinds()).values() for r in routes]
    for kind in kinds():
        for route in kind.routes:
            parts = ["", *route.path.strip("/").split("/")]
            if "{" + kind.ident + "}" in parts:
                assert any(
                    r.prefix == kind.name + ":"
                    and r.length == len(parts)
                    and all(parts[i] == lit for i, lit in r.literals)
                    for r in routed
                ), route.path


def test_nginx_missing_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no nginx on it
    with pytest.raises(ValueError, match="apt-get install"):
        NginxFront(Settings(data_dir=str(tmp_path), front="nginx"), ())


@pytest.mark.parametrize(
    ("args", "env", "said"),
    [
        (["--front", "haproxy"], {}, "invalid choice"),
        ([], {"OMNIGRID_FRONT": "haproxy"}, "front must be empty or 'nginx'"),
        (
            ["--front", "nginx", "--front-workers", "0"],
            {},
            "front_workers must be between 1 and 64",
        ),
    ],
)
def test_a_bad_front_setting_is_refused_before_anything_starts(
    args: list[str], env: dict[str, str], said: str
) -> None:
    bad = subprocess.run(
        [sys.executable, "-m", "omnigrid.api.runtime.cli", "serve", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=60,
    )
    assert bad.returncode == 2 and said in bad.stderr, bad.stderr


def test_an_nginx_left_by_a_killed_grid_is_ended_at_the_next_start(front: Fronted) -> None:
    nginx, _, url, slot_map = front
    assert nginx.proc is not None
    earlier = nginx.proc.pid
    again = NginxFront(nginx.settings, nginx.kinds)  # the next omnigrid serve, same data
    again.start(slot_map)
    try:
        nginx.proc.wait(5)  # the earlier master is gone, its workers with it
        assert httpx.get(url + "/v1/carts/u-1", timeout=5).status_code == 200
        assert again.proc is not None and again.proc.pid != earlier
    finally:
        again.stop()


def test_the_front_serves_https_with_the_grids_certificate(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    load_kinds(())
    port = free_port()
    settings = Settings(
        port=port, shards=1, data_dir=str(tmp_path), front="nginx",
        tls_certfile=str(cert), tls_keyfile=str(key),
    )  # fmt: skip
    shards = FakeShards(port, 1)
    nginx = NginxFront(settings, kinds())
    nginx.start(SlotMap.even(1))
    try:
        r = httpx.get(
            f"https://127.0.0.1:{port}/v1/carts/u-1",
            verify=ssl.create_default_context(cafile=str(cert)),
            timeout=5,
        )
        assert r.status_code == 200 and r.json()["shard"] == 0
    finally:
        nginx.stop()
        shards.close()
