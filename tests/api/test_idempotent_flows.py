"""Idempotency-Key and If-Match on the writes that are flows over many entities.

On a real grid: a resolve, a merge, an offline sync batch and a behaviour batch
sent again with the same Idempotency-Key answer what they answered first and
apply nothing twice; the same key with another body is 422
``idempotency_key_reused`` and changes nothing. A bind with a stale If-Match is
412 and binds nothing. The keys of a resolve and a merge outlive a restart.
"""

from __future__ import annotations

from typing import Any

import httpx

from tests.conftest import Grid, new_id, write_headers

RESOLVE = "/v1/identities/resolve"
# A batch (POST /v1/sync, POST /v1/events) touches no entity of its own: its key's
# first answer is kept in the store (persistence/request_keys.py).


def keyed(key: str, channel: str = "app", **extra: str) -> dict[str, str]:
    return write_headers(channel, **{"Idempotency-Key": key}, **extra)


def device(value: str | None = None) -> dict[str, Any]:
    return {"type": "device_id", "value": value or new_id("dev")}


def owner(client: httpx.Client, ident: dict[str, Any]) -> str | None:
    """The uid an identifier is bound to, or None."""
    r = client.post(RESOLVE, json={"identifiers": [ident], "create": False},
                    headers=write_headers())  # fmt: skip
    return r.json()["uid"] if r.status_code == 200 else None


def reused(r: httpx.Response) -> bool:
    return (r.status_code, r.json().get("code")) == (422, "idempotency_key_reused")


def new_user(client: httpx.Client, ident: dict[str, Any] | None = None) -> str:
    body = {"identifiers": [ident or device()]}
    r = client.post(RESOLVE, json=body, headers=write_headers())
    assert r.status_code == 200, r.text
    uid: str = r.json()["uid"]
    return uid


def test_a_resolve_sent_again_with_its_key_answers_the_first_result(client: httpx.Client) -> None:
    key, dev = new_id("k"), device()
    first = client.post(RESOLVE, json={"identifiers": [dev]}, headers=keyed(key))
    assert first.status_code == 200, first.text
    assert first.json()["created"] is True and len(first.json()["bound"]) == 1
    again = client.post(RESOLVE, json={"identifiers": [dev]}, headers=keyed(key))
    assert (again.status_code, again.json()) == (200, first.json())
    uid = first.json()["uid"]
    history = client.get(f"/v1/users/{uid}/identity-history").json()["events"]
    assert [e["op"] for e in history] == ["resolve_create"]
    # the same key for another device: refused, no user made, the device bound to none
    other = device()
    assert reused(client.post(RESOLVE, json={"identifiers": [other]}, headers=keyed(key)))
    assert owner(client, other) is None
    assert client.get(f"/v1/users/{uid}/identity-history").json()["events"] == history
    # the same key on another channel is another request
    elsewhere = client.post(RESOLVE, json={"identifiers": [other]}, headers=keyed(key, "pos"))
    assert elsewhere.status_code == 200 and elsewhere.json()["created"] is True


def test_a_keyed_resolve_that_binds_to_a_known_user_answers_the_first_result(
    client: httpx.Client,
) -> None:
    dev, key = device(), new_id("k")
    uid = new_user(client, dev)
    extra = device()
    first = client.post(RESOLVE, json={"identifiers": [dev, extra]}, headers=keyed(key))
    assert first.status_code == 200, first.text
    assert (first.json()["uid"], first.json()["created"]) == (uid, False)
    assert len(first.json()["bound"]) == 1
    # every one is bound now (a known shopper): the retry still answers the first answer
    again = client.post(RESOLVE, json={"identifiers": [dev, extra]}, headers=keyed(key))
    assert (again.status_code, again.json()) == (200, first.json())
    third = device()
    assert reused(client.post(RESOLVE, json={"identifiers": [dev, third]}, headers=keyed(key)))
    assert owner(client, third) is None
    assert len(client.get(f"/v1/users/{uid}/identities").json()["identifiers"]) == 2


def test_a_merge_sent_again_with_its_key_answers_the_first_result(client: httpx.Client) -> None:
    a, b, c = new_user(client), new_user(client), new_user(client)
    sku = new_id("sku")
    client.put(f"/v1/skus/{sku}/stock", json={"on_hand": 100}, headers=write_headers("pos"))
    for uid, qty in ((a, 1), (b, 2), (c, 4)):
        r = client.post(f"/v1/carts/{uid}/lines", json={"sku": sku, "qty": qty},
                        headers=write_headers())  # fmt: skip
        assert r.status_code == 200, r.text
    key = new_id("k")
    first = client.post(f"/v1/users/{a}/merge", json={"from_uid": b}, headers=keyed(key))
    assert first.status_code == 200, first.text
    again = client.post(f"/v1/users/{a}/merge", json={"from_uid": b}, headers=keyed(key))
    assert (again.status_code, again.json()) == (200, first.json())
    cart = client.get(f"/v1/carts/{a}").json()
    assert [(ln["sku"], ln["qty"]) for ln in cart["lines"]] == [(sku, 3)]
    # the same key, another user to fold in: refused, nothing merged
    assert reused(client.post(f"/v1/users/{a}/merge", json={"from_uid": c}, headers=keyed(key)))
    assert reused(
        client.post(
            f"/v1/users/{a}/merge", json={"from_uid": b, "cart_rule": "max"}, headers=keyed(key)
        )
    )
    assert client.get(f"/v1/users/{c}/identities").json()["merged_into"] is None
    assert [ln["qty"] for ln in client.get(f"/v1/carts/{c}").json()["lines"]] == [4]
    assert [ln["qty"] for ln in client.get(f"/v1/carts/{a}").json()["lines"]] == [3]
    merges = [
        e
        for e in client.get(f"/v1/users/{a}/identity-history").json()["events"]
        if e["op"] == "merge"
    ]
    assert [e["other_uid"] for e in merges] == [b]


