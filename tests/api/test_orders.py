"""Orders in-process: the state machine, refusals that change nothing, hostile input,
store pickups, clerks at the till, verified reviews and idempotent checkouts."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import write_headers
from tests.inprocess import in_process_client


@pytest.fixture
def local() -> Iterator[httpx.Client]:
    with in_process_client() as client:
        yield client


def setup(c: httpx.Client, uid: str = "u1", points: int = 0) -> None:
    for sku, price, category in (("tea", 4_000, "tea"), ("cup", 1_500, "cups")):
        body = {"title": sku, "price": price, "category": category}
        assert c.put(f"/v1/products/{sku}", json=body, headers=write_headers()).status_code == 200
        c.put(f"/v1/skus/{sku}/stock", json={"on_hand": 5}, headers=write_headers())
    if points:
        earn = {"points": points, "reason": "welcome", "external_id": "w"}
        c.post(f"/v1/members/{uid}/points/earn", json=earn, headers=write_headers())


def checkout(
    c: httpx.Client, channel: str = "app", headers: dict[str, str] | None = None, **body: Any
) -> httpx.Response:
    body = {"uid": "u1", "lines": [{"sku": "tea", "qty": 1}, {"sku": "cup", "qty": 2}], **body}
    return c.post("/v1/checkouts", json=body, headers={**write_headers(channel), **(headers or {})})


def move(c: httpx.Client, oid: str, to: str, channel: str = "pos") -> httpx.Response:
    return c.post(f"/v1/orders/{oid}/transitions", json={"to": to}, headers=write_headers(channel))


def state(c: httpx.Client) -> list[Any]:
    """Everything a refused request must leave as it was."""
    return [
        c.get("/v1/skus/tea/stock").json(),
        c.get("/v1/skus/cup/stock").json(),
        c.get("/v1/members/u1").json(),
        c.get("/v1/users/u1/orders").json(),
        c.get("/v1/carts/u1").json(),
    ]


def test_every_refused_checkout_changes_nothing(local: httpx.Client) -> None:
    setup(local, points=100)
    local.post(
        "/v1/coupons",
        json={
            "code": "LATE",
            "kind": "amount",
            "value": 100,
            "valid_until": "2020-01-01T00:00:00Z",
        },
        headers=write_headers(),
    )
    before = state(local)
    refusals: dict[tuple[int, str], dict[str, Any]] = {
        (404, "unknown_product"): {"lines": [{"sku": "nothing", "qty": 1}]},
        (409, "insufficient_stock"): {"lines": [{"sku": "tea", "qty": 6}]},
        (409, "coupon_invalid"): {"coupon_codes": ["LATE"]},
        (409, "insufficient_points"): {"points": 101},
    }
    for (status, code), body in refusals.items():
        r = checkout(local, **body)
        assert (r.status_code, r.json()["code"]) == (status, code), r.text
    coupon = checkout(local, coupon_codes=["NOSUCH"])
    assert (coupon.status_code, coupon.json()["code"]) == (409, "coupon_invalid")
    hostile: list[dict[str, Any]] = [
        {"lines": [{"sku": "tea", "qty": 0}]},
        {"lines": [{"sku": "tea", "qty": 1}, {"sku": "tea", "qty": 1}]},
        {"lines": [{"sku": f"s{i}", "qty": 1} for i in range(101)]},
        {"lines": []},
        {"points": -1},
        {"fulfilment": "pickup"},
        {"fulfilment": "teleport"},
        {"pickup_store": "s1"},
        {"uid": "bad uid"},
        {"uid": "u1\n"},
        {"coupon_codes": ["A", "A"]},
        {"coupon_codes": "A"},
        {"pay_within_s": 0},
        {"pay_within_s": 86_400},
        {"status": "paid"},
        {"lines": [{"sku": "tea", "qty": 1, "unit_price": 1}]},
    ]
    for body in hostile:
        r = checkout(local, **body)
        assert r.status_code == 422 and r.json()["code"] in (
            "invalid_request",
            "insufficient_points",
        ), (body, r.text)
    assert state(local) == before
    earn = {"points": 9_000, "reason": "more", "external_id": "w2"}
    local.post("/v1/members/u1/points/earn", json=earn, headers=write_headers())
    worth_more = checkout(local, points=7_001)  # the order is worth 7,000
    assert (worth_more.status_code, worth_more.json()["code"]) == (422, "invalid_request")
    assert state(local)[:2] == before[:2]


def test_an_order_moves_only_along_its_fulfilment(local: httpx.Client) -> None:
    setup(local)
    oid = checkout(local).json()["order_id"]
    for to in ("packed", "shipped", "completed", "ready_for_pickup"):
        r = move(local, oid, to)
        assert (r.status_code, r.json()["code"]) == (409, "invalid_transition")  # not paid yet
    assert (
        local.post(f"/v1/orders/{oid}/refunds", json={}, headers=write_headers()).status_code == 409
    )
    pay = {"payment_ref": "p1"}
    assert local.post(f"/v1/orders/{oid}/pay", json=pay, headers=write_headers()).status_code == 200
    again = local.post(f"/v1/orders/{oid}/pay", json=pay, headers=write_headers())
    assert again.status_code == 200 and again.json()["status"] == "paid"  # the same payment
    other = local.post(f"/v1/orders/{oid}/pay", json={"payment_ref": "p2"}, headers=write_headers())
    assert (other.status_code, other.json()["code"]) == (409, "invalid_transition")
    assert move(local, oid, "ready_for_pickup").status_code == 409  # a delivery order
    for to in ("packed", "shipped"):
        assert move(local, oid, to).json()["status"] == to
    cancel = local.post(f"/v1/orders/{oid}/cancel", headers=write_headers())
    assert (cancel.status_code, cancel.json()["code"]) == (409, "invalid_transition")
    done = move(local, oid, "completed", "app").json()
    assert [h["status"] for h in done["history"]] == [
        "pending",
        "paid",
        "packed",
        "shipped",
        "completed",
    ]
    assert move(local, oid, "packed").status_code == 409
    assert local.post("/v1/orders/nosuch/pay", json=pay, headers=write_headers()).status_code == 404
    assert local.get("/v1/orders/nosuch").status_code == 404


def test_refunds_are_partial_by_line_and_never_exceed_the_order(local: httpx.Client) -> None:
    setup(local)
    oid = checkout(local, "miniprogram").json()["order_id"]
    local.post(f"/v1/orders/{oid}/pay", json={"payment_ref": "p"}, headers=write_headers())
    ask = {"lines": [{"sku": "cup", "qty": 1}], "reason": "chipped", "restock": False}
    first = local.post(f"/v1/orders/{oid}/refunds", json=ask, headers=write_headers("pos"))
    assert first.status_code == 201 and first.json()["amount"] == 1_500
    assert first.json()["status"] == "requested"
    before = local.get(f"/v1/orders/{oid}").json()
    for lines in ([{"sku": "cup", "qty": 2}], [{"sku": "nothing", "qty": 1}]):
        r = local.post(
            f"/v1/orders/{oid}/refunds", json={"lines": lines}, headers=write_headers("h5")
        )
        assert (r.status_code, r.json()["code"]) == (409, "refund_exceeds_order")
    assert local.get(f"/v1/orders/{oid}").json() == before
    ok = local.post(
        f"/v1/orders/{oid}/refunds/{first.json()['refund_id']}/approve",
        headers=write_headers("pos"),
    ).json()
    assert ok["status"] == "paid" and [ln["refunded_qty"] for ln in ok["lines"]] == [0, 1]
    assert local.get("/v1/skus/cup/stock").json()["on_hand"] == 3  # restock: false
    rest = local.post(f"/v1/orders/{oid}/refunds", json={}, headers=write_headers("app")).json()
    assert rest["lines"] == [{"sku": "tea", "qty": 1}, {"sku": "cup", "qty": 1}]
    done = local.post(
        f"/v1/orders/{oid}/refunds/{rest['refund_id']}/approve", headers=write_headers("app")
    ).json()
    assert done["status"] == "refunded"
    assert local.get("/v1/skus/tea/stock").json()["on_hand"] == 5
    assert local.get("/v1/members/u1").json()["spend_12m"] == 0
    more = local.post(f"/v1/orders/{oid}/refunds", json={}, headers=write_headers("app"))
    assert (more.status_code, more.json()["code"]) == (409, "refund_exceeds_order")


def test_cancelling_gives_back_what_was_held_or_paid(local: httpx.Client) -> None:
    setup(local, points=50)
    held = checkout(local, points=50).json()
    assert local.get("/v1/members/u1").json()["points"]["balance"] == 0
    r = local.post(f"/v1/orders/{held['order_id']}/cancel", headers=write_headers())
    assert r.json()["status"] == "cancelled"
    assert local.get("/v1/skus/tea/stock").json()["reserved"] == 0
    assert local.get("/v1/members/u1").json()["points"]["balance"] == 50
    paid = checkout(local).json()
    local.post(
        f"/v1/orders/{paid['order_id']}/pay", json={"payment_ref": "p"}, headers=write_headers()
    )
    r = local.post(f"/v1/orders/{paid['order_id']}/cancel", headers=write_headers("pos"))
    assert r.json()["status"] == "cancelled" and r.json()["refunds"][0]["amount"] == 7_000
    assert local.get("/v1/skus/tea/stock").json()["on_hand"] == 5


def test_a_pickup_order_shows_at_its_store(local: httpx.Client) -> None:
    setup(local)
    r = checkout(local, "app", fulfilment="pickup", pickup_store="s9", store="s1")
    oid = r.json()["order_id"]
    local.post(f"/v1/orders/{oid}/pay", json={"payment_ref": "p"}, headers=write_headers())
    assert move(local, oid, "packed").status_code == 409
    assert move(local, oid, "ready_for_pickup").json()["status"] == "ready_for_pickup"
    for store in ("s9", "s1"):
        page = local.get(f"/v1/stores/{store}/orders", params={"status": "ready_for_pickup"})
        assert [o["order_id"] for o in page.json()["orders"]] == [oid]
    assert local.get("/v1/stores/s9/orders", params={"status": "paid"}).json()["orders"] == []
    assert local.get("/v1/stores/s9/orders", params={"status": "lost"}).status_code == 422
    assert move(local, oid, "completed").json()["status"] == "completed"


def test_a_clerk_adds_to_a_shoppers_cart_from_the_till(local: httpx.Client) -> None:
    setup(local)
    add = {"sku": "tea", "qty": 1}
    r = local.post(
        "/v1/carts/u1/lines", json=add, headers=write_headers("pos", **{"X-Clerk": "c-7"})
    )
    assert r.json()["lines"][0]["added_by_clerk"] == "c-7"
    app = local.post("/v1/carts/u1/lines", json={"sku": "cup", "qty": 1}, headers=write_headers())
    assert "added_by_clerk" not in app.json()["lines"][1]
    for channel, clerk, status in (("app", "c-7", 422), ("pos", "bad clerk", 400)):
        r = local.post(
            "/v1/carts/u1/lines", json=add, headers=write_headers(channel, **{"X-Clerk": clerk})
        )
        assert r.status_code == status, r.text
    # a till checks out the cart: the clerk's line is bought like any other
    order = checkout(local, "pos", lines=None, headers={"X-Clerk": "c-7"})
    assert order.status_code == 201 and len(order.json()["lines"]) == 2


def test_a_review_is_verified_once_the_reviewer_has_paid_for_the_sku(local: httpx.Client) -> None:
    setup(local)
    review = {"uid": "u1", "rating": 5, "text": "good"}
    r = local.post("/v1/products/tea/reviews", json=review, headers=write_headers())
    assert r.json()["verified_purchase"] is False
    oid = checkout(local).json()["order_id"]
    r = local.post("/v1/products/tea/reviews", json=review, headers=write_headers())
    assert r.json()["verified_purchase"] is False  # pending is not bought
    local.post(f"/v1/orders/{oid}/pay", json={"payment_ref": "p"}, headers=write_headers())
    r = local.post("/v1/products/tea/reviews", json=review, headers=write_headers())
    assert r.json()["verified_purchase"] is True
    bad = local.post(
        "/v1/products/tea/reviews", json={**review, "verified": True}, headers=write_headers()
    )
    assert bad.status_code == 422  # the grid decides it, never the client


def test_a_merged_uids_review_is_its_survivors(local: httpx.Client) -> None:
    """One review per user and SKU: after a merge, a review naming the merged uid is the
    survivor's (and verified by the survivor's paid orders, which include the merged's)."""
    setup(local)
    oid = checkout(local).json()["order_id"]  # u1's
    local.post(f"/v1/orders/{oid}/pay", json={"payment_ref": "p"}, headers=write_headers())
    merged = local.post("/v1/users/u2/merge", json={"from_uid": "u1"}, headers=write_headers())
    assert merged.status_code == 200, merged.text
    review = {"uid": "u1", "rating": 4, "text": "fine"}
    r = local.post("/v1/products/tea/reviews", json=review, headers=write_headers())
    assert r.status_code == 201, r.text
    assert (r.json()["uid"], r.json()["verified_purchase"]) == ("u2", True)
    r = local.post(
        "/v1/products/tea/reviews", json={**review, "uid": "u2"}, headers=write_headers()
    )
    listed = local.get("/v1/products/tea/reviews").json()
    assert listed["count"] == 1 and [v["uid"] for v in listed["reviews"]] == ["u2"]


