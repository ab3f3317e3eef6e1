"""Seed a server over HTTP: SKU stock, the hot SKU, and carts for the read scenarios;
products (title, price) for the checkout flows, and a checkout-and-pay probe that
checks the answers against the contract."""

from __future__ import annotations

import asyncio
import json
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


def sku_price(i: int) -> int:
    """The seeded price of ``sku_name(i)``, minor units: 9.90 to 499.90 in steps of 10."""
    return 990 + (i * 7919 % 50) * 1000


HOT_PRICE = 9_900
LOW_SKU = "probe-low"  # stocked with 1, for the probe's insufficient_stock checkout


def product_calls(skus: int) -> list[Call]:
    calls = [
        Call("PUT", f"/v1/products/{sku_name(i)}", {"title": f"Item {i}", "price": sku_price(i)})
        for i in range(skus)
    ]
    calls.append(Call("PUT", f"/v1/products/{HOT_SKU}", {"title": "Flash", "price": HOT_PRICE}))
    calls.append(Call("PUT", f"/v1/products/{LOW_SKU}", {"title": "Last one", "price": 100}))
    return calls


def seed_products(base: str, skus: int, concurrency: int = 32) -> dict[str, Any]:
    """A product (title, price) for every seeded SKU, the hot SKU and the probe's SKU
    with one unit in stock, for the checkout flows."""
    stock = asyncio.run(run_calls(base, [Call("PUT", f"/v1/skus/{LOW_SKU}/stock", {"on_hand": 1})]))
    stats = asyncio.run(run_calls(base, product_calls(skus), concurrency))
    if stats.failed or stock.failed:
        errors = stock.first_errors + stats.first_errors
        raise RuntimeError(f"seeding products failed {stats.failed + stock.failed}x: {errors}")
    return {"calls": stats.ok, "seconds": stats.seconds}


ORDER_FIELDS = (
    "order_id", "uid", "status", "lines", "subtotal", "discount", "total", "pay_by", "version",
)  # fmt: skip


class _FlowProbe:
    """One checkout-and-pay probe: every answer in ``answers``, every disagreement with
    the contract in ``problems``."""

    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session, self.base = session, base
        self.answers: dict[str, Any] = {}
        self.problems: list[str] = []

    async def call(
        self,
        name: str,
        method: str,
        path: str,
        body: Any = None,
        channel: str | None = "app",
        idempotency_key: str | None = None,
    ) -> tuple[int, Any]:
        headers = {"Content-Type": "application/json"}
        if channel:
            headers["X-Channel"] = channel
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        url = self.base + path
        async with self.session.request(method, url, json=body, headers=headers) as r:
            text = await r.text()
        try:
            doc: Any = json.loads(text)
        except ValueError:
            doc = text[:300]
        if name:
            self.answers[name] = {"status": r.status, "body": doc}
        return r.status, doc

    async def stock(self, sku: str) -> dict[str, Any]:
        _, doc = await self.call("", "GET", f"/v1/skus/{sku}/stock")
        return doc if isinstance(doc, dict) else {}

    def expect(self, cond: bool, what: str) -> None:
        if not cond:
            self.problems.append(what)

    def refused(self, name: str, status: int, code: str) -> None:
        ans = self.answers[name]
        got = ans["body"].get("code") if isinstance(ans["body"], dict) else None
        self.expect(
            ans["status"] == status and got == code,
            f"{name}: {ans['status']} {got}, not {status} {code}",
        )


