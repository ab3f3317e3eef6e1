"""Every endpoint of the contract and its error codes.

The answers' shape needs no second process, journal or restart: these run on the
ASGI app in-process (tests/inprocess.py), in seconds. What only a grid can show
(its operations, its shards) runs over real HTTP to a real grid.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import Grid, new_id, write_headers
from tests.inprocess import in_process_client


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    """The in-process app (this module's tests only; others keep the real grid)."""
    with in_process_client() as c:
        yield c


def stock(client: httpx.Client, on_hand: int, channel: str = "pos") -> str:
    sku = new_id("sku")
    r = client.put(
        f"/v1/skus/{sku}/stock", json={"on_hand": on_hand}, headers=write_headers(channel)
    )
    assert r.status_code == 200, r.text
    return sku


def assert_problem(r: httpx.Response, status: int, code: str) -> dict[str, object]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    doc = r.json()
    assert doc["code"] == code and doc["status"] == status
    assert doc["type"] and doc["title"] and doc["detail"]
    assert "Traceback" not in r.text
    return doc  # type: ignore[no-any-return]


def test_stock_put_get_adjust(client: httpx.Client) -> None:
    sku = new_id("sku")
    r = client.put(f"/v1/skus/{sku}/stock", json={"on_hand": 10}, headers=write_headers("pos"))
    assert r.status_code == 200
    view = r.json()
    assert {k: view[k] for k in ("sku", "on_hand", "reserved", "available", "version")} == {
        "sku": sku,
        "on_hand": 10,
        "reserved": 0,
        "available": 10,
        "version": 1,
    }
    assert r.headers["etag"] == '"1"'
    r = client.post(
        f"/v1/skus/{sku}/stock/adjustments",
        json={"delta": -3, "reason": "damaged"},
        headers=write_headers("pos"),
    )
    assert r.status_code == 200 and r.json()["on_hand"] == 7 and r.json()["version"] == 2
    assert client.get(f"/v1/skus/{sku}/stock").json()["available"] == 7


def test_unknown_sku(client: httpx.Client) -> None:
    sku = new_id("never")
    assert_problem(client.get(f"/v1/skus/{sku}/stock"), 404, "unknown_sku")
    r = client.post(f"/v1/skus/{sku}/stock/adjustments", json={"delta": 1}, headers=write_headers())
    assert_problem(r, 404, "unknown_sku")
    r = client.post(f"/v1/skus/{sku}/reservations", json={"qty": 1}, headers=write_headers())
    assert_problem(r, 404, "unknown_sku")
    r = client.post(
        f"/v1/carts/{new_id('u')}/lines", json={"sku": sku, "qty": 1}, headers=write_headers()
    )
    assert_problem(r, 404, "unknown_sku")
    # the failed writes created nothing
    assert_problem(client.get(f"/v1/skus/{sku}/stock"), 404, "unknown_sku")


def test_stock_below_reserved_is_refused(client: httpx.Client) -> None:
    sku = stock(client, 5)
    assert (
        client.post(
            f"/v1/skus/{sku}/reservations", json={"qty": 4}, headers=write_headers()
        ).status_code
        == 201
    )
    assert_problem(
        client.put(f"/v1/skus/{sku}/stock", json={"on_hand": 3}, headers=write_headers("pos")),
        409,
        "insufficient_stock",
    )
    assert_problem(
        client.post(
            f"/v1/skus/{sku}/stock/adjustments", json={"delta": -2}, headers=write_headers("pos")
        ),
        409,
        "insufficient_stock",
    )
    view = client.get(f"/v1/skus/{sku}/stock").json()
    assert (view["on_hand"], view["reserved"], view["available"], view["version"]) == (5, 4, 1, 2)


def test_reservation_lifecycle(client: httpx.Client) -> None:
    sku = stock(client, 10)
    r = client.post(
        f"/v1/skus/{sku}/reservations",
        json={"qty": 3, "ttl_s": 60, "ref": "order-1"},
        headers=write_headers("miniprogram"),
    )
    assert r.status_code == 201, r.text
    res = r.json()
    assert {k: res[k] for k in ("sku", "qty", "status", "ref")} == {
        "sku": sku,
        "qty": 3,
        "status": "held",
        "ref": "order-1",
    }
    assert res["expires_at"].endswith("Z")
    rid = res["reservation_id"]
    assert client.get(f"/v1/skus/{sku}/stock").json()["available"] == 7
    r = client.post(f"/v1/skus/{sku}/reservations/{rid}/commit", headers=write_headers("app"))
    assert r.status_code == 200 and r.json()["status"] == "committed"
    view = client.get(f"/v1/skus/{sku}/stock").json()
    assert (view["on_hand"], view["reserved"], view["available"]) == (7, 0, 7)
    assert_problem(
        client.delete(f"/v1/skus/{sku}/reservations/{rid}", headers=write_headers()),
        409,
        "reservation_closed",
    )
    assert_problem(
        client.post(f"/v1/skus/{sku}/reservations/{rid}/commit", headers=write_headers()),
        409,
        "reservation_closed",
    )
    assert client.get(f"/v1/skus/{sku}/reservations/{rid}").json()["status"] == "committed"


def test_release_then_commit_is_closed(client: httpx.Client) -> None:
    sku = stock(client, 2)
    rid = client.post(
        f"/v1/skus/{sku}/reservations", json={"qty": 2}, headers=write_headers()
    ).json()["reservation_id"]
    r = client.delete(f"/v1/skus/{sku}/reservations/{rid}", headers=write_headers())
    assert r.status_code == 200 and r.json()["status"] == "released"
    assert client.get(f"/v1/skus/{sku}/stock").json()["available"] == 2
    assert_problem(
        client.post(f"/v1/skus/{sku}/reservations/{rid}/commit", headers=write_headers()),
        409,
        "reservation_closed",
    )
    assert_problem(
        client.post(f"/v1/skus/{sku}/reservations/rnope/commit", headers=write_headers()),
        404,
        "not_found",
    )


def test_reservation_expires_by_itself(client: httpx.Client) -> None:
    sku = stock(client, 3)
    r = client.post(
        f"/v1/skus/{sku}/reservations", json={"qty": 3, "ttl_s": 1}, headers=write_headers()
    )
    rid = r.json()["reservation_id"]
    assert_problem(
        client.post(f"/v1/skus/{sku}/reservations", json={"qty": 1}, headers=write_headers()),
        409,
        "insufficient_stock",
    )
    deadline = time.monotonic() + 10
    while client.get(f"/v1/skus/{sku}/stock").json()["available"] != 3:
        assert time.monotonic() < deadline, "the reservation never expired"
        time.sleep(0.2)
    assert client.get(f"/v1/skus/{sku}/reservations/{rid}").json()["status"] == "expired"
    assert_problem(
        client.post(f"/v1/skus/{sku}/reservations/{rid}/commit", headers=write_headers()),
        409,
        "reservation_closed",
    )


def test_cart_add_set_remove_clear(client: httpx.Client) -> None:
    a, b = stock(client, 50), stock(client, 5)
    uid = new_id("u")
    empty = client.get(f"/v1/carts/{uid}").json()
    assert empty == {"uid": uid, "version": 0, "updated_at": None, "lines": [], "subtotal": 0}
    r = client.post(
        f"/v1/carts/{uid}/lines", json={"sku": a, "qty": 2}, headers=write_headers("miniprogram")
    )
    assert r.status_code == 200, r.text
    r = client.post(
        f"/v1/carts/{uid}/lines", json={"sku": a, "qty": 3}, headers=write_headers("h5")
    )
    line = r.json()["lines"][0]
    assert (line["qty"], line["added_via"], line["updated_via"]) == (5, "miniprogram", "h5")
    assert (line["available"], line["in_stock"]) == (50, True)
    client.post(f"/v1/carts/{uid}/lines", json={"sku": b, "qty": 1}, headers=write_headers("app"))
    r = client.put(f"/v1/carts/{uid}/lines/{a}", json={"qty": 7}, headers=write_headers("pos"))
    assert r.status_code == 200 and r.json()["lines"][0]["qty"] == 7
    assert r.json()["version"] == 4
    r = client.put(f"/v1/carts/{uid}/lines/{a}", json={"qty": 0}, headers=write_headers("pos"))
    assert [line["sku"] for line in r.json()["lines"]] == [b]
    r = client.delete(f"/v1/carts/{uid}/lines/{b}", headers=write_headers("kiosk"))
    assert r.json()["lines"] == [] and r.json()["version"] == 6
    client.post(f"/v1/carts/{uid}/lines", json={"sku": b, "qty": 1}, headers=write_headers("app"))
    r = client.delete(f"/v1/carts/{uid}", headers=write_headers("web"))
    assert r.status_code == 200 and r.json()["lines"] == [] and r.json()["version"] == 8


def test_cart_view_shows_live_availability(client: httpx.Client) -> None:
    skus = [stock(client, 4) for _ in range(6)]  # spread over both shards
    uid = new_id("u")
    for sku in skus:
        client.post(f"/v1/carts/{uid}/lines", json={"sku": sku, "qty": 1}, headers=write_headers())
    client.post(f"/v1/skus/{skus[0]}/reservations", json={"qty": 4}, headers=write_headers("pos"))
    lines = {line["sku"]: line for line in client.get(f"/v1/carts/{uid}").json()["lines"]}
    assert (lines[skus[0]]["available"], lines[skus[0]]["in_stock"]) == (0, False)
    assert all(lines[s]["available"] == 4 and lines[s]["in_stock"] for s in skus[1:])


def test_cart_limits(client: httpx.Client) -> None:
    sku = stock(client, 20_000)
    uid = new_id("u")
    assert_problem(
        client.post(
            f"/v1/carts/{uid}/lines", json={"sku": sku, "qty": 10_000}, headers=write_headers()
        ),
        422,
        "invalid_request",
    )
    client.post(f"/v1/carts/{uid}/lines", json={"sku": sku, "qty": 9_999}, headers=write_headers())
    assert_problem(
        client.post(f"/v1/carts/{uid}/lines", json={"sku": sku, "qty": 1}, headers=write_headers()),
        422,
        "invalid_request",
    )
    few = stock(client, 3)
    assert_problem(
        client.post(f"/v1/carts/{uid}/lines", json={"sku": few, "qty": 4}, headers=write_headers()),
        409,
        "insufficient_stock",
    )
    assert_problem(
        client.put(f"/v1/carts/{uid}/lines/{few}", json={"qty": 4}, headers=write_headers()),
        409,
        "insufficient_stock",
    )
    assert client.get(f"/v1/carts/{uid}").json()["version"] == 1


def test_cart_full(client: httpx.Client) -> None:
    sku = stock(client, 1)
    uid = new_id("u")
    # 200 distinct SKUs: stock them, then fill the cart
    skus = [new_id("s") for _ in range(201)]
    for s in skus:
        client.put(f"/v1/skus/{s}/stock", json={"on_hand": 1}, headers=write_headers("pos"))
    for s in skus[:200]:
        assert (
            client.post(
                f"/v1/carts/{uid}/lines", json={"sku": s, "qty": 1}, headers=write_headers()
            ).status_code
            == 200
        )
    assert_problem(
        client.post(f"/v1/carts/{uid}/lines", json={"sku": sku, "qty": 1}, headers=write_headers()),
        409,
        "cart_full",
    )
    view = client.get(f"/v1/carts/{uid}").json()
    assert len(view["lines"]) == 200 and view["version"] == 200


def test_idempotency_key(client: httpx.Client) -> None:
    sku = stock(client, 10)
    h = write_headers("app", **{"Idempotency-Key": new_id("k")})
    first = client.post(f"/v1/skus/{sku}/reservations", json={"qty": 2}, headers=h)
    again = client.post(f"/v1/skus/{sku}/reservations", json={"qty": 2}, headers=h)
    assert first.status_code == again.status_code == 201
    assert first.json() == again.json()
    assert client.get(f"/v1/skus/{sku}/stock").json()["reserved"] == 2
    assert_problem(
        client.post(f"/v1/skus/{sku}/reservations", json={"qty": 3}, headers=h),
        422,
        "idempotency_key_reused",
    )
    uid = new_id("u")
    hk = write_headers("h5", **{"Idempotency-Key": "add-1"})
    for _ in range(3):
        r = client.post(f"/v1/carts/{uid}/lines", json={"sku": sku, "qty": 1}, headers=hk)
        assert r.status_code == 200 and r.json()["lines"][0]["qty"] == 1
    assert client.get(f"/v1/carts/{uid}").json()["version"] == 1


def test_if_match(client: httpx.Client) -> None:
    sku = stock(client, 10)
    uid = new_id("u")
    v1 = client.post(
        f"/v1/carts/{uid}/lines", json={"sku": sku, "qty": 1}, headers=write_headers()
    ).json()["version"]
    r = client.put(
        f"/v1/carts/{uid}/lines/{sku}",
        json={"qty": 2},
        headers=write_headers(**{"If-Match": f'"{v1}"'}),
    )
    assert r.status_code == 200 and r.json()["version"] == v1 + 1
    doc = assert_problem(
        client.put(
            f"/v1/carts/{uid}/lines/{sku}",
            json={"qty": 3},
            headers=write_headers(**{"If-Match": str(v1)}),
        ),
        412,
        "version_conflict",
    )
    assert str(v1 + 1) in str(doc["detail"])
    assert client.get(f"/v1/carts/{uid}").json()["lines"][0]["qty"] == 2
    assert_problem(
        client.put(
            f"/v1/skus/{sku}/stock", json={"on_hand": 1}, headers=write_headers(**{"If-Match": "7"})
        ),
        412,
        "version_conflict",
    )
    assert (
        client.put(
            f"/v1/skus/{sku}/stock", json={"on_hand": 1}, headers=write_headers(**{"If-Match": "1"})
        ).status_code
        == 200
    )


def test_operations(grid: Grid) -> None:
    client = httpx.Client(base_url=grid.url, timeout=10)
    assert client.get("/healthz").status_code == 200
    r = client.get("/readyz")
    assert r.status_code == 200 and r.json()["missing"] == []
    cluster = client.get("/v1/cluster").json()
    assert [s["shard"] for s in cluster["shards"]] == [0, 1]
    ranges = [s["slot_ranges"] for s in cluster["shards"]]
    assert ranges == [[[0, 8191]], [[8192, 16383]]]


def test_products_prices_reviews_and_the_carts_unit_prices(client: httpx.Client) -> None:
    sku, uid = stock(client, 10), new_id("u")
    missing = client.get(f"/v1/products/{sku}")
    assert (missing.status_code, missing.json()["code"]) == (404, "unknown_product")
    client.post(f"/v1/carts/{uid}/lines", json={"sku": sku, "qty": 2}, headers=write_headers())
    line = client.get(f"/v1/carts/{uid}").json()["lines"][0]
    assert line["unit_price"] is None  # no product yet
    body = {"title": "Green tea 500 ml", "price": 450, "category": "drinks",
            "channel_prices": {"miniprogram": 399}}  # fmt: skip
    put = client.put(f"/v1/products/{sku}", json=body, headers=write_headers("pos"))
    assert (put.status_code, put.json()["effective_price"], put.headers["etag"]) == (
        200,
        450,
        '"1"',
    )
    read = client.get(f"/v1/products/{sku}?channel=miniprogram").json()
    assert (read["effective_price"], read["currency"]) == (399, "CNY")
    cart_app = client.get(f"/v1/carts/{uid}", headers={"X-Channel": "app"}).json()
    cart_mini = client.get(f"/v1/carts/{uid}", headers={"X-Channel": "miniprogram"}).json()
    assert (cart_app["lines"][0]["unit_price"], cart_app["subtotal"]) == (450, 900)
    assert (cart_mini["lines"][0]["unit_price"], cart_mini["subtotal"]) == (399, 798)
    priced = client.post(f"/v1/products/{sku}/price", json={"price": 500},
                         headers=write_headers("pos"))  # fmt: skip
    assert (priced.json()["price"], priced.json()["channel_prices"]) == (500, {"miniprogram": 399})
    for who, rating in (("u1", 4), ("u2", 2), ("u1", 5)):  # u1's second replaces its first
        r = client.post(f"/v1/products/{sku}/reviews", json={"uid": who, "rating": rating,
                        "text": "ok"}, headers=write_headers())  # fmt: skip
        assert r.status_code == 201 and r.json()["verified_purchase"] is False
    reviews = client.get(f"/v1/products/{sku}/reviews?limit=1").json()
    assert (reviews["count"], reviews["rating_avg"], reviews["next_cursor"]) == (2, 3.5, 1)
    assert reviews["reviews"][0]["uid"] == "u1"  # the newest first
    for bad in ({"title": "x", "price": -1}, {"price": 1}, {"title": "x", "price": 1.5},
                {"title": "x", "price": 1, "channel_prices": {"pos": "1"}}):  # fmt: skip
        r = client.put(f"/v1/products/{sku}", json=bad, headers=write_headers("pos"))
        assert (r.status_code, r.json()["code"]) == (422, "invalid_request"), bad
    too_high = {"uid": "u3", "rating": 6}
    r = client.post(f"/v1/products/{sku}/reviews", json=too_high, headers=write_headers())
    assert r.status_code == 422
    assert client.get(f"/v1/products/{sku}").json()["version"] == 5  # put, price, 3 reviews
