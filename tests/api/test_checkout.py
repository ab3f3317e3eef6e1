"""Checkout on a real grid: whole orders or nothing under races and crashes, an order
bought on one channel and refunded on another, coupons raced, deadlines across
restarts."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import time
from typing import Any

import httpx

from omnigrid.actors.slots import SlotMap
from tests.api.test_live import Stream
from tests.api.test_shard_restart import wait_until_shard_restarted
from tests.conftest import CHANNELS, Grid, new_id, write_headers

OWNER = SlotMap.even(2).owner


def product(c: httpx.Client, sku: str, price: int, on_hand: int, **extra: Any) -> None:
    body = {"title": sku, "price": price, **extra}
    assert c.put(f"/v1/products/{sku}", json=body, headers=write_headers("pos")).status_code == 200
    r = c.put(f"/v1/skus/{sku}/stock", json={"on_hand": on_hand}, headers=write_headers("pos"))
    assert r.status_code == 200


def skus_on_both_shards(n: int) -> list[str]:
    """``n`` new SKUs whose stock lives on both shards of a two-shard grid."""
    while True:
        skus = [new_id("sku") for _ in range(n)]
        if len({OWNER(f"stock:{s}") for s in skus}) == 2:
            return skus


def stock(c: httpx.Client, sku: str) -> dict[str, Any]:
    body: dict[str, Any] = c.get(f"/v1/skus/{sku}/stock").json()
    return body


def checkout(
    c: httpx.Client, uid: str, lines: dict[str, int], channel: str = "app", **extra: Any
) -> httpx.Response:
    body = {"uid": uid, "lines": [{"sku": s, "qty": q} for s, q in lines.items()], **extra}
    return c.post("/v1/checkouts", json=body, headers=write_headers(channel))


def test_fifty_shoppers_racing_for_the_last_units_get_whole_orders_or_none(grid: Grid) -> None:
    a, b, last = skus_on_both_shards(3)
    with httpx.Client(base_url=grid.url, timeout=30) as c:
        product(c, a, 1_000, 50)  # enough for every shopper: only the last SKU runs out
        product(c, b, 2_500, 50)
        product(c, last, 9_900, 10)  # the last ten units: ten whole orders at most

    async def race() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=grid.url, timeout=30) as ac:
            sent = [
                ac.post(
                    "/v1/checkouts",
                    json={
                        "uid": new_id("u"),
                        "lines": [{"sku": s, "qty": 1} for s in (a, b, last)],
                    },
                    headers=write_headers(CHANNELS[i % len(CHANNELS)]),
                )
                for i in range(50)
            ]
            return list(await asyncio.gather(*sent))

    answers = asyncio.run(race())
    placed = [r.json() for r in answers if r.status_code == 201]
    refused = [r.json() for r in answers if r.status_code != 201]
    assert len(placed) == 10, [r.status_code for r in answers]
    assert {p["code"] for p in refused} == {"insufficient_stock"}
    assert all(ln["sku"] == last for p in refused for ln in p["lines"]), refused[0]
    with httpx.Client(base_url=grid.url, timeout=30) as c:
        assert [stock(c, s)["reserved"] for s in (a, b, last)] == [10, 10, 10]
        for order in placed:
            assert [ln["qty"] for ln in order["lines"]] == [1, 1, 1]
            assert order["total"] == 1_000 + 2_500 + 9_900
            r = c.post(
                f"/v1/orders/{order['order_id']}/pay",
                json={"payment_ref": "p"},
                headers=write_headers(order["channel"]),
            )
            assert r.status_code == 200 and r.json()["status"] == "paid"
        assert [(stock(c, s)["on_hand"], stock(c, s)["reserved"]) for s in (a, b, last)] == [
            (40, 0),
            (40, 0),
            (0, 0),
        ]


def test_an_order_placed_in_the_miniprogram_is_tracked_in_the_app_and_refunded_at_the_pos(
    grid: Grid, client: httpx.Client
) -> None:
    uid, code = new_id("u"), new_id("C").upper()
    a, b = skus_on_both_shards(2)
    product(client, a, 10_000, 5, category="tea")
    product(client, b, 5_000, 5, category="cups")
    spend = {"amount": 100_000, "external_id": "history", "reason": "earlier orders"}
    client.post(f"/v1/members/{uid}/spend", json=spend, headers=write_headers("pos"))  # silver
    earn = {"points": 1_000, "reason": "welcome", "external_id": "w"}
    client.post(f"/v1/members/{uid}/points/earn", json=earn, headers=write_headers("app"))
    coupon = {
        "code": code,
        "kind": "amount",
        "value": 1_000,
        "min_spend": 5_000,
        "categories": ["tea"],
        "max_redemptions": 10,
        "restore_on_refund": True,
    }
    assert client.post("/v1/coupons", json=coupon, headers=write_headers()).status_code == 201
    client.post(f"/v1/carts/{uid}/lines", json={"sku": a, "qty": 2}, headers=write_headers())
    client.post(f"/v1/carts/{uid}/lines", json={"sku": b, "qty": 1}, headers=write_headers())
    before = client.get(f"/v1/members/{uid}").json()
    assert before["tier"] == "silver"
    stream = Stream(f"{grid.url}/v1/streams/users/{uid}")
    try:
        body = {"uid": uid, "coupon_codes": [code], "points": 500, "fulfilment": "delivery"}
        r = client.post("/v1/checkouts", json=body, headers=write_headers("miniprogram"))
        assert r.status_code == 201, r.text
        order = r.json()
        # silver: 2% off 25,000 = 500; then 1,000 off the tea; then 500 points
        assert (order["subtotal"], order["discount"], order["points_redeemed"]) == (
            25_000,
            1_500,
            500,
        )
        assert order["total"] == 23_000 and order["status"] == "pending"
        oid = order["order_id"]
        seen = client.get(f"/v1/orders/{oid}", headers={"X-Channel": "app"}).json()
        assert seen["status"] == "pending" and seen["channel"] == "miniprogram"
        listed = client.get(f"/v1/users/{uid}/orders").json()["orders"]
        assert [o["order_id"] for o in listed] == [oid]
        paid = client.post(
            f"/v1/orders/{oid}/pay", json={"payment_ref": "wx-1"}, headers=write_headers("app")
        ).json()
        assert paid["status"] == "paid" and paid["points_earned"] == 230 * 1  # silver: 1/unit
        assert client.get(f"/v1/carts/{uid}").json()["lines"] == []  # bought lines gone
        assert [stock(client, s)["on_hand"] for s in (a, b)] == [3, 4]
        member = client.get(f"/v1/members/{uid}").json()
        assert member["points"]["balance"] == 1_000 - 500 + 230
        assert member["spend_12m"] == 100_000 + 23_000
        assert client.get(f"/v1/coupons/{code}").json()["redemptions"] == 1
        events = [stream.next() for _ in range(5)]  # points held, pending; paid, cart, paid
        orders_seen = [e["data"]["status"] for e in events if e["event"] == "order"]
        assert orders_seen[:2] == ["pending", "paid"], [e["event"] for e in events]
    finally:
        stream.close()

    refund = client.post(
        f"/v1/orders/{oid}/refunds", json={"reason": "changed mind"}, headers=write_headers("pos")
    )
    assert refund.status_code == 201 and refund.json()["amount"] == 23_000
    r = client.post(
        f"/v1/orders/{oid}/refunds/{refund.json()['refund_id']}/approve",
        headers=write_headers("pos"),
    )
    assert r.status_code == 200 and r.json()["status"] == "refunded"
    assert [ln["refunded_qty"] for ln in r.json()["lines"]] == [2, 1]
    assert [stock(client, s)["on_hand"] for s in (a, b)] == [5, 5]
    member = client.get(f"/v1/members/{uid}").json()
    assert member["points"]["balance"] == 1_000  # earned taken back, spent given back
    assert (member["spend_12m"], member["tier"]) == (100_000, "silver")
    assert client.get(f"/v1/coupons/{code}").json()["redemptions"] == 0
    history = [(h["status"], h["channel"]) for h in r.json()["history"]]
    assert history == [("pending", "miniprogram"), ("paid", "app"), ("refunded", "pos")]


def test_one_coupon_raced_from_eight_channels_is_redeemed_once(grid: Grid) -> None:
    code, sku = new_id("ONE").upper(), new_id("sku")
    with httpx.Client(base_url=grid.url, timeout=30) as c:
        product(c, sku, 3_000, 100)
        coupon = {"code": code, "kind": "percent", "value": 10, "max_redemptions": 1}
        assert c.post("/v1/coupons", json=coupon, headers=write_headers()).status_code == 201

    async def race() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=grid.url, timeout=30) as ac:
            body = {"lines": [{"sku": sku, "qty": 1}], "coupon_codes": [code]}
            sent = [
                ac.post(
                    "/v1/checkouts",
                    json={"uid": new_id("u"), **body},
                    headers=write_headers(channel),
                )
                for channel in CHANNELS
            ]
            return list(await asyncio.gather(*sent))

    answers = asyncio.run(race())
    assert sorted(r.status_code for r in answers) == [201] + [409] * 7
    assert {r.json()["code"] for r in answers if r.status_code == 409} == {"coupon_invalid"}
    with httpx.Client(base_url=grid.url, timeout=30) as c:
        assert stock(c, sku)["reserved"] == 1  # the refused seven hold nothing
        (won,) = [r.json() for r in answers if r.status_code == 201]
        assert won["discount"] == 300
        c.post(
            f"/v1/orders/{won['order_id']}/pay", json={"payment_ref": "p"}, headers=write_headers()
        )
        assert c.get(f"/v1/coupons/{code}").json()["redemptions"] == 1


def held_order(
    c: httpx.Client, balance: int, qty: int, points: int, pay_within_s: int
) -> tuple[str, str, str, str]:
    """A pending order holding ``qty`` of a new SKU's 3, a coupon and ``points`` of the
    uid's ``balance``: (uid, sku, coupon code, order id)."""
    uid, sku, code = new_id("u"), new_id("sku"), new_id("C").upper()
    product(c, sku, 2_000, 3)
    earn = {"points": balance, "reason": "welcome", "external_id": "w"}
    c.post(f"/v1/members/{uid}/points/earn", json=earn, headers=write_headers())
    coupon = {"code": code, "kind": "amount", "value": 500, "uid": uid}
    assert c.post("/v1/coupons", json=coupon, headers=write_headers()).status_code == 201
    r = checkout(c, uid, {sku: qty}, coupon_codes=[code], points=points, pay_within_s=pay_within_s)
    assert r.status_code == 201, r.text
    return uid, sku, code, r.json()["order_id"]


