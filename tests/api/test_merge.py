"""Merge and undo: one user folded into another across identity, cart and points,
as a durable saga; the merged uid an alias every route honours; undo gives the
merged user back its identifiers, the cart it had and the points left."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import new_id, write_headers
from tests.inprocess import in_process_client


@pytest.fixture()
def local() -> Iterator[httpx.Client]:
    with in_process_client() as client:
        yield client


def user(local: httpx.Client, phone: str, lines: dict[str, int], points: int) -> str:
    r = local.post("/v1/identities/resolve", headers=write_headers("pos"),
                   json={"identifiers": [{"type": "phone", "value": phone}]})  # fmt: skip
    uid: str = r.json()["uid"]
    for sku, qty in lines.items():
        ok = local.post(f"/v1/carts/{uid}/lines", json={"sku": sku, "qty": qty},
                        headers=write_headers())  # fmt: skip
        assert ok.status_code == 200, ok.text
    earn = {"points": points, "reason": "r", "external_id": f"e-{uid}"}
    assert local.post(f"/v1/members/{uid}/points/earn", json=earn,
                      headers=write_headers("pos")).status_code == 200  # fmt: skip
    return uid


def test_merge_then_undo(local: httpx.Client) -> None:
    x, y = new_id("sku"), new_id("sku")
    for sku in (x, y):
        local.put(f"/v1/skus/{sku}/stock", json={"on_hand": 100}, headers=write_headers("pos"))
    a = user(local, "13800000001", {x: 2}, 100)
    b = user(local, "13800000002", {x: 3, y: 1}, 50)
    r = local.post(f"/v1/users/{a}/merge", json={"from_uid": b, "cart_rule": "sum"},
                   headers=write_headers())  # fmt: skip
    assert r.status_code == 200, r.text
    merge_id = r.json()["merge_id"]
    assert (r.json()["uid"], r.json()["from_uid"]) == (a, b)

    # b is an alias of a on every route
    cart = local.get(f"/v1/carts/{b}").json()
    assert (cart["uid"], cart["merged_from"]) == (a, [b])
    assert {ln["sku"]: ln["qty"] for ln in cart["lines"]} == {x: 5, y: 1}
    points = local.get(f"/v1/members/{b}").json()
    assert (points["uid"], points["points"]["balance"]) == (a, 150)
    resolved = local.post("/v1/identities/resolve", headers=write_headers(), json={
        "identifiers": [{"type": "phone", "value": "13800000002"}], "create": False})  # fmt: skip
    assert resolved.json()["uid"] == a
    ids = local.get(f"/v1/users/{a}/identities").json()
    assert len(ids["identifiers"]) == 2 and ids["merged_from"] == [b]
    added = local.post(f"/v1/carts/{b}/lines", json={"sku": y, "qty": 1}, headers=write_headers())
    assert added.json()["uid"] == a  # a write to the alias lands on the survivor
    again = local.post(f"/v1/users/{a}/merge", json={"from_uid": b}, headers=write_headers())
    assert (again.status_code, again.json()["code"]) == (409, "user_merged")
    history = local.get(f"/v1/users/{a}/identity-history").json()["events"]
    assert history[-1] | {"at": None} == {"at": None, "op": "merge", "identifier": None,
        "channel": "app", "other_uid": b, "merge_id": merge_id}  # fmt: skip

    undone = local.post(f"/v1/merges/{merge_id}/undo", headers=write_headers())
    assert (undone.status_code, undone.json()["status"]) == (200, "undone")
    cart_b = local.get(f"/v1/carts/{b}").json()
    assert cart_b["uid"] == b and {ln["sku"]: ln["qty"] for ln in cart_b["lines"]} == {x: 3, y: 1}
    assert local.get(f"/v1/members/{b}").json()["points"]["balance"] == 50
    assert local.get(f"/v1/members/{a}").json()["points"]["balance"] == 100
    back = local.post("/v1/identities/resolve", headers=write_headers(), json={
        "identifiers": [{"type": "phone", "value": "13800000002"}], "create": False})  # fmt: skip
    assert back.json()["uid"] == b
    assert len(local.get(f"/v1/users/{a}/identities").json()["identifiers"]) == 1
    # what happened after the merge stays with the survivor
    cart_a = local.get(f"/v1/carts/{a}").json()
    assert {ln["sku"]: ln["qty"] for ln in cart_a["lines"]} == {x: 5, y: 2}
    twice = local.post(f"/v1/merges/{merge_id}/undo", headers=write_headers())
    assert twice.status_code == 200  # undone already: nothing more happens


def test_bad_merges_are_refused(local: httpx.Client) -> None:
    a = user(local, "13800000011", {}, 1)
    same = local.post(f"/v1/users/{a}/merge", json={"from_uid": a}, headers=write_headers())
    assert (same.status_code, same.json()["code"]) == (422, "invalid_request")
    bad = local.post(f"/v1/users/{a}/merge", json={"from_uid": "x y"}, headers=write_headers())
    assert bad.status_code == 422
    rule = local.post(f"/v1/users/{a}/merge", json={"from_uid": "b", "cart_rule": "min"},
                      headers=write_headers())  # fmt: skip
    assert rule.status_code == 422
    unknown = local.post("/v1/merges/m-nope/undo", headers=write_headers())
    assert (unknown.status_code, unknown.json()["code"]) == (404, "not_found")


def test_max_rule_caps_lines(local: httpx.Client) -> None:
    x = new_id("sku")
    local.put(f"/v1/skus/{x}/stock", json={"on_hand": 100_000}, headers=write_headers("pos"))
    a = user(local, "13800000021", {x: 9_000}, 1)
    b = user(local, "13800000022", {x: 5_000}, 1)
    local.post(f"/v1/users/{a}/merge", json={"from_uid": b, "cart_rule": "max"},
               headers=write_headers())  # fmt: skip
    assert local.get(f"/v1/carts/{a}").json()["lines"][0]["qty"] == 9_000
    c = user(local, "13800000023", {x: 5_000}, 1)
    local.post(f"/v1/users/{a}/merge", json={"from_uid": c}, headers=write_headers())
    assert local.get(f"/v1/carts/{a}").json()["lines"][0]["qty"] == 9_999  # capped
    _: Any = None
