"""What a hostile or buggy channel might send: a clear refusal, no change, never a 500."""

from __future__ import annotations

import httpx
import pytest

from tests.api.test_contract import assert_problem, stock
from tests.conftest import new_id, write_headers


@pytest.mark.parametrize(
    "body",
    [b"{", b"[1,2]", b'"text"', b"null", b"\xff\xfe", b'{"sku": "a", "qty": 1', b"NaN"],
)
def test_malformed_json(client: httpx.Client, body: bytes) -> None:
    uid = new_id("u")
    r = client.post(f"/v1/carts/{uid}/lines", content=body, headers=write_headers())
    assert_problem(r, 400, "invalid_request")
    assert client.get(f"/v1/carts/{uid}").json()["version"] == 0


@pytest.mark.parametrize(
    "body",
    [
        {"sku": "x", "qty": "1"},
        {"sku": "x", "qty": 1.0},
        {"sku": "x", "qty": True},
        {"sku": "x", "qty": None},
        {"sku": "x", "qty": 0},
        {"sku": "x", "qty": -1},
        {"sku": "x", "qty": 10**30},
        {"sku": 5, "qty": 1},
        {"sku": "bad sku!", "qty": 1},
        {"sku": "x" * 65, "qty": 1},
        {"sku": "x", "qty": 1, "price": 3},
        {"qty": 1},
        {},
    ],
)
def test_wrong_cart_line_bodies(client: httpx.Client, body: dict[str, object]) -> None:
    uid = new_id("u")
    r = client.post(f"/v1/carts/{uid}/lines", json=body, headers=write_headers())
    assert_problem(r, 422, "invalid_request")
    assert client.get(f"/v1/carts/{uid}").json()["version"] == 0


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("stock", {"on_hand": -1}),
        ("stock", {"on_hand": 10**19}),
        ("stock", {"on_hand": "5"}),
        ("stock", {"on_hand": 5, "extra": 1}),
        ("adjustments", {"delta": 0}),
        ("adjustments", {"delta": 1.5}),
        ("adjustments", {"delta": 1, "reason": 7}),
        ("adjustments", {"delta": 1, "reason": "r" * 1000}),
        ("reservations", {"qty": 0}),
        ("reservations", {"qty": 1, "ttl_s": 0}),
        ("reservations", {"qty": 1, "ttl_s": 3601}),
        ("reservations", {"qty": 1, "ref": ["a"]}),
    ],
)
def test_wrong_stock_bodies(client: httpx.Client, path: str, body: dict[str, object]) -> None:
    sku = stock(client, 5)
    url = {
        "stock": f"/v1/skus/{sku}/stock",
        "adjustments": f"/v1/skus/{sku}/stock/adjustments",
        "reservations": f"/v1/skus/{sku}/reservations",
    }[path]
    method = "PUT" if path == "stock" else "POST"
    r = client.request(method, url, json=body, headers=write_headers("pos"))
    assert_problem(r, 422, "invalid_request")
    view = client.get(f"/v1/skus/{sku}/stock").json()
    assert (view["on_hand"], view["reserved"], view["version"]) == (5, 0, 1)


def test_long_and_bad_ids(client: httpx.Client) -> None:
    assert_problem(client.get("/v1/carts/" + "u" * 65), 400, "invalid_request")
    assert_problem(client.get("/v1/skus/bad%20sku/stock"), 400, "invalid_request")
    r = client.put("/v1/skus/" + "s" * 65 + "/stock", json={"on_hand": 1}, headers=write_headers())
    assert_problem(r, 400, "invalid_request")
    r = client.post("/v1/skus/ok/reservations/" + "r" * 65 + "/commit", headers=write_headers())
    assert_problem(r, 400, "invalid_request")


def test_missing_or_unknown_channel(client: httpx.Client) -> None:
    sku = new_id("sku")
    for headers in ({}, {"X-Channel": "fax"}, {"X-Channel": ""}, {"X-Channel": "APP"}):
        r = client.put(f"/v1/skus/{sku}/stock", json={"on_hand": 1}, headers=headers)
        assert_problem(r, 400, "unknown_channel")
    assert_problem(client.get(f"/v1/skus/{sku}/stock"), 404, "unknown_sku")


