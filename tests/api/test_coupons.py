"""Coupons over HTTP, in-process (no Ray): creation with a given or generated code,
idempotent re-creation, a conflicting one, hostile definitions refused with
nothing changed, and a user's coupons with ``usable`` per channel."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from omnigrid.actors import coupon
from omnigrid.persistence.events import rfc3339
from tests.conftest import new_id, write_headers
from tests.inprocess import in_process_client


@pytest.fixture(scope="module")
def local() -> Iterator[httpx.Client]:
    with in_process_client() as client:
        yield client


def post(client: httpx.Client, channel: str = "app", **body: Any) -> httpx.Response:
    return client.post("/v1/coupons", json=body, headers=write_headers(channel))


def listing(client: httpx.Client, uid: str, query: str = "", **headers: str) -> list[Any]:
    r = client.get(f"/v1/users/{uid}/coupons{query}", headers=headers)
    assert r.status_code == 200, r.text
    coupons: list[Any] = r.json()["coupons"]
    return coupons


def test_a_coupon_is_created_and_read_back(local: httpx.Client) -> None:
    code = new_id("SPRING")
    r = post(
        local,
        code=code,
        kind="percent",
        value=10,
        min_spend=5_000,
        categories=["shoes"],
        channels=["app", "pos"],
        valid_until="2099-01-01T00:00:00+08:00",
        max_redemptions=100,
        per_uid=2,
        restore_on_refund=True,
    )
    assert (r.status_code, r.headers["etag"]) == (201, '"1"'), r.text
    made = r.json()
    assert made["coupon_id"] == made["code"] == code
    assert made["valid_until"] == "2098-12-31T16:00:00.000Z"
    assert (made["redemptions"], made["held"], made["uid"], made["skus"]) == (0, 0, None, None)
    got = local.get(f"/v1/coupons/{code}")
    assert (got.status_code, got.json(), got.headers["etag"]) == (200, made, '"1"')
    missing = local.get(f"/v1/coupons/{new_id('NONE')}")
    assert (missing.status_code, missing.json()["code"]) == (404, "not_found")


def test_the_same_definition_again_answers_it_and_another_is_a_conflict(
    local: httpx.Client,
) -> None:
    code = new_id("C")
    first = post(local, code=code, kind="amount", value=500)
    again = post(local, "pos", code=code, kind="amount", value=500, max_redemptions=1)
    assert (again.status_code, again.json()) == (201, first.json())
    other = post(local, code=code, kind="amount", value=600)
    assert other.status_code == 409
    assert other.headers["content-type"] == "application/problem+json"
    assert (other.json()["code"], other.json()["title"]) == ("coupon_exists", "Coupon exists")
    assert local.get(f"/v1/coupons/{code}").json()["value"] == 500


def test_a_code_the_grid_makes_and_a_retry_with_its_idempotency_key(local: httpx.Client) -> None:
    made = post(local, kind="amount", value=100).json()
    assert made["code"].startswith("C") and len(made["code"]) == 13
    assert post(local, kind="amount", value=100).json()["code"] != made["code"]
    once = write_headers("app", **{"Idempotency-Key": new_id("k")})
    first = local.post("/v1/coupons", json={"kind": "amount", "value": 7}, headers=once)
    retry = local.post("/v1/coupons", json={"kind": "amount", "value": 7}, headers=once)
    assert first.status_code == retry.status_code == 201
    assert first.json() == retry.json()  # the same coupon, not a second one
    reused = local.post("/v1/coupons", json={"kind": "amount", "value": 8}, headers=once)
    assert (reused.status_code, reused.json()["code"]) == (422, "idempotency_key_reused")


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"kind": "amount", "value": -5}, "value"),
        ({"kind": "amount", "value": 0}, "value"),
        ({"kind": "percent", "value": 150}, "1-100"),
        ({"kind": "amount", "value": 1.5}, "value"),
        ({"kind": "amount", "value": True}, "value"),
        ({"kind": "amount", "value": 10**30}, "value"),
        ({"kind": "cash", "value": 1}, "kind"),
        ({"value": 1}, "kind"),
        ({"kind": "amount", "value": 1, "discount": 5}, "discount"),
        ({"kind": "amount", "value": 1, "valid_from": "next week"}, "valid_from"),
        ({"kind": "amount", "value": 1, "valid_from": "2030-01-01T00:00:00"}, "zone"),
        (
            {
                "kind": "amount",
                "value": 1,
                "valid_from": "2030-01-02T00:00:00Z",
                "valid_until": "2030-01-01T00:00:00Z",
            },
            "after valid_from",
        ),
        ({"kind": "amount", "value": 1, "min_spend": -1}, "min_spend"),
        ({"kind": "amount", "value": 1, "max_redemptions": 0}, "max_redemptions"),
        ({"kind": "amount", "value": 1, "per_uid": "2"}, "per_uid"),
        ({"kind": "amount", "value": 1, "skus": ["s"] * (coupon.MAX_SKUS + 1)}, "skus"),
        ({"kind": "amount", "value": 1, "categories": ["c"] * 101}, "categories"),
        ({"kind": "amount", "value": 1, "channels": ["app"] * 33}, "channels"),
        ({"kind": "amount", "value": 1, "channels": ["a b"]}, "channels"),
        ({"kind": "amount", "value": 1, "skus": "abc"}, "skus"),
        ({"kind": "amount", "value": 1, "uid": "bad uid"}, "uid"),
        ({"kind": "amount", "value": 1, "code": "x" * 65}, "code"),
        ({"kind": "amount", "value": 1, "restore_on_refund": "yes"}, "restore_on_refund"),
    ],
)
def test_hostile_definitions_are_refused_and_change_nothing(
    local: httpx.Client, body: dict[str, Any], detail: str
) -> None:
    code, uid = new_id("BAD"), new_id("u")
    body = {"code": code, **body} if "code" not in body else body
    if "uid" not in body:
        body["uid"] = uid
    r = post(local, **body)
    assert (r.status_code, r.json()["code"]) == (422, "invalid_request"), r.text
    assert detail in r.json()["detail"], r.json()["detail"]
    assert local.get(f"/v1/coupons/{code}").status_code == 404
    assert listing(local, uid) == []


def test_bad_json_a_bad_path_and_no_channel_are_refused(local: httpx.Client) -> None:
    r = local.post("/v1/coupons", content=b"[1]", headers=write_headers())
    assert (r.status_code, r.json()["code"]) == (400, "invalid_request")
    r = local.post("/v1/coupons", json={"kind": "amount", "value": 1})
    assert (r.status_code, r.json()["code"]) == (400, "unknown_channel")
    assert local.get("/v1/coupons/bad%20code").status_code == 400
    r = local.get(f"/v1/users/{new_id('u')}/coupons?channel=" + "x" * 33)
    assert (r.status_code, r.json()["code"]) == (422, "invalid_request")


def test_a_users_coupons_with_usable_per_channel(local: httpx.Client) -> None:
    uid = new_id("u")
    now = time.time()
    codes = [new_id(name) for name in ("POS", "LATER", "GONE", "ALL")]
    post(local, code=codes[0], uid=uid, kind="amount", value=100, channels=["pos"])
    post(local, code=codes[1], uid=uid, kind="amount", value=100, valid_from=rfc3339(now + 3600))
    post(
        local,
        code=codes[2],
        uid=uid,
        kind="amount",
        value=100,
        valid_from=rfc3339(now - 7200),
        valid_until=rfc3339(now - 3600),
    )
    post(local, code=codes[3], uid=uid, kind="percent", value=5)
    post(local, code=codes[3], uid=uid, kind="percent", value=5)  # again: listed once
    post(local, code=new_id("OPEN"), kind="amount", value=100)  # nobody's: in no wallet
    post(local, code=new_id("THEIRS"), uid=new_id("u"), kind="amount", value=100)
    on_pos = listing(local, uid, "?channel=pos")
    assert [c["code"] for c in on_pos] == codes[::-1]  # newest first
    assert [c["usable"] for c in on_pos] == [True, False, False, True]
    assert all(c["uid"] == uid and c["version"] == 1 for c in on_pos)
    on_app = listing(local, uid, "?channel=app")
    assert [c["usable"] for c in on_app] == [True, False, False, False]
    # no ?channel=: the reading channel's X-Channel
    assert [c["usable"] for c in listing(local, uid, **{"X-Channel": "pos"})][-1] is True
    assert listing(local, new_id("u")) == []


def test_the_coupon_routes_are_documented(local: httpx.Client) -> None:
    doc = local.get("/openapi.json").json()
    create = doc["paths"]["/v1/coupons"]["post"]
    assert {"201", "409", "422"} <= set(create["responses"])
    assert "coupon_exists" in create["responses"]["409"]["description"]
    schemas = doc["components"]["schemas"]
    body = create["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    fields = schemas[body.rsplit("/", 1)[1]]["properties"]
    assert fields["skus"]["anyOf"][0]["maxItems"] == coupon.MAX_SKUS
    assert "404" in doc["paths"]["/v1/coupons/{code}"]["get"]["responses"]
    listed = doc["paths"]["/v1/users/{uid}/coupons"]["get"]
    assert [p["name"] for p in listed["parameters"]] == ["uid", "channel"]
    codes = schemas["Problem"]["properties"]["code"]["enum"]
    assert {"coupon_invalid", "coupon_exists"} <= set(codes)