def test_a_checkout_retried_with_its_idempotency_key_is_one_order(local: httpx.Client) -> None:
    setup(local)
    key = {"Idempotency-Key": "till-42"}
    first, again = checkout(local, headers=key), checkout(local, headers=key)
    assert first.status_code == again.status_code == 201
    assert first.json()["order_id"] == again.json()["order_id"]
    assert local.get("/v1/skus/tea/stock").json()["reserved"] == 1
    other = checkout(local, headers=key, points=0, store="s1")
    assert (other.status_code, other.json()["code"]) == (422, "idempotency_key_reused")
    refused = checkout(local, headers={"Idempotency-Key": "k2"}, lines=[{"sku": "tea", "qty": 9}])
    assert (
        checkout(local, headers={"Idempotency-Key": "k2"}, lines=[{"sku": "tea", "qty": 9}]).json()
        == refused.json()
    )


def test_checkout_defaults_to_the_cart_and_payment_empties_it(local: httpx.Client) -> None:
    setup(local)
    empty = checkout(local, lines=None)
    assert (empty.status_code, empty.json()["code"]) == (422, "invalid_request")
    local.post("/v1/carts/u1/lines", json={"sku": "tea", "qty": 2}, headers=write_headers())
    order = checkout(local, "h5", lines=None).json()
    assert [(ln["sku"], ln["qty"]) for ln in order["lines"]] == [("tea", 2)]
    local.post("/v1/carts/u1/lines", json={"sku": "cup", "qty": 1}, headers=write_headers())
    local.post(
        f"/v1/orders/{order['order_id']}/pay", json={"payment_ref": "p"}, headers=write_headers()
    )
    assert [ln["sku"] for ln in local.get("/v1/carts/u1").json()["lines"]] == ["cup"]


