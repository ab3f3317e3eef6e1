"""Identity: one shopper across every channel's identifiers.

In-process (no Ray): normal forms, masks, blocked and malformed values, limits,
conflicts, bind and unbind, history. On a real grid: 64 concurrent resolves of
one new phone from eight channels make one uid, and no phone or ID number is
anywhere in clear in the data directory afterwards.
"""

from __future__ import annotations

import asyncio
import pathlib
import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import psycopg
import pytest
import redis

from omnigrid.actors import identifier, identifiers
from omnigrid.actors.protocol import Command
from tests.api.test_live import Stream
from tests.api.test_persistence import redis_postgres_grid
from tests.api.test_webhooks import Receiver, register
from tests.conftest import CHANNELS, REDIS_URL, Grid, PostgresDatabase, new_id, write_headers
from tests.inprocess import SyncASGITransport, in_process_app, in_process_client

PHONE = "13812341234"
ID_NUMBER = "11010519491231002X"


@pytest.fixture()
def local() -> Iterator[httpx.Client]:
    with in_process_client() as client:
        yield client


def resolve(client: httpx.Client, *identifiers: dict[str, Any], channel: str = "pos",
            **extra: Any) -> httpx.Response:  # fmt: skip
    body = {"identifiers": list(identifiers), **extra}
    return client.post("/v1/identities/resolve", json=body, headers=write_headers(channel))


def phone(value: str = PHONE) -> dict[str, Any]:
    return {"type": "phone", "value": value}


def test_four_channels_identifiers_resolve_to_one_uid(either: httpx.Client) -> None:
    local = either
    first = resolve(local, phone(), channel="pos").json()
    assert first["created"] is True and first["conflicts"] == []
    assert first["bound"] == [{"type": "phone", "value": "+86 138****1234", "app_id": None}]
    uid = first["uid"]
    openid = {"type": "wechat_openid", "value": "oX9a-1", "app_id": "wx42"}
    alipay = {"type": "alipay_uid", "value": "2088123412341234"}
    card = {"type": "member_card", "value": "MC-0042"}
    for channel, ident in (("miniprogram", openid), ("alipay", alipay), ("kiosk", card)):
        r = resolve(local, phone("+86 138 1234 1234"), ident, channel=channel).json()
        assert (r["uid"], r["created"]) == (uid, False)
    for ident in (openid, alipay, card):  # each alone now finds the same user
        assert resolve(local, ident, create=False).json()["uid"] == uid
    view = local.get(f"/v1/users/{uid}/identities").json()
    assert [i["type"] for i in view["identifiers"]] == [
        "phone",
        "wechat_openid",
        "alipay_uid",
        "member_card",
    ]
    assert view["identifiers"][0]["value"] == "+86 138****1234"
    ops = [e["op"] for e in local.get(f"/v1/users/{uid}/identity-history").json()["events"]]
    assert ops == ["resolve_create", "bind", "bind", "bind"]


def test_an_unknown_identifier_without_create_is_404_and_creates_nothing(
    local: httpx.Client,
) -> None:
    r = resolve(local, phone("13900001111"), create=False)
    assert (r.status_code, r.json()["code"]) == (404, "not_found")
    assert resolve(local, phone("13900001111")).json()["created"] is True


def test_identifiers_of_two_users_are_a_conflict_and_bind_nothing(local: httpx.Client) -> None:
    a = resolve(local, phone("13700000001")).json()["uid"]
    b = resolve(local, phone("13700000002")).json()["uid"]
    email = {"type": "email", "value": "Shopper@Example.com"}
    r = resolve(local, phone("13700000001"), phone("13700000002"), email)
    assert (r.status_code, r.json()["code"]) == (409, "identity_conflict")
    assert sorted(r.json()["uids"]) == sorted([a, b])
    assert resolve(local, email, create=False).status_code == 404  # not bound to anyone
    bind = local.post(f"/v1/users/{a}/identities", json=phone("13700000002"),
                      headers=write_headers())  # fmt: skip
    assert (bind.status_code, bind.json()["uids"]) == (409, [a, b])


