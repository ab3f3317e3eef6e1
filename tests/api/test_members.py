"""Members on a real grid: points across channels at once, no overdraw under
concurrency, member events on the user's stream, expiry across a restart."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import msgspec
import pytest

from omnigrid.actors import tiers
from omnigrid.persistence.events import rfc3339
from tests.api.test_live import Stream
from tests.conftest import CHANNELS, Grid, new_id, write_headers
from tests.inprocess import in_process_client


def earn(client: httpx.Client, uid: str, points: int, xid: str, **extra: Any) -> httpx.Response:
    body = {"points": points, "reason": "purchase", "external_id": xid, **extra}
    return client.post(f"/v1/members/{uid}/points/earn", json=body, headers=write_headers("pos"))


def test_points_earned_at_the_till_are_spendable_in_the_app_at_once(client: httpx.Client) -> None:
    uid = new_id("m")
    assert earn(client, uid, 120, "till-1").json()["points"]["balance"] == 120
    body = {"points": 100, "reason": "coupon", "external_id": "app-1"}
    r = client.post(f"/v1/members/{uid}/points/redeem", json=body, headers=write_headers("app"))
    assert (r.status_code, r.json()["points"]["balance"]) == (200, 20)
    assert r.headers["etag"] == '"2"'
    ledger = client.get(f"/v1/members/{uid}/points/ledger").json()["entries"]
    assert [(e["kind"], e["channel"], e["points"]) for e in ledger] == [
        ("redeem", "app", -100),
        ("earn", "pos", 120),
    ]


def test_a_hundred_concurrent_redemptions_never_overdraw(grid: Grid) -> None:
    uid = new_id("m")

    async def scenario() -> list[int]:
        async with httpx.AsyncClient(base_url=grid.url, timeout=30) as c:
            r = await c.post(f"/v1/members/{uid}/points/earn", headers=write_headers("pos"),
                             json={"points": 50, "reason": "r", "external_id": "e"})  # fmt: skip
            assert r.status_code == 200

            async def redeem(i: int) -> int:
                body = {"points": 1, "reason": "r", "external_id": f"v{i}"}
                headers = write_headers(CHANNELS[i % len(CHANNELS)])
                answer = await c.post(
                    f"/v1/members/{uid}/points/redeem", json=body, headers=headers
                )
                return answer.status_code

            return await asyncio.gather(*(redeem(i) for i in range(100)))

    statuses = asyncio.run(scenario())
    assert sorted(statuses) == [200] * 50 + [409] * 50
    view = httpx.get(f"{grid.url}/v1/members/{uid}").json()
    assert view["points"]["balance"] == 0 and view["version"] == 51


def test_member_and_cart_changes_share_the_users_stream_and_resume(
    grid: Grid, client: httpx.Client
) -> None:
    uid, sku = new_id("m"), new_id("sku")
    client.put(f"/v1/skus/{sku}/stock", json={"on_hand": 5}, headers=write_headers("pos"))
    stream = Stream(f"{grid.url}/v1/streams/users/{uid}")
    try:
        client.post(f"/v1/carts/{uid}/lines", json={"sku": sku, "qty": 1}, headers=write_headers())
        earn(client, uid, 10, "o1")
        first, second = stream.next(), stream.next()
        assert (first["event"], first["id"]) == ("cart", "cart:1")
        assert (second["event"], second["id"]) == ("member", "cart:1,member:1")
        assert second["data"]["points"]["balance"] == 10
    finally:
        stream.close()
    earn(client, uid, 5, "o2")  # while nobody listens
    client.delete(f"/v1/carts/{uid}", headers=write_headers())
    resumed = Stream(f"{grid.url}/v1/streams/users/{uid}", last_event_id=second["id"])
    try:
        missed = sorted(
            (e["event"], e["data"]["version"]) for e in (resumed.next(), resumed.next())
        )
        assert missed == [("cart", 2), ("member", 2)]
        assert resumed.nothing_more()
    finally:
        resumed.close()


def test_bad_member_requests_are_refused(client: httpx.Client) -> None:
    uid = new_id("m")
    assert earn(client, uid, 0, "x").status_code == 422
    assert earn(client, uid, 1, "x", expires_at="soon").status_code == 422
    r = client.post(f"/v1/members/{uid}/points/earn", json={"points": 1, "reason": "r",
                    "external_id": "x"})  # fmt: skip
    assert (r.status_code, r.json()["code"]) == (400, "unknown_channel")
    for query in ("limit=0", "limit=abc", "cursor=-1", "limit=501"):
        r = client.get(f"/v1/members/{uid}/points/ledger?{query}")
        assert (r.status_code, r.json()["code"]) == (422, "invalid_request"), query
    bad_uid = client.post("/v1/members/bad%20uid/points/earn", json={}, headers=write_headers())
    assert bad_uid.status_code == 400
    assert client.get(f"/v1/members/{uid}").json()["version"] == 0


def test_points_expire_by_themselves_across_a_restart() -> None:
    g = Grid()
    try:
        uid = new_id("m")
        with httpx.Client(base_url=g.url, timeout=10) as c:
            expires = rfc3339(time.time() + 6)
            assert earn(c, uid, 7, "soon", expires_at=expires).status_code == 200
            assert earn(c, uid, 3, "later").status_code == 200
        g.kill()  # SIGKILL: the journal alone has the points
        g.start()
        # Nothing asks for the member: the stream (resumed after the two earns) shows
        # the expiry that the recovered timer did by itself.
        stream = Stream(f"{g.url}/v1/streams/users/{uid}", last_event_id="member:2")
        try:
            event = stream.next(timeout=20)
        finally:
            stream.close()
        assert (event["event"], event["data"]["op"]) == ("member", "member.expire")
        assert event["data"]["points"]["balance"] == 3
        with httpx.Client(base_url=g.url, timeout=10) as c:
            kinds = [e["kind"] for e in c.get(f"/v1/members/{uid}/points/ledger").json()["entries"]]
            assert kinds == ["expire", "earn", "earn"]
    finally:
        g.stop()


def test_the_tier_table_is_served_and_configurable() -> None:
    with in_process_client() as local:
        table = local.get("/v1/tiers").json()
    assert [(t["tier"], t["min_spend_12m"], t["points_per_unit"]) for t in table] == [
        ("member", 0, 1.0),
        ("silver", 100_000, 1.0),
        ("gold", 500_000, 1.5),
        ("platinum", 2_000_000, 2.0),
    ]
    custom = tiers.tiers_from_json(
        '[{"tier": "basic", "min_spend_12m": 0, "discount_pct": 0, "points_per_unit": 1},'
        ' {"tier": "vip", "min_spend_12m": 5000, "discount_pct": 10, "points_per_unit": 3,'
        '  "channels": {"pos": {"discount_pct": 12}}}]'
    )
    try:
        tiers.configure(custom)
        with in_process_client() as local:
            assert [t["tier"] for t in local.get("/v1/tiers").json()] == ["basic", "vip"]
            assert local.get("/v1/members/someone").json()["tier"] == "basic"
    finally:
        tiers.configure(tiers.DEFAULT_TIERS)
    for bad in ('[{"tier": "x", "min_spend_12m": 10, "discount_pct": 0, "points_per_unit": 1}]',
                '[{"tier": "x"}]', "[]"):  # fmt: skip
        with pytest.raises((ValueError, msgspec.ValidationError)):
            tiers.configure(tiers.tiers_from_json(bad))