def test_reviews_added_between_pages_never_show_twice(local: httpx.Client) -> None:
    setup(local)
    for who in ("r1", "r2", "r3"):
        review = {"uid": who, "rating": 3, "text": "ok"}
        assert local.post("/v1/products/tea/reviews", json=review, headers=write_headers())
    first = local.get("/v1/products/tea/reviews?limit=2").json()
    assert [r["uid"] for r in first["reviews"]] == ["r3", "r2"]
    late = {"uid": "r4", "rating": 3, "text": "ok"}
    local.post("/v1/products/tea/reviews", json=late, headers=write_headers())
    rest = local.get(f"/v1/products/tea/reviews?limit=2&cursor={first['next_cursor']}").json()
    assert [r["uid"] for r in rest["reviews"]] == ["r1"] and rest["next_cursor"] is None


def test_paying_takes_out_of_the_cart_what_was_bought_and_no_more(local: httpx.Client) -> None:
    """The cart's bought lines leave it once paid; units of a SKU added after the
    checkout (the shopper went on shopping) stay."""
    setup(local)
    for sku, qty in (("tea", 2), ("cup", 1)):
        add = {"sku": sku, "qty": qty}
        assert (
            local.post("/v1/carts/u1/lines", json=add, headers=write_headers()).status_code == 200
        )
    oid = checkout(local, lines=None).json()["order_id"]  # the cart: 2 tea, 1 cup
    more = {"sku": "tea", "qty": 1}
    local.post("/v1/carts/u1/lines", json=more, headers=write_headers("h5"))
    pay = {"payment_ref": "p"}
    assert local.post(f"/v1/orders/{oid}/pay", json=pay, headers=write_headers()).status_code == 200
    lines = local.get("/v1/carts/u1").json()["lines"]
    assert [(ln["sku"], ln["qty"]) for ln in lines] == [("tea", 1)]


def test_orders_placed_between_pages_never_show_twice(local: httpx.Client) -> None:
    setup(local)
    one = [{"sku": "tea", "qty": 1}]  # four of them fit the stock
    first_three = [checkout(local, lines=one).json()["order_id"] for _ in range(3)]
    page = local.get("/v1/users/u1/orders?limit=2").json()
    assert [o["order_id"] for o in page["orders"]] == first_three[:0:-1]
    assert checkout(local, lines=one).status_code == 201  # newer: on a fresh first page only
    rest = local.get(f"/v1/users/u1/orders?limit=2&cursor={page['next_cursor']}").json()
    assert [o["order_id"] for o in rest["orders"]] == first_three[:1]
    assert rest["next_cursor"] is None