async def _probe_flow(base: str, uid: str, idempotency: bool) -> dict[str, Any]:
    """Check out three seeded SKUs (qty 1, 2, 3), pay, pay again (same payment_ref,
    then another), read the order, with the stock before and after; then the refusals:
    a line short of stock (all or none), an unknown product, no X-Channel, paying an
    unknown order; with ``idempotency``, a pay sent twice with one Idempotency-Key."""
    picks = [(0, 1), (1, 2), (2, 3)]
    lines = [{"sku": sku_name(i), "qty": q} for i, q in picks]
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        pr = _FlowProbe(session, base)
        before = [await pr.stock(sku_name(i)) for i, _ in picks]
        body = {"uid": uid, "lines": lines, "fulfilment": "delivery"}
        status, order = await pr.call("checkout", "POST", "/v1/checkouts", body)
        if status != 201 or not isinstance(order, dict):
            pr.problems.append(f"checkout answered {status}, not 201")
            return {"answers": pr.answers, "problems": pr.problems}
        missing = [f for f in ORDER_FIELDS if f not in order]
        pr.expect(not missing, f"checkout: order view lacks {missing}")
        pr.expect(order.get("status") == "pending", f"checkout: status {order.get('status')!r}")
        pr.expect(order.get("uid") == uid, f"checkout: uid {order.get('uid')!r}, sent {uid!r}")
        got = {ln.get("sku"): ln for ln in order.get("lines") or [] if isinstance(ln, dict)}
        subtotal = 0
        for i, qty in picks:
            line, price = got.get(sku_name(i), {}), sku_price(i)
            subtotal += price * qty
            want = {"qty": qty, "unit_price": price, "total": price * qty}
            seen = {k: line.get(k) for k in want}
            pr.expect(seen == want, f"checkout: line {sku_name(i)} {seen}, expected {want}")
        discount = order.get("discount") or 0
        pr.expect(order.get("subtotal") == subtotal, f"checkout: subtotal {order.get('subtotal')}")
        pr.expect(
            order.get("total") == subtotal - discount,
            f"checkout: total {order.get('total')}, subtotal {subtotal}, discount {discount}",
        )
        held = [await pr.stock(sku_name(i)) for i, _ in picks]
        for (i, qty), a, b in zip(picks, before, held, strict=True):
            pr.expect(
                b.get("reserved") == a.get("reserved", 0) + qty,
                f"checkout of {qty} {sku_name(i)}: reserved {a.get('reserved')} -> "
                f"{b.get('reserved')}",
            )
        pay_path = f"/v1/orders/{order.get('order_id')}/pay"
        status, paid = await pr.call("pay", "POST", pay_path, {"payment_ref": f"probe-{uid}"})
        pr.expect(status == 200, f"pay answered {status}, not 200")
        if isinstance(paid, dict):
            pr.expect(paid.get("status") == "paid", f"pay: status {paid.get('status')!r}")
        after = [await pr.stock(sku_name(i)) for i, _ in picks]
        for (i, qty), a, b in zip(picks, before, after, strict=True):
            pr.expect(
                (b.get("on_hand"), b.get("reserved"))
                == (a.get("on_hand", 0) - qty, a.get("reserved")),
                f"pay of {qty} {sku_name(i)}: on_hand {a.get('on_hand')} -> {b.get('on_hand')},"
                f" reserved {a.get('reserved')} -> {b.get('reserved')}",
            )
        status, again = await pr.call(
            "pay_again", "POST", pay_path, {"payment_ref": f"probe-{uid}"}
        )
        if status == 200 and isinstance(again, dict) and isinstance(paid, dict):
            # a replay of the same payment may answer the paid order, changing nothing
            pr.expect(
                again.get("version") == paid.get("version"),
                f"pay_again (same payment_ref) answered 200 with version "
                f"{paid.get('version')} -> {again.get('version')}: a replay that changes "
                "nothing should not bump the version",
            )
        else:
            pr.refused("pay_again", 409, "invalid_transition")
        await pr.call("pay_other_ref", "POST", pay_path, {"payment_ref": f"other-{uid}"})
        pr.refused("pay_other_ref", 409, "invalid_transition")
        again_stock = [await pr.stock(sku_name(i)) for i, _ in picks]
        pr.expect(
            [x.get("on_hand") for x in again_stock] == [x.get("on_hand") for x in after],
            f"paying a paid order again changed on_hand: {[x.get('on_hand') for x in after]}"
            f" -> {[x.get('on_hand') for x in again_stock]}",
        )
        status, again = await pr.call("get_order", "GET", f"/v1/orders/{order.get('order_id')}")
        state = again.get("status") if isinstance(again, dict) else None
        pr.expect(status == 200 and state == "paid", f"GET order: {status}, status {state!r}")
        other = await pr.stock(sku_name(3))
        short = {"uid": uid, "fulfilment": "delivery",
                 "lines": [{"sku": sku_name(3), "qty": 1}, {"sku": LOW_SKU, "qty": 2}]}  # fmt: skip
        _, refused = await pr.call("checkout_short", "POST", "/v1/checkouts", short)
        pr.refused("checkout_short", 409, "insufficient_stock")
        want_lines = [{"sku": LOW_SKU, "requested": 2, "available": 1}]
        got_lines = refused.get("lines") if isinstance(refused, dict) else None
        pr.expect(
            got_lines == want_lines, f"insufficient_stock: lines {got_lines}, not {want_lines}"
        )
        other_after = await pr.stock(sku_name(3))
        pr.expect(
            other_after.get("reserved") == other.get("reserved"),
            f"refused checkout: {sku_name(3)} reserved {other.get('reserved')} -> "
            f"{other_after.get('reserved')}",
        )
        unknown = {"uid": uid, "fulfilment": "delivery", "lines": [{"sku": "no-such", "qty": 1}]}
        await pr.call("checkout_unknown", "POST", "/v1/checkouts", unknown)
        pr.refused("checkout_unknown", 404, "unknown_product")
        await pr.call("checkout_no_channel", "POST", "/v1/checkouts", body, channel=None)
        pr.refused("checkout_no_channel", 400, "unknown_channel")
        await pr.call("pay_unknown", "POST", "/v1/orders/no-such-order/pay", {"payment_ref": "x"})
        pr.refused("pay_unknown", 404, "not_found")
        await pr.call("get_unknown", "GET", "/v1/orders/no-such-order")
        pr.refused("get_unknown", 404, "not_found")
        if idempotency:
            await _probe_idempotent_pay(pr, uid)
    return {"answers": pr.answers, "problems": pr.problems}


