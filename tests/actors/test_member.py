"""The member kind on one shard with a hand-moved clock: the ledger, lots, expiry,
tiers, and that a journal replay rebuilds exactly the same member."""

from __future__ import annotations

from typing import Any

from omnigrid.actors import member
from omnigrid.actors.protocol import Command
from omnigrid.actors.shard import Shard
from omnigrid.actors.slots import SlotMap
from omnigrid.persistence.events import rfc3339
from tests.actors.test_shard import T0, Grid

DAY = 24 * 3600.0


def view(g: Grid, uid: str = "u") -> dict[str, Any]:
    body: dict[str, Any] = g.ok("member.get", "member:" + uid).body
    return body


def earn(g: Grid, points: int, xid: str, **kw: Any) -> Any:
    return g.run("member.earn", "member:u", channel="pos", points=points, reason="purchase",
                 external_id=xid, **kw)  # fmt: skip


def redeem(g: Grid, points: int, xid: str) -> Any:
    return g.run("member.redeem", "member:u", points=points, reason="voucher", external_id=xid)


def test_a_member_never_seen_is_empty_at_the_lowest_tier() -> None:
    g = Grid()
    v = view(g, "nobody")
    assert (v["points"], v["tier"], v["version"]) == ({"balance": 0, "expiring": []}, "member", 0)
    assert v["next_tier"] == {"tier": "silver", "spend_needed": 100_000}
    assert "member:nobody" not in g.shard.entities  # a read keeps nothing


def test_earn_and_redeem_apply_each_external_id_once() -> None:
    g = Grid()
    assert earn(g, 100, "o1").body["points"]["balance"] == 100
    again = earn(g, 100, "o1")
    assert (again.body["points"]["balance"], again.body["version"]) == (100, 1)
    assert redeem(g, 30, "v1").body["points"]["balance"] == 70
    assert redeem(g, 30, "v1").body["points"]["balance"] == 70
    # the same id for an earn and a redeem are two entries, not one
    assert redeem(g, 10, "o1").body["points"]["balance"] == 60


def test_a_redemption_over_the_balance_is_refused_and_changes_nothing() -> None:
    g = Grid()
    earn(g, 10, "o1")
    refused = redeem(g, 11, "v1")
    assert (refused.status, refused.code) == (409, "insufficient_points")
    assert view(g)["points"]["balance"] == 10 and view(g)["version"] == 1
    assert redeem(g, 10, "v1").ok  # the refused id was not used up


def test_redemption_takes_the_soonest_expiring_points_and_the_rest_expire_by_themselves() -> None:
    g = Grid()
    earn(g, 50, "late", expires_at=rfc3339(T0 + 30 * DAY))
    earn(g, 20, "soon", expires_at=rfc3339(T0 + 10 * DAY))
    assert view(g)["points"]["expiring"][0] == {"points": 20, "at": rfc3339(T0 + 10 * DAY)}
    redeem(g, 15, "v1")  # 15 of the 20 that expire first
    g.clock.now = T0 + 10 * DAY
    assert g.shard.tick() == 1  # nobody asked: the 5 left expire by themselves
    v = view(g)
    assert v["points"] == {
        "balance": 50,
        "expiring": [{"points": 50, "at": rfc3339(T0 + 30 * DAY)}],
    }
    ledger = g.ok("member.ledger", "member:u", limit=10).body["entries"]
    assert [(e["kind"], e["points"]) for e in ledger] == [
        ("expire", -5),
        ("redeem", -15),
        ("earn", 20),
        ("earn", 50),
    ]


def test_points_earned_already_expired_are_in_the_ledger_and_not_the_balance() -> None:
    g = Grid()
    earn(g, 10, "old", expires_at=rfc3339(T0 - 1))
    assert view(g)["points"]["balance"] == 0
    kinds = [e["kind"] for e in g.ok("member.ledger", "member:u").body["entries"]]
    assert kinds == ["expire", "earn"]


def test_the_ledger_pages_newest_first() -> None:
    g = Grid()
    for i in range(5):
        earn(g, 1, f"o{i}")
    first = g.ok("member.ledger", "member:u", limit=2).body
    assert [e["external_id"] for e in first["entries"]] == ["o4", "o3"]
    second = g.ok("member.ledger", "member:u", limit=2, cursor=first["next_cursor"]).body
    last = g.ok("member.ledger", "member:u", limit=2, cursor=second["next_cursor"]).body
    assert [e["external_id"] for e in second["entries"] + last["entries"]] == ["o2", "o1", "o0"]
    assert last["next_cursor"] is None


