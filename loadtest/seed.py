"""Seed a server over HTTP: SKU stock, the hot SKU, and carts for the read scenarios."""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from loadtest.tools import CHANNELS, HOT_SKU, known_phone, read_cart_uid, sku_name


@dataclass
class Call:
    method: str
    path: str
    body: dict[str, Any] | None = None


@dataclass
class CallStats:
    ok: int = 0
    failed: int = 0
    retried: int = 0
    seconds: float = 0.0
    first_errors: list[str] = field(default_factory=list)


async def _one(
    session: aiohttp.ClientSession, base: str, call: Call, stats: CallStats, rng: random.Random
) -> None:
    headers = {"X-Channel": rng.choice(CHANNELS), "Content-Type": "application/json"}
    for attempt in range(6):
        try:
            async with session.request(
                call.method, base + call.path, json=call.body, headers=headers
            ) as resp:
                text = await resp.text()
                if 200 <= resp.status < 300:
                    stats.ok += 1
                    return
                retry = resp.status in (429, 503)
                err = f"{call.method} {call.path} -> {resp.status} {text[:200]}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            retry, err = True, f"{call.method} {call.path} -> {type(exc).__name__}: {exc}"
        if not retry or attempt == 5:
            break
        stats.retried += 1
        await asyncio.sleep(0.05 * 2**attempt)
    stats.failed += 1
    if len(stats.first_errors) < 5:
        stats.first_errors.append(err)


async def run_calls(base: str, calls: list[Call], concurrency: int = 32) -> CallStats:
    """Send ``calls`` with bounded concurrency; calls for one key keep their order only if
    the caller puts them in separate batches."""
    stats = CallStats()
    queue: asyncio.Queue[Call] = asyncio.Queue()
    for c in calls:
        queue.put_nowait(c)
    rng = random.Random(7)
    t0 = time.monotonic()
    timeout = aiohttp.ClientTimeout(total=10)
    conn = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(timeout=timeout, connector=conn) as session:

        async def worker() -> None:
            while True:
                try:
                    call = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                await _one(session, base, call, stats, rng)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    stats.seconds = time.monotonic() - t0
    return stats


def stock_calls(skus: int, on_hand: int, hot_on_hand: int) -> list[Call]:
    calls = [
        Call("PUT", f"/v1/skus/{sku_name(i)}/stock", {"on_hand": on_hand}) for i in range(skus)
    ]
    calls.append(Call("PUT", f"/v1/skus/{HOT_SKU}/stock", {"on_hand": hot_on_hand}))
    return calls


def cart_line_calls(carts: int, skus: int, seed: int = 42) -> list[list[Call]]:
    """Batches of cart-line adds: batch k holds the k-th line of every cart (3-5 lines)."""
    rng = random.Random(seed)
    batches: list[list[Call]] = [[] for _ in range(5)]
    for c in range(carts):
        picks = rng.sample(range(skus), rng.randint(3, 5))
        for k, s in enumerate(picks):
            body = {"sku": sku_name(s), "qty": rng.randint(1, 3)}
            batches[k].append(Call("POST", f"/v1/carts/{read_cart_uid(c)}/lines", body))
    return [b for b in batches if b]


async def probe(base: str, call: Call) -> tuple[int, str]:
    """One request of a scenario's shape: (status, first bytes of the body)."""
    headers = {"X-Channel": "app", "Content-Type": "application/json"}
    timeout = aiohttp.ClientTimeout(total=10)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.request(call.method, base + call.path, json=call.body, headers=headers) as r,
        ):
            return r.status, (await r.text())[:300]
    except (aiohttp.ClientError, TimeoutError) as exc:
        return 0, f"{type(exc).__name__}: {exc}"


def seed_server(
    base: str,
    *,
    skus: int,
    carts: int,
    on_hand: int,
    hot_on_hand: int,
    concurrency: int = 32,
    timeout_s: float = 300.0,
) -> dict[str, Any]:
    """Seed stock then read carts; returns a summary (raises if anything failed or the
    whole seeding took over ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s

    def bounded(calls: list[Call]) -> CallStats:
        left = max(1.0, deadline - time.monotonic())
        return asyncio.run(asyncio.wait_for(run_calls(base, calls, concurrency), left))

    out: dict[str, Any] = {}
    st = bounded(stock_calls(skus, on_hand, hot_on_hand))
    out["stock"] = vars(st)
    if st.failed:
        raise RuntimeError(f"seeding stock failed {st.failed}x: {st.first_errors}")
    total = CallStats()
    for batch in cart_line_calls(carts, skus):
        b = bounded(batch)
        total.ok += b.ok
        total.failed += b.failed
        total.retried += b.retried
        total.seconds += b.seconds
        total.first_errors.extend(b.first_errors[: 5 - len(total.first_errors)])
    out["cart_lines"] = vars(total)
    if total.failed:
        raise RuntimeError(f"seeding carts failed {total.failed}x: {total.first_errors}")
    status, body = asyncio.run(probe(base, Call("GET", f"/v1/carts/{read_cart_uid(0)}")))
    out["sample_cart"] = {"status": status, "body": body}
    return out


def seed_identities(base: str, shoppers: int, concurrency: int = 32) -> dict[str, Any]:
    """One phone per shopper, resolved (created) once, for the resolve_known scenario."""
    calls = [
        Call("POST", "/v1/identities/resolve",
             {"identifiers": [{"type": "phone", "value": known_phone(i)}]})
        for i in range(shoppers)
    ]  # fmt: skip
    stats = asyncio.run(run_calls(base, calls, concurrency))
    if stats.failed:
        raise RuntimeError(f"seeding identities failed {stats.failed}x: {stats.first_errors}")
    return {"calls": len(calls), "seconds": stats.seconds}