def test_limits_per_type(local: httpx.Client) -> None:
    uid = resolve(local, phone("13600000001")).json()["uid"]
    r = local.post(f"/v1/users/{uid}/identities", json=phone("13600000002"),
                   headers=write_headers())  # fmt: skip
    assert (r.status_code, r.json()["code"]) == (409, "identity_limit")
    # refused: the second phone is bound to nobody
    assert resolve(local, phone("13600000002"), create=False).status_code == 404
    for i in range(10):
        device = {"type": "device_id", "value": f"dev-{i}"}
        ok = local.post(f"/v1/users/{uid}/identities", json=device, headers=write_headers())
        assert ok.status_code == 200
    eleventh = {"type": "device_id", "value": "dev-10"}
    r = local.post(f"/v1/users/{uid}/identities", json=eleventh, headers=write_headers())
    assert (r.status_code, r.json()["code"]) == (409, "identity_limit")


def test_unbind_frees_the_identifier(local: httpx.Client) -> None:
    email = {"type": "email", "value": "a.b@example.com"}
    uid = resolve(local, email).json()["uid"]
    assert local.get(f"/v1/users/{uid}/identities").json()["identifiers"][0]["value"] == (
        "a***@example.com"
    )
    r = local.delete(f"/v1/users/{uid}/identities/email/A.B@example.com", headers=write_headers())
    assert (r.status_code, r.json()["identifiers"]) == (200, [])
    other = resolve(local, email).json()
    assert other["created"] is True and other["uid"] != uid
    ops = [e["op"] for e in local.get(f"/v1/users/{uid}/identity-history").json()["events"]]
    assert ops == ["resolve_create", "unbind"]


@pytest.mark.parametrize(
    ("ident", "status", "code"),
    [
        ({"type": "phone", "value": ""}, 422, "blocked_identifier"),
        ({"type": "phone", "value": "null"}, 422, "blocked_identifier"),
        ({"type": "phone", "value": "00000000000"}, 422, "blocked_identifier"),
        ({"type": "device_id", "value": "undefined"}, 422, "blocked_identifier"),
        ({"type": "member_card", "value": "Anonymous"}, 422, "blocked_identifier"),
        ({"type": "phone", "value": "12345"}, 422, "invalid_request"),
        ({"type": "id_number", "value": "110105194912310021"}, 422, "invalid_request"),
        ({"type": "alipay_uid", "value": "1088123412341234"}, 422, "invalid_request"),
        ({"type": "wechat_openid", "value": "oX9a"}, 422, "invalid_request"),
        ({"type": "email", "value": "not-an-email"}, 422, "invalid_request"),
        ({"type": "passport", "value": "E1234"}, 422, "invalid_request"),
        ({"type": "phone", "value": 13812341234}, 422, "invalid_request"),
        ({"type": "phone"}, 422, "invalid_request"),
    ],
)
def test_blocked_and_malformed_identifiers_are_refused_and_change_nothing(
    local: httpx.Client, ident: dict[str, Any], status: int, code: str
) -> None:
    r = resolve(local, ident)
    assert (r.status_code, r.json()["code"]) == (status, code), r.text
    assert PHONE not in r.text and "110105" not in r.text  # a refusal never echoes a value
    assert resolve(local, {"type": "member_card", "value": "probe-" + code}).json()["created"]


def test_a_bad_resolve_body_is_refused(local: httpx.Client) -> None:
    assert resolve(local).status_code == 422  # no identifiers
    too_many = [{"type": "device_id", "value": f"d{i}"} for i in range(11)]
    assert resolve(local, *too_many).status_code == 422
    r = local.post("/v1/identities/resolve", json={"identifiers": [phone()]})
    assert (r.status_code, r.json()["code"]) == (400, "unknown_channel")


# -- on a real grid ----------------------------------------------------------------