def test_entries_added_between_pages_never_show_twice() -> None:
    g = Grid()
    for i in range(5):
        earn(g, 1, f"o{i}")
    first = g.ok("member.ledger", "member:u", limit=2).body
    earn(g, 1, "o5")  # newer than every page: it shows on a fresh first page only
    rest = g.ok("member.ledger", "member:u", limit=10, cursor=first["next_cursor"]).body
    assert [e["external_id"] for e in rest["entries"]] == ["o2", "o1", "o0"]
    assert rest["next_cursor"] is None


def test_the_tier_follows_the_rolling_twelve_month_spend() -> None:
    g = Grid()
    spend = {"channel": "pos", "reason": "order"}
    g.ok("member.spend", "member:u", amount=120_000, external_id="p1", **spend)
    assert view(g)["tier"] == "silver"
    assert view(g)["next_tier"] == {"tier": "gold", "spend_needed": 380_000}
    g.ok("member.spend", "member:u", amount=-30_000, external_id="r1", **spend)  # a refund
    assert (view(g)["tier"], view(g)["spend_12m"]) == ("member", 90_000)
    g.ok("member.spend", "member:u", amount=2_000_000, external_id="p2", **spend)
    assert view(g)["tier"] == "platinum" and view(g)["next_tier"] is None
    g.clock.now = T0 + 366 * DAY  # a year on, the first two no longer count
    g.ok("member.spend", "member:u", amount=1, external_id="p3", **spend)
    assert view(g)["spend_12m"] == 1 and view(g)["tier"] == "member"


def test_bad_member_input_is_refused_by_the_owner_too() -> None:
    g = Grid()
    for bad in (
        {"points": 0, "reason": "x", "external_id": "a"},
        {"points": 1, "reason": "x"},
        {"points": 1, "reason": "x", "external_id": "a", "expires_at": "tomorrow"},
        {"points": 1, "reason": "x", "external_id": "a", "bonus": 1},
        {"points": True, "reason": "x", "external_id": "a"},
    ):
        result = g.run("member.earn", "member:u", **bad)
        assert (result.status, result.code) == (422, "invalid_request"), bad
    assert "member:u" not in g.shard.entities


def test_a_replay_of_the_journal_rebuilds_the_same_member() -> None:
    g = Grid()
    earn(g, 50, "a", expires_at=rfc3339(T0 + DAY))
    redeem(g, 20, "b")
    g.ok("member.spend", "member:u", amount=200_000, external_id="p")
    g.clock.now = T0 + DAY
    g.shard.tick()
    again = Shard(0, SlotMap.even(1), clock=g.clock)
    again.recover(g.journal.replay())
    assert again.entities["member:u"].state() == g.shard.entities["member:u"].state()
    assert member.KIND.key("u") == "member:u"


def points(g: Grid, oid: str, action: str, key: str, **amounts: int) -> Any:
    args = {"order_id": oid, "action": action, "key": key, **amounts}
    return g.shard.apply(Command("member.order_points", "member:u", args, "pos"))


def test_a_refund_takes_back_earned_points_never_below_zero_and_the_rest_is_a_debt() -> None:
    g = Grid()
    earn(g, 100, "welcome")
    assert points(g, "o1", "paid", "paid", points=50, amount=5_000).ok
    assert points(g, "o1", "paid", "paid", points=50, amount=5_000).body["version"] == 2  # once
    assert (view(g)["points"]["balance"], view(g)["spend_12m"]) == (150, 5_000)
    redeem(g, 140, "voucher")
    refunded = points(g, "o1", "refunded", "rf1", points=50, restore=0, amount=5_000)
    assert refunded.ok and view(g)["points"] == {"balance": 0, "expiring": [], "debt": 40}
    assert view(g)["spend_12m"] == 0
    points(g, "o2", "paid", "paid", points=30, amount=3_000)  # the debt is paid first
    assert view(g)["points"] == {"balance": 0, "expiring": [], "debt": 10}
    points(g, "o3", "paid", "paid", points=25, amount=2_500)
    assert view(g)["points"]["balance"] == 15 and "debt" not in view(g)["points"]
    kinds = [e["kind"] for e in g.ok("member.ledger", "member:u", limit=20).body["entries"]]
    assert kinds[:4] == ["reverse", "earn", "reverse", "earn"]


def test_points_held_by_an_order_come_back_and_a_late_hold_is_refused() -> None:
    g = Grid()
    earn(g, 100, "welcome")
    assert points(g, "o1", "redeem", "redeem", points=60).ok
    assert view(g)["points"]["balance"] == 40
    refused = points(g, "o1", "redeem", "redeem", points=60)
    assert refused.ok and view(g)["points"]["balance"] == 40  # sent twice: held once
    points(g, "o1", "release", "redeem", points=60)
    assert view(g)["points"]["balance"] == 100
    points(g, "o2", "release", "redeem", points=10)  # given back before it was held
    late = points(g, "o2", "redeem", "redeem", points=10)
    assert (late.status, late.code) == (409, "insufficient_points")
    assert view(g)["points"]["balance"] == 100
