"""Races from every channel at once: no oversell, no lost cart update."""

from __future__ import annotations

import asyncio
import itertools

import httpx

from tests.api.test_contract import stock
from tests.conftest import CHANNELS, Grid, new_id

RACERS = 400
STOCK = 37


async def _race_reservations(url: str, sku: str) -> list[int]:
    limits = httpx.Limits(max_connections=64)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as c:
        channels = itertools.cycle(CHANNELS)

        async def one(channel: str) -> int:
            r = await c.post(
                f"/v1/skus/{sku}/reservations", json={"qty": 1}, headers={"X-Channel": channel}
            )
            return r.status_code

        return await asyncio.gather(*(one(next(channels)) for _ in range(RACERS)))


def test_reservations_race_for_small_stock(grid: Grid, client: httpx.Client) -> None:
    sku = stock(client, STOCK)
    statuses = asyncio.run(_race_reservations(grid.url, sku))
    assert statuses.count(201) == STOCK
    assert statuses.count(409) == RACERS - STOCK
    view = client.get(f"/v1/skus/{sku}/stock").json()
    assert (view["reserved"], view["available"], view["version"]) == (STOCK, 0, 1 + STOCK)


async def _race_cart_adds(url: str, uid: str, skus: list[str], per_channel: int) -> list[int]:
    async with httpx.AsyncClient(
        base_url=url, limits=httpx.Limits(max_connections=64), timeout=30
    ) as c:

        async def one(channel: str, sku: str) -> int:
            r = await c.post(
                f"/v1/carts/{uid}/lines",
                json={"sku": sku, "qty": 1},
                headers={"X-Channel": channel},
            )
            return r.status_code

        return await asyncio.gather(
            *(one(ch, sku) for ch in CHANNELS for sku in skus for _ in range(per_channel))
        )


def test_one_cart_from_every_channel_loses_no_update(grid: Grid, client: httpx.Client) -> None:
    skus = [stock(client, 10_000) for _ in range(5)]
    uid = new_id("u")
    per_channel = 10
    statuses = asyncio.run(_race_cart_adds(grid.url, uid, skus, per_channel))
    assert set(statuses) == {200}
    cart = client.get(f"/v1/carts/{uid}").json()
    assert cart["version"] == len(statuses)
    assert {line["sku"]: line["qty"] for line in cart["lines"]} == {
        sku: per_channel * len(CHANNELS) for sku in skus
    }
