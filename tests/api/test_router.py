"""Routing between two shards in one process, over a real peer stream (Unix socket)."""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from omnigrid.actors import cart
from omnigrid.actors.errors import Overloaded, Unavailable
from omnigrid.actors.product import PRICE
from omnigrid.actors.protocol import Command
from omnigrid.actors.shard import Shard
from omnigrid.actors.slots import SLOT_COUNT, SlotMap, slot_of
from omnigrid.actors.stock import AVAILABLE
from omnigrid.api.http.app import GridApp
from omnigrid.api.http.metrics import GridMetrics
from omnigrid.api.http.openapi import docs_app
from omnigrid.api.http.routes import all_routes
from omnigrid.api.runtime.peers import PeerAddress, PeerLink, serve_connection
from omnigrid.api.runtime.router import Router
from omnigrid.api.runtime.settings import DEFAULT_CHANNELS


def key_on(shard_map: SlotMap, shard: int, kind: str = "stock") -> str:
    i = 0
    while shard_map.owner(f"{kind}:k{i}") != shard:
        i += 1
    return f"{kind}:k{i}"


@asynccontextmanager
async def peer_server(shard: Shard) -> AsyncIterator[PeerAddress]:
    path = os.path.join(tempfile.mkdtemp(), "peer.sock")

    def serve(batch: list[Any]) -> list[Any]:
        return [r.to_wire() for r in shard.apply_batch([Command.from_wire(w) for w in batch])]

    server = await asyncio.start_unix_server(lambda r, w: serve_connection(r, w, serve), path)
    try:
        yield PeerAddress("node", path, "127.0.0.1", 0)
    finally:
        server.close()


def link_to(address: PeerAddress, peer: int = 0, **kw: Any) -> PeerLink:
    async def resolve() -> PeerAddress:
        return address

    return PeerLink(peer, resolve, "node", **kw)


def run(coro_fn: Callable[[], Any]) -> Any:
    return asyncio.run(coro_fn())


def test_forwarded_commands_travel_in_batches() -> None:
    async def scenario() -> None:
        smap = SlotMap.even(2)
        owner, local = Shard(0, smap), Shard(1, smap)
        sizes: list[int] = []
        async with peer_server(owner) as address:
            link = link_to(address, on_batch=lambda _peer, n: sizes.append(n))
            router = Router(local, {0: link})
            key = key_on(smap, 0)
            await router.call(Command("stock.set", key, {"on_hand": 1000}, "pos"))
            results = await asyncio.gather(
                *(
                    router.call(Command("stock.reserve", key, {"qty": 1, "ttl_s": 60}, "app"))
                    for _ in range(300)
                )
            )
            await link.close()
        assert all(r.status == 201 for r in results)
        assert owner.entities[key].reserved == 300  # type: ignore[attr-defined]
        assert len(sizes) < 300 / 10, f"{len(sizes)} sends for 301 commands: not batched"

    run(scenario)


def test_moved_answer_makes_the_router_adopt_the_newer_map() -> None:
    async def scenario() -> None:
        v1 = SlotMap.even(2)
        key = key_on(v1, 1)
        v2 = v1.moved({slot_of(key): 0})
        owner, local = Shard(0, v2), Shard(1, v2)  # both shards moved on; the router has not
        async with peer_server(owner) as address:
            router = Router(local, {0: link_to(address)})
            router.slot_map = v1
            result = await router.call(Command("stock.set", key, {"on_hand": 3}, "pos"))
            assert result.status == 200
            assert router.slot_map.version == 2
            assert key in owner.entities and key not in local.entities
            # queries regroup by the new map too
            asks = {key: "stock.available", "stock:nope": "stock.available"}
            assert await router.query(asks) == {
                key: 3,
                "stock:nope": None,
            }
            await router.links[0].close()

    run(scenario)


def test_a_full_queue_refuses_with_overloaded() -> None:
    async def scenario() -> None:
        async with peer_server(Shard(0, SlotMap.even(1))) as address:
            link = link_to(address, max_pending=2)
            futures = [link.call(Command("cart.get", "cart:a")) for _ in range(2)]
            with pytest.raises(Overloaded):
                link.call(Command("cart.get", "cart:a"))
            await asyncio.gather(*futures)
            await link.close()

    run(scenario)