def test_a_passing_payment_deadline_gives_everything_back_across_a_restart() -> None:
    g = Grid()
    try:
        with httpx.Client(base_url=g.url, timeout=30) as c:
            uid, sku, code, oid = held_order(c, balance=100, qty=3, points=100, pay_within_s=3)
            assert stock(c, sku)["available"] == 0
        g.kill()  # SIGKILL before the deadline: only the journal knows the order
        time.sleep(3)
        g.start()
        with httpx.Client(base_url=g.url, timeout=30) as c:
            deadline = time.monotonic() + 30
            while c.get(f"/v1/orders/{oid}").json()["status"] != "expired":
                assert time.monotonic() < deadline, "the order never expired"
                time.sleep(0.25)
            while stock(c, sku)["available"] != 3 or c.get(f"/v1/coupons/{code}").json()["held"]:
                assert time.monotonic() < deadline, "what the order held was never given back"
                time.sleep(0.25)
            assert c.get(f"/v1/members/{uid}").json()["points"]["balance"] == 100
            r = c.post(
                f"/v1/orders/{oid}/pay", json={"payment_ref": "late"}, headers=write_headers()
            )
            assert (r.status_code, r.json()["code"]) == (409, "order_expired")
            again = checkout(c, uid, {sku: 3}, coupon_codes=[code])  # the coupon is usable again
            assert again.status_code == 201, again.text
    finally:
        g.stop()