def test_a_bind_with_a_stale_if_match_binds_nothing(client: httpx.Client) -> None:
    uid = new_user(client)
    version = client.get(f"/v1/users/{uid}/identities").json()["version"]
    dev = device()
    stale = client.post(f"/v1/users/{uid}/identities", json=dev,
                        headers=write_headers(**{"If-Match": str(version - 1)}))  # fmt: skip
    assert (stale.status_code, stale.json()["code"]) == (412, "version_conflict")
    assert owner(client, dev) is None
    view = client.get(f"/v1/users/{uid}/identities").json()
    assert (view["version"], len(view["identifiers"])) == (version, 1)
    fresh = client.post(f"/v1/users/{uid}/identities", json=dev,
                        headers=write_headers(**{"If-Match": f'"{version}"'}))  # fmt: skip
    assert fresh.status_code == 200, fresh.text
    assert owner(client, dev) == uid
    # a retry with its key answers the first answer, though the version moved on
    key = new_id("k")
    other = device()
    headers = keyed(key, **{"If-Match": str(version + 1)})
    bound = client.post(f"/v1/users/{uid}/identities", json=other, headers=headers)
    assert bound.status_code == 200, bound.text
    again = client.post(f"/v1/users/{uid}/identities", json=other, headers=headers)
    assert (again.status_code, again.json()) == (200, bound.json())
    third = device()
    assert reused(client.post(f"/v1/users/{uid}/identities", json=third, headers=headers))
    assert owner(client, third) is None


def test_a_sync_batch_sent_again_with_its_key_answers_the_first_result(
    client: httpx.Client,
) -> None:
    uid, sku, key = new_id("u"), new_id("sku"), new_id("k")
    client.put(f"/v1/skus/{sku}/stock", json={"on_hand": 100}, headers=write_headers("pos"))
    ops = [{"op_id": "1", "op": "cart.add", "uid": uid, "sku": sku, "qty": 2}]
    body = {"client_id": new_id("c"), "ops": ops}
    first = client.post("/v1/sync", json=body, headers=keyed(key))
    assert first.status_code == 200, first.text
    assert [r["status"] for r in first.json()["results"]] == ["applied"]
    again = client.post("/v1/sync", json=body, headers=keyed(key))
    assert (again.status_code, again.json()) == (200, first.json())
    other = {**body, "ops": [{**ops[0], "op_id": "2", "qty": 5}]}
    assert reused(client.post("/v1/sync", json=other, headers=keyed(key)))
    cart = client.get(f"/v1/carts/{uid}").json()
    assert ([(ln["sku"], ln["qty"]) for ln in cart["lines"]], cart["version"]) == ([(sku, 2)], 1)


def test_a_behaviour_batch_sent_again_with_its_key_is_kept_once(client: httpx.Client) -> None:
    uid, key = new_id("u"), new_id("k")
    body = {"uid": uid, "events": [{"type": "view", "sku": new_id("sku")}]}
    first = client.post("/v1/events", json=body, headers=keyed(key))
    assert first.status_code == 202, first.text
    again = client.post("/v1/events", json=body, headers=keyed(key))
    assert (again.status_code, again.json()) == (202, first.json())
    other = {"uid": uid, "events": [{"type": "search", "query": "tea"}]}
    assert reused(client.post("/v1/events", json=other, headers=keyed(key)))
    items = client.get(f"/v1/users/{uid}/timeline").json()["items"]
    assert [i["type"] for i in items] == ["view"]


def test_the_keys_of_a_resolve_and_a_merge_outlive_a_restart() -> None:
    g = Grid()
    try:
        with httpx.Client(base_url=g.url, timeout=10) as c:
            key, dev = new_id("k"), device()
            resolved = c.post(RESOLVE, json={"identifiers": [dev]}, headers=keyed(key))
            a, b = new_user(c), new_user(c)
            merged = c.post(f"/v1/users/{a}/merge", json={"from_uid": b}, headers=keyed(key))
            assert (resolved.status_code, merged.status_code) == (200, 200)
        g.kill()  # no time to store anything: the journal has it
        g.start()
        with httpx.Client(base_url=g.url, timeout=10) as c:
            again = c.post(RESOLVE, json={"identifiers": [dev]}, headers=keyed(key))
            assert (again.status_code, again.json()) == (200, resolved.json())
            assert reused(c.post(RESOLVE, json={"identifiers": [device()]}, headers=keyed(key)))
            again = c.post(f"/v1/users/{a}/merge", json={"from_uid": b}, headers=keyed(key))
            assert (again.status_code, again.json()) == (200, merged.json())
    finally:
        g.stop()