def test_an_unreachable_peer_is_unavailable() -> None:
    async def scenario() -> None:
        dead = PeerAddress("node", "/nonexistent/omnigrid.sock", "127.0.0.1", 1)
        with pytest.raises(Unavailable):
            await link_to(dead).call(Command("cart.get", "cart:a"))

    run(scenario)


class _Ops:
    async def ready(self) -> tuple[bool, dict[str, Any]]:
        return True, {}

    async def exposition(self) -> str:
        return ""

    async def cluster(self) -> dict[str, Any]:
        return {}

    async def audit_all(self) -> dict[str, Any]:
        return {}


def test_http_answers_503_with_retry_after_when_the_owner_is_down() -> None:
    async def scenario() -> None:
        smap = SlotMap.even(2)
        dead = PeerAddress("node", "/nonexistent/omnigrid.sock", "127.0.0.1", 1)
        router = Router(Shard(1, smap), {0: link_to(dead)})
        app = GridApp(
            router, all_routes(), _Ops(), GridMetrics(1), frozenset(DEFAULT_CHANNELS), docs_app()
        )
        sku = key_on(smap, 0).removeprefix("stock:")
        transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="http://grid") as c:
            r = await c.put(
                f"/v1/skus/{sku}/stock", json={"on_hand": 1}, headers={"X-Channel": "pos"}
            )
            assert r.status_code == 503 and r.headers["retry-after"] == "1"
            assert r.json()["code"] == "unavailable"

    run(scenario)


def test_http_answers_429_when_too_much_is_in_progress() -> None:
    async def scenario() -> None:
        smap = SlotMap.even(1)
        router = Router(Shard(0, smap), {})
        app = GridApp(
            router,
            all_routes(),
            _Ops(),
            GridMetrics(0),
            frozenset(DEFAULT_CHANNELS),
            docs_app(),
            max_inflight=1,
        )
        app.inflight = 1  # one request is already in progress
        transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="http://grid") as c:
            r = await c.get("/v1/carts/u1")
            assert r.status_code == 429 and r.headers["retry-after"] == "1"
            assert r.json()["code"] == "overloaded"

    run(scenario)


def test_every_slot_has_an_owner() -> None:
    assert len(SlotMap.even(3).owners) == SLOT_COUNT


class CountingGrid:
    """The router, with every owner round trip a flow makes written down in order."""

    def __init__(self, router: Router) -> None:
        self.router = router
        self.trips: list[tuple[str, Any]] = []

    async def call(self, cmd: Command) -> Any:
        self.trips.append(("call", cmd.op))
        return await self.router.call(cmd)

    async def query(self, asks: Any) -> dict[str, Any]:
        self.trips.append(("query", dict(asks)))
        return await self.router.query(asks)

    def is_local(self, key: str) -> bool:
        return self.router.is_local(key)


def test_a_cart_add_costs_two_owner_round_trips() -> None:
    async def scenario() -> None:
        smap = SlotMap.even(2)
        owner, local = Shard(0, smap), Shard(1, smap)  # stock and carts on both shards
        async with peer_server(owner) as address:
            grid = CountingGrid(Router(local, {0: link_to(address)}))
            skus = ["a", "b", "c"]
            for sku in skus:
                await grid.router.call(Command("stock.set", f"stock:{sku}", {"on_hand": 5}, "pos"))
            for sku in ("a", "b"):
                add = Command("cart.add", "cart:u", {"sku": sku, "qty": 1}, "app")
                await cart.checked_line(grid, add)
            grid.trips.clear()
            add = Command("cart.add", "cart:u", {"sku": "c", "qty": 2}, "app")
            status, view = await cart.checked_line(grid, add)
            assert grid.trips == [
                # 1: the SKU's availability and price and the cart's lines, at once
                ("query", {"stock:c": AVAILABLE, "product:c": PRICE, "cart:u": cart.LINE_SKUS}),
                # 2: the add, and at the same time the other lines' availability and price
                ("call", "cart.add"),
                (
                    "query",
                    {
                        "stock:a": AVAILABLE,
                        "stock:b": AVAILABLE,
                        "product:a": PRICE,
                        "product:b": PRICE,
                    },
                ),
            ]
            assert status == 200
            assert [(ln["sku"], ln["qty"], ln["available"]) for ln in view["lines"]] == [
                ("a", 1, 5),
                ("b", 1, 5),
                ("c", 2, 5),
            ]
            await grid.router.links[0].close()

    run(scenario)