def test_sixty_four_concurrent_resolves_of_one_new_phone_make_one_uid(grid: Grid) -> None:
    number = "139" + new_id("")[-8:].translate(str.maketrans("abcdef", "123456"))

    async def scenario() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=grid.url, timeout=30) as c:
            return await asyncio.gather(
                *(
                    c.post(
                        "/v1/identities/resolve",
                        headers=write_headers(CHANNELS[i % 8]),
                        json={"identifiers": [phone(number)]},
                    )
                    for i in range(64)
                )
            )

    answers = asyncio.run(scenario())
    assert {r.status_code for r in answers} == {200}
    assert len({r.json()["uid"] for r in answers}) == 1
    assert sum(r.json()["created"] for r in answers) == 1
    uid = answers[0].json()["uid"]
    view = httpx.get(f"{grid.url}/v1/users/{uid}/identities").json()
    assert len(view["identifiers"]) == 1


def test_no_phone_or_id_number_in_clear_in_the_data_directory(grid: Grid) -> None:
    with httpx.Client(base_url=grid.url, timeout=10) as c:
        number, id_number = "13512345678", "11010519491231002X"
        body = {"identifiers": [phone(number), {"type": "id_number", "value": id_number}]}
        r = c.post("/v1/identities/resolve", json=body, headers=write_headers())
        assert r.status_code == 200, r.text
        audit = c.post("/v1/cluster/audit").json()  # everything is stored
        # (on this shared grid, other tests' entities are audited too: seen once in CI,
        # two of them mismatched; the identities written here must not be)
        mismatched = [k for shard in audit["shards"] for k in shard.get("examples", [])]
        assert audit["complete"] and not [k for k in mismatched if k.startswith("ident")], audit
    for path in pathlib.Path(grid.data_dir).rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for clear in (number, "+86" + number, id_number, id_number[:-1]):
                assert clear.encode() not in data, (path, clear)


def test_no_phone_or_id_number_in_clear_in_redis_or_postgresql(
    postgres: PostgresDatabase, namespace: str
) -> None:
    """The journal (a Redis stream), the hot copy and every table of the store."""
    grid = redis_postgres_grid(postgres.dsn, namespace)
    number, id_number = "13612345678", "11010519491231002X"
    receiver = Receiver()
    clear = [number, "+86" + number, id_number, id_number[:-1], "x@y.org"]
    try:
        with httpx.Client(base_url=grid.url, timeout=10) as c:
            register(c, receiver.url, ["identity", "member", "cart"])
            uid = new_id("u")
            stream = Stream(f"{grid.url}/v1/streams/users/{uid}")
            c.post(f"/v1/users/{uid}/identities", json={"type": "email", "value": "x@y.org"},
                   headers=write_headers())  # fmt: skip
            body = {"identifiers": [phone(number), {"type": "id_number", "value": id_number}]}
            r = c.post(f"/v1/users/{uid}/identities", json=body["identifiers"][0],
                       headers=write_headers())  # fmt: skip
            assert r.status_code == 200, r.text
            r = c.post("/v1/identities/resolve", json=body, headers=write_headers())
            assert (r.status_code, r.json()["uid"]) == (200, uid), r.text
            earn = {"points": 5, "reason": "visit", "external_id": new_id("e")}
            c.post(f"/v1/members/{uid}/points/earn", json=earn, headers=write_headers())
            c.put("/v1/skus/s-pii/stock", json={"on_hand": 5}, headers=write_headers())
            c.post(f"/v1/carts/{uid}/lines", json={"sku": "s-pii", "qty": 1},
                   headers=write_headers())  # fmt: skip
            # what every channel gets pushed: the stream's events and the webhook bodies
            streamed = [stream.next() for _ in range(2)]
            stream.close()
            delivered = receiver.wait_for(4)
            pushed = [orjson.dumps(e).decode() for e in streamed]
            pushed += [b.decode() for _, b in delivered]
            assert any('"identity"' in text for text in pushed)  # the identity events came
            for text in pushed:
                for value in clear:
                    assert value not in text, (value, text)
            assert c.post("/v1/cluster/audit").json()["mismatched"] == 0
        time.sleep(1.0)  # the hot copy follows the store
        store: Any = redis.Redis.from_url(REDIS_URL)  # bytes in, bytes out
        seen = 0
        for key in store.scan_iter(f"og:{namespace}:*"):
            kind = store.type(key).decode()
            if kind == "string":
                values = [store.get(key) or b""]
            elif kind == "hash":
                values = [k + v for k, v in store.hgetall(key).items()]
            elif kind == "stream":
                values = [b"".join(k + v for k, v in f.items()) for _, f in store.xrange(key)]
            else:
                values = [repr(store.dump(key)).encode()]
            for value in [key, *values]:
                seen += 1
                for text in clear:
                    assert text.encode() not in value, (key, text)
        assert seen > 0
        with psycopg.connect(postgres.dsn) as db:
            tables = [row[0] for row in db.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]  # fmt: skip
            for table in tables:
                for (row,) in db.execute(f"SELECT row_to_json(t)::text FROM {table} t"):
                    for text in clear:
                        assert text not in row, (table, text)
    finally:
        receiver.stop()
        grid.stop()