def test_large_body_is_413(client: httpx.Client) -> None:
    uid = new_id("u")
    big = b'{"sku": "x", "qty": 1, "pad": "' + b"x" * (65 * 1024) + b'"}'
    r = client.post(f"/v1/carts/{uid}/lines", content=big, headers=write_headers())
    assert_problem(r, 413, "payload_too_large")

    def chunks() -> object:  # no Content-Length: the limit holds while reading
        for _ in range(70):
            yield b" " * 1024

    r = client.post(f"/v1/carts/{uid}/lines", content=chunks(), headers=write_headers())  # type: ignore[arg-type]
    assert_problem(r, 413, "payload_too_large")
    assert client.get(f"/v1/carts/{uid}").json()["version"] == 0


def test_bad_headers(client: httpx.Client) -> None:
    sku = stock(client, 5)
    for key in (b"", b"k" * 129, "caf\u00e9".encode(), b"tab\there"):
        r = client.post(
            f"/v1/skus/{sku}/reservations",
            json={"qty": 1},
            headers={b"X-Channel": b"app", b"Idempotency-Key": key},
        )  # type: ignore[dict-item]
        assert_problem(r, 400, "invalid_request")
    for tag in ("abc", "-1", "1.5", "9" * 30):
        r = client.put(
            f"/v1/skus/{sku}/stock",
            json={"on_hand": 6},
            headers={"X-Channel": "pos", "If-Match": tag},
        )
        assert_problem(r, 400, "invalid_request")
    assert client.get(f"/v1/skus/{sku}/stock").json()["version"] == 1


def test_unknown_routes_and_methods(client: httpx.Client) -> None:
    assert_problem(client.get("/v1/nothing"), 404, "not_found")
    assert_problem(client.patch("/v1/carts/u1", headers=write_headers()), 405, "method_not_allowed")
    assert_problem(client.get("/v1/carts/u1/lines"), 405, "method_not_allowed")


def test_a_channel_no_registry_holds_is_refused_wherever_a_body_or_query_names_one() -> None:
    """A price, a coupon or a read for a channel that is not registered is a typo or a
    hostile client: 422, and nothing is kept."""
    from tests.inprocess import in_process_client

    with in_process_client() as c:
        sku, code = new_id("sku"), new_id("C").upper()
        put = {"title": "t", "price": 100, "channel_prices": {"fax": 90}}
        r = c.put(f"/v1/products/{sku}", json=put, headers=write_headers("pos"))
        assert_problem(r, 422, "invalid_request")
        assert "fax" in r.json()["detail"]
        assert c.get(f"/v1/products/{sku}").status_code == 404  # nothing kept
        ok = {"title": "t", "price": 100, "channel_prices": {"pos": 90}}
        assert (
            c.put(f"/v1/products/{sku}", json=ok, headers=write_headers("pos")).status_code == 200
        )
        priced = {"price": 120, "channel_prices": {"pos": 80, "telex": 1}}
        r = c.post(f"/v1/products/{sku}/price", json=priced, headers=write_headers("pos"))
        assert_problem(r, 422, "invalid_request")
        assert c.get(f"/v1/products/{sku}").json()["price"] == 100
        assert_problem(c.get(f"/v1/products/{sku}?channel=fax"), 422, "invalid_request")
        coupon = {"code": code, "kind": "amount", "value": 5, "channels": ["app", "fax"]}
        r = c.post("/v1/coupons", json=coupon, headers=write_headers())
        assert_problem(r, 422, "invalid_request")
        assert c.get(f"/v1/coupons/{code}").status_code == 404
        assert_problem(c.get("/v1/users/u1/coupons?channel=fax"), 422, "invalid_request")
        assert c.get("/v1/users/u1/coupons?channel=pos").status_code == 200