def test_a_payment_just_after_pay_by_is_refused_with_everything_already_given_back(
    grid: Grid,
) -> None:
    """'409 order_expired after pay_by (its stock, points and coupons already given
    back)': read right after the refusal, nothing is still held."""
    with httpx.Client(base_url=grid.url, timeout=30) as c:
        uid, sku, code, oid = held_order(c, balance=500, qty=2, points=300, pay_within_s=1)
        time.sleep(1.05)  # just past pay_by, before the owner's timer has run its releases
        r = c.post(f"/v1/orders/{oid}/pay", json={"payment_ref": "late"}, headers=write_headers())
        assert (r.status_code, r.json()["code"]) == (409, "order_expired"), r.text
        assert stock(c, sku)["reserved"] == 0
        assert c.get(f"/v1/members/{uid}").json()["points"]["balance"] == 500
        assert c.get(f"/v1/coupons/{code}").json()["held"] == 0
        assert c.get(f"/v1/orders/{oid}").json()["status"] == "expired"


def test_a_shard_killed_in_the_middle_of_checkouts_leaves_whole_orders_or_nothing() -> None:
    g = Grid()
    try:
        skus = skus_on_both_shards(4)
        with httpx.Client(base_url=g.url, timeout=30) as c:
            for sku in skus:
                product(c, sku, 1_000, 10_000)
            victim = c.get("/v1/cluster").json()["shards"][1]
        uids = [new_id("u") for _ in range(40)]

        async def shoppers() -> None:
            async with httpx.AsyncClient(base_url=g.url, timeout=30) as ac:

                async def shopper(uid: str) -> None:
                    for _ in range(4):
                        lines = [
                            {"sku": s, "qty": random.randint(1, 3)} for s in random.sample(skus, 3)
                        ]
                        with contextlib.suppress(httpx.HTTPError):
                            await ac.post(
                                "/v1/checkouts",
                                json={"uid": uid, "lines": lines},
                                headers=write_headers("kiosk"),
                            )

                work = asyncio.gather(*(shopper(u) for u in uids))
                await asyncio.sleep(0.5)
                os.kill(victim["pid"], signal.SIGKILL)
                await work

        asyncio.run(shoppers())
        with httpx.Client(base_url=g.url, timeout=30) as c:
            wait_until_shard_restarted(c, 1, victim["pid"])
            deadline = time.monotonic() + 60
            while True:  # abandoned checkouts are refused and their holds given back
                held = {s: stock(c, s)["reserved"] for s in skus}
                owed = dict.fromkeys(skus, 0)
                for uid in uids:
                    page = c.get(f"/v1/users/{uid}/orders", params={"status": "pending"}).json()
                    for order in page["orders"]:
                        for ln in order["lines"]:
                            owed[ln["sku"]] += ln["qty"]
                if held == owed:
                    break
                assert time.monotonic() < deadline, (held, owed)  # stock held by nobody
                time.sleep(1)
            assert sum(owed.values()) > 0
            for sku in skus:
                assert stock(c, sku)["on_hand"] == 10_000  # nothing paid: nothing taken
    finally:
        g.stop()