async def _probe_idempotent_pay(pr: _FlowProbe, uid: str) -> None:
    sku = sku_name(4)
    before = await pr.stock(sku)
    body = {"uid": uid, "lines": [{"sku": sku, "qty": 1}], "fulfilment": "delivery"}
    status, order = await pr.call("checkout_idem", "POST", "/v1/checkouts", body)
    if status != 201 or not isinstance(order, dict):
        pr.problems.append(f"checkout_idem answered {status}, not 201")
        return
    path = f"/v1/orders/{order.get('order_id')}/pay"
    key = f"probe-idem-{order.get('order_id')}"
    pay = {"payment_ref": f"idem-{uid}"}
    first = await pr.call("pay_idem_1", "POST", path, pay, idempotency_key=key)
    second = await pr.call("pay_idem_2", "POST", path, pay, idempotency_key=key)
    pr.expect(
        first[0] == 200 and second == first,
        f"pay twice with one Idempotency-Key: {first[0]} then {second[0]}, "
        f"bodies {'equal' if first[1] == second[1] else 'differ'}",
    )
    after = await pr.stock(sku)
    pr.expect(
        after.get("on_hand") == before.get("on_hand", 0) - 1,
        f"pay twice with one Idempotency-Key: {sku} on_hand {before.get('on_hand')} -> "
        f"{after.get('on_hand')} (1 bought)",
    )


def probe_flow(base: str, uid: str = "probe-flow", idempotency: bool = True) -> dict[str, Any]:
    """See ``_probe_flow``; connection errors are a problem too."""
    try:
        return asyncio.run(_probe_flow(base, uid, idempotency))
    except (aiohttp.ClientError, TimeoutError) as exc:
        return {"answers": {}, "problems": [f"{type(exc).__name__}: {exc}"]}


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