def test_merge_suggestions_come_from_shared_devices_addresses_and_payments(
    local: httpx.Client,
) -> None:
    a, b, c, d = (new_id("u") for _ in range(4))
    address = "88 Nanjing Road, Huangpu, Shanghai"

    def seen(uid: str, **properties: str) -> None:
        body = {"uid": uid, "events": [{"type": "view", "properties": properties}]}
        r = local.post("/v1/events", json=body, headers=write_headers("app"))
        assert r.status_code == 202, r.text

    seen(a, device_id="dev-1", address=address, payment="6222020000001234")
    seen(b, device_id="dev-1")
    seen(c, address=address.upper(), payment="6222020000001234")  # the same, written otherwise
    seen(d, device_id="dev-2")
    found = local.get(f"/v1/users/{a}/merge-suggestions").json()["suggestions"]
    assert [(s["uid"], s["score"]) for s in found] == [(c, 0.82), (b, 0.5)]
    kinds = {e["kind"]: e["value"] for e in found[0]["evidence"]}
    assert kinds == {"address": "88 nan***", "payment": "****1234"}
    assert address not in local.get(f"/v1/users/{a}/merge-suggestions").text
    assert local.get(f"/v1/users/{d}/merge-suggestions").json() == {"suggestions": []}
    # never merged by itself
    assert local.get(f"/v1/users/{a}/identities").json()["merged_into"] is None


@pytest.mark.parametrize(
    "properties", [{"phone": "13812341234"}, {"address": ""}, {"device_id": 7}, ["dev-1"]]
)
def test_bad_properties_refuse_the_batch(local: httpx.Client, properties: Any) -> None:
    uid = new_id("u")
    body = {"uid": uid, "events": [{"type": "view", "properties": properties}]}
    r = local.post("/v1/events", json=body, headers=write_headers("app"))
    assert (r.status_code, r.json()["code"]) == (422, "invalid_request")
    assert "13812341234" not in r.text
    assert local.get(f"/v1/users/{uid}/timeline").json()["items"] == []


def test_a_binding_the_user_never_recorded_is_recorded_by_the_next_resolve() -> None:
    """A process that died between the directory's claim and the user's record
    leaves the directory ahead; the next resolve takes the long way and repairs it."""
    app = in_process_app()
    with httpx.Client(transport=SyncASGITransport(app), base_url="http://grid") as local:
        ident = identifiers.parse("phone", "13900000077")
        args = {"uid": "u-lost", "type": "phone", "shown": ident.shown}
        claim = Command("identifier.claim", identifier.KIND.key(ident.digest), args, "pos")
        assert asyncio.run(app.grid.call(claim)).ok  # ... and the process dies here
        assert local.get("/v1/users/u-lost/identities").json()["identifiers"] == []
        r = resolve(local, phone("13900000077"), create=False)
        assert (r.json()["uid"], r.json()["created"]) == ("u-lost", False)
        listed = local.get("/v1/users/u-lost/identities").json()["identifiers"]
        assert [i["value"] for i in listed] == ["+86 139****0077"]
