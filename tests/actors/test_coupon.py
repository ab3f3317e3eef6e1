"""The coupon and wallet kinds on one shard with a hand-moved clock: definitions,
eligibility, discounts split exactly, a checkout saga's steps each safe to run
twice, the limits counting holds, refusals that change nothing, and a journal
replay that rebuilds the same coupon."""

from __future__ import annotations

from typing import Any

import pytest

from omnigrid.actors import coupon, pricing, wallet
from omnigrid.actors.protocol import Command, Result
from omnigrid.actors.residency import pack_state, unpack_entity
from omnigrid.actors.shard import QUERY, Shard
from omnigrid.actors.slots import SlotMap
from omnigrid.persistence.events import rfc3339
from tests.actors.test_shard import T0, Grid, cmd

DAY = 24 * 3600.0
KEY = "coupon:SAVE"
LINES = [["a", "shoes", 6_000], ["b", "hats", 3_000], ["c", None, 1_000]]


def create(g: Grid, code: str = "SAVE", **terms: Any) -> Result:
    body = {"kind": "amount", "value": 1_000, **terms}
    return g.run("coupon.create", "coupon:" + code, code=code, **body)


def view(g: Grid, key: str = KEY) -> dict[str, Any]:
    body: dict[str, Any] = g.ok("coupon.get", key).body
    return body


def hold(g: Grid, order: str, uid: str = "u", channel: str = "app", **kw: Any) -> Result:
    lines = kw.pop("lines", LINES)
    key = kw.pop("key", KEY)
    # "channel" is an input field here (the order's), not the command's channel
    args = {"order_id": order, "uid": uid, "channel": channel, "lines": lines}
    return g.shard.apply(Command("coupon.hold", key, args, channel))


def step(g: Grid, op: str, order: str, **kw: Any) -> Result:
    return g.run("coupon." + op, KEY, order_id=order, **kw)


def refused(result: Result, why: str) -> None:
    assert (result.status, result.code) == (409, "coupon_invalid"), result
    assert why in (result.detail or ""), result.detail


def test_a_coupon_is_created_once_and_the_same_definition_again_answers_it() -> None:
    g = Grid()
    made = create(g, skus=["a", "a", "b"], valid_until=rfc3339(T0 + DAY), channels=[])
    assert made.status == 201
    assert made.body | {"updated_at": None} == {
        "coupon_id": "SAVE",
        "code": "SAVE",
        "uid": None,
        "kind": "amount",
        "value": 1_000,
        "min_spend": 0,
        "skus": ["a", "b"],
        "categories": None,
        "channels": None,
        "valid_from": None,
        "valid_until": rfc3339(T0 + DAY),
        "max_redemptions": 1,
        "per_uid": 1,
        "restore_on_refund": False,
        "redemptions": 0,
        "held": 0,
        "version": 1,
        "updated_at": None,
    }
    # the same definition, written differently (a time with an offset): the coupon as it is
    again = create(g, skus=["a", "b"], valid_until="2023-11-16T06:13:20+08:00")
    assert (again.status, again.body) == (201, made.body)
    other = create(g, skus=["a", "b"], value=999)
    assert (other.status, other.code) == (409, "coupon_exists")
    assert view(g)["version"] == 1 and view(g)["value"] == 1_000
    assert g.run("coupon.get", "coupon:NOPE").code == "not_found"
    assert "coupon:NOPE" not in g.shard.entities


@pytest.mark.parametrize(
    "bad",
    [
        {"value": 0},
        {"value": -5},
        {"kind": "percent", "value": 150},
        {"kind": "gift"},
        {"valid_from": "tomorrow"},
        {"valid_from": "2030-01-01T00:00:00"},  # no zone
        {"valid_from": rfc3339(T0 + DAY), "valid_until": rfc3339(T0)},
        {"skus": ["ok", "bad sku"]},
        {"skus": ["s"] * (coupon.MAX_SKUS + 1)},
        {"max_redemptions": 0},
        {"per_uid": True},
        {"bonus": 1},
        {"uid": "x\n"},
    ],
)
def test_bad_definitions_are_refused_and_change_nothing(bad: dict[str, Any]) -> None:
    g = Grid()
    result = create(g, **bad)
    assert (result.status, result.code) == (422, "invalid_request"), bad
    assert "coupon:SAVE" not in g.shard.entities


def test_eligible_lines_and_an_exact_proportional_split() -> None:
    g = Grid()
    create(g, categories=["shoes", "hats"])
    held = hold(g, "o1").body  # 1,000 over 6,000 and 3,000: 667 + 333
    assert held == {"code": "SAVE", "discount": 1_000, "lines": [667, 333, 0]}
    create(
        g,
        "PCT",
        kind="percent",
        value=15,
        skus=["c"],
        categories=["hats"],
        max_redemptions=5,
        per_uid=5,
    )
    lines = [["a", "shoes", 6_000], ["b", "hats", 333], ["c", None, 333], ["c", "x", 334]]
    pct = hold(g, "o2", key="coupon:PCT", lines=lines).body  # floor(1,000 * 15%) = 150
    assert pct == {"code": "PCT", "discount": 150, "lines": [0, 50, 50, 50]}
    create(g, "ALL", value=10, max_redemptions=5, per_uid=5)  # names neither: every line
    three = [["a", None, 10], ["b", None, 10], ["c", None, 10]]
    assert hold(g, "o3", key="coupon:ALL", lines=three).body["lines"] == [4, 3, 3]
    capped = hold(g, "o4", key="coupon:ALL", lines=[["a", None, 7]]).body
    assert (capped["discount"], capped["lines"]) == (7, [7])  # never more than the lines


@pytest.mark.parametrize(
    ("discount", "amounts"),
    [
        (1_000, [6_000, 3_000, 0]),
        (7, [1, 1, 1, 1, 1, 1, 1, 1]),
        (29, [3, 5, 7, 11, 13]),
        (1, [10**12, 1]),
        (5, [2, 2, 1]),
    ],
)
def test_the_split_sums_exactly_and_never_exceeds_a_line(discount: int, amounts: list[int]) -> None:
    shares = pricing.split(discount, amounts)
    assert sum(shares) == discount
    assert all(0 <= s <= a for s, a in zip(shares, amounts, strict=True))


def test_every_refusal_says_why_and_changes_nothing() -> None:
    g = Grid()
    refused(hold(g, "o0", key="coupon:NOPE"), "no coupon")
    assert "coupon:NOPE" not in g.shard.entities
    create(
        g,
        uid="u",
        skus=["a"],
        min_spend=7_000,
        channels=["pos"],
        valid_from=rfc3339(T0 + DAY),
        valid_until=rfc3339(T0 + 2 * DAY),
    )
    refused(hold(g, "o1", channel="pos"), "not valid before")
    g.clock.now = T0 + DAY
    refused(hold(g, "o1", channel="app"), "not valid on channel 'app'")
    refused(hold(g, "o1", uid="other", channel="pos"), "issued to another user")
    refused(hold(g, "o1", channel="pos", lines=[["b", None, 9_000]]), "no line is eligible")
    refused(hold(g, "o1", channel="pos"), "below its minimum spend of 7000")
    refused(hold(g, "o1", channel="pos", lines=[["a", None, 6_999]]), "come to 6999")
    g.clock.now = T0 + 2 * DAY  # valid until, not at, valid_until
    refused(hold(g, "o1", channel="pos", lines=[["a", None, 9_000]]), "expired at")
    assert (view(g)["version"], view(g)["held"]) == (1, 0)
    assert g.shard.entities[KEY].orders == {}  # type: ignore[attr-defined]
    create(g, "TINY", kind="percent", value=1)  # 1% of 50 is nothing: not used up for it
    refused(hold(g, "o2", key="coupon:TINY", lines=[["a", None, 50]]), "no discount")


def test_a_hold_twice_answers_the_first_and_holds_once() -> None:
    g = Grid()
    create(g, max_redemptions=2)
    first = hold(g, "o1")
    again = hold(g, "o1", lines=[["a", None, 5]])  # a re-sent step: the first answer
    assert again.body == first.body
    assert (view(g)["held"], view(g)["version"]) == (1, 2)


def test_holds_count_toward_max_redemptions_and_releases_give_them_back() -> None:
    g = Grid()
    create(g, max_redemptions=2, per_uid=5)
    assert hold(g, "o1", uid="u1").ok and hold(g, "o2", uid="u2").ok
    refused(hold(g, "o3", uid="u3"), "redeemed or held 2 of 2 times")
    step(g, "release", "o2")
    assert hold(g, "o3", uid="u3").ok
    step(g, "consume", "o1")
    step(g, "consume", "o3")
    refused(hold(g, "o4", uid="u4"), "2 of 2")
    assert (view(g)["redemptions"], view(g)["held"]) == (2, 0)


def test_per_uid_counts_this_users_holds_and_redemptions() -> None:
    g = Grid()
    create(g, max_redemptions=10, per_uid=2)
    hold(g, "o1")
    step(g, "consume", "o1")
    hold(g, "o2")
    refused(hold(g, "o3"), "this user redeemed or holds it 2 of 2 times")
    assert hold(g, "o3", uid="someone-else").ok
    step(g, "release", "o2")
    assert hold(g, "o4").ok


def test_consume_and_release_are_each_safe_to_run_twice() -> None:
    g = Grid()
    create(g, max_redemptions=3, per_uid=3)
    hold(g, "o1")
    consumed = step(g, "consume", "o1").body
    assert consumed == {"code": "SAVE", "order_id": "o1", "status": "consumed", "discount": 1_000}
    assert step(g, "consume", "o1").body == consumed
    assert step(g, "release", "o1").body["status"] == "consumed"  # paid: restored, not released
    assert hold(g, "o1").body["discount"] == 1_000  # a late re-send of its hold changes nothing
    hold(g, "o2")
    assert step(g, "release", "o2").body["status"] == "released"
    version = view(g)["version"]
    assert step(g, "release", "o2").body["status"] == "released"
    refused(step(g, "consume", "o2"), "released for order o2")
    refused(hold(g, "o2"), "released for order o2")
    refused(step(g, "consume", "never"), "no hold of SAVE for order never")
    assert view(g) | {"updated_at": None} == view(g) | {
        "redemptions": 1,
        "held": 0,
        "version": version,
        "updated_at": None,
    }


def test_a_release_that_overtakes_its_hold_leaves_a_tombstone() -> None:
    g = Grid()
    create(g)
    assert step(g, "release", "late").body["status"] == "released"
    assert view(g)["version"] == 2
    refused(hold(g, "late"), "released for order late")
    assert view(g)["held"] == 0
    assert hold(g, "next").ok  # the tombstone used nothing up
    # on a code that does not exist, nothing is kept
    assert g.run("coupon.release", "coupon:NOPE", order_id="x").ok
    assert "coupon:NOPE" not in g.shard.entities


@pytest.mark.parametrize(
    ("rule", "cancel", "given_back"),
    [(False, False, False), (False, True, True), (True, False, True)],
)
def test_restore_gives_a_redemption_back_by_rule_once(
    rule: bool, cancel: bool, given_back: bool
) -> None:
    g = Grid()
    create(g, restore_on_refund=rule)
    hold(g, "o1")
    step(g, "consume", "o1")
    status = "restored" if given_back else "consumed"
    assert step(g, "restore", "o1", cancel=cancel).body["status"] == status
    version = view(g)["version"]
    assert step(g, "restore", "o1", cancel=cancel).body["status"] == status
    assert (view(g)["redemptions"], view(g)["version"]) == (0 if given_back else 1, version)
    assert hold(g, "o2").ok is given_back  # the coupon (max 1, per uid 1) is free again
    refused(step(g, "restore", "never"), "no hold of SAVE")


def test_the_wallet_keeps_each_code_once_the_newest_first_capped() -> None:
    g = Grid()
    for code in ("A", "B", "A"):
        g.ok("wallet.add", "wallet:u", code=code)
    assert g.ok("wallet.codes", "wallet:u").body["codes"] == ["B", "A"]
    assert g.ok("wallet.codes", "wallet:u").body["version"] == 2
    assert g.run("wallet.add", "wallet:u", code="bad code").code == "invalid_request"
    for i in range(wallet.MAX_CODES):
        g.ok("wallet.add", "wallet:v", code=f"C{i}")
    g.ok("wallet.add", "wallet:v", code="NEW")
    codes = g.ok("wallet.codes", "wallet:v").body["codes"]
    assert (len(codes), codes[0], codes[-1]) == (wallet.MAX_CODES, "NEW", "C1")


def test_usable_follows_the_same_rule_as_a_hold() -> None:
    g = Grid()
    create(g, channels=["pos"], max_redemptions=5, per_uid=1, valid_until=rfc3339(T0 + DAY))
    hold(g, "o1", channel="pos")
    asks = {KEY: wallet.usage_query("u"), "coupon:NOPE": wallet.usage_query("u")}
    found = g.shard.apply(cmd(QUERY, KEY, asks=asks)).body
    assert found["coupon:NOPE"] is None
    usage = found[KEY]
    assert wallet.listed(usage, "u", "pos", T0)["usable"] is False  # per_uid: u holds it
    other = g.shard.apply(cmd(QUERY, KEY, asks={KEY: wallet.usage_query("v")})).body[KEY]
    assert wallet.listed(other, "v", "pos", T0)["usable"] is True
    assert wallet.listed(other, "v", "app", T0)["usable"] is False
    assert wallet.listed(other, "v", "pos", T0 + DAY)["usable"] is False
    view_only = g.shard.apply(cmd(QUERY, KEY, asks={KEY: coupon.VIEW})).body[KEY]
    assert view_only == usage[1]
    assert g.shard.apply(cmd(QUERY, KEY, asks={KEY: coupon.USAGE})).code == "invalid_request"


def test_a_replay_of_the_journal_rebuilds_the_same_coupon() -> None:
    g = Grid()
    create(g, max_redemptions=4, per_uid=4, restore_on_refund=True, valid_until=rfc3339(T0 + DAY))
    hold(g, "o1")
    hold(g, "o2", uid="v")
    step(g, "consume", "o1")
    step(g, "release", "o2")
    step(g, "release", "ghost")
    hold(g, "o3")
    step(g, "consume", "o3")
    step(g, "restore", "o3")
    g.ok("wallet.add", "wallet:u", code="SAVE")
    again = Shard(0, SlotMap.even(1), clock=g.clock)
    again.recover(g.journal.replay())
    for key in (KEY, "wallet:u"):
        live = g.shard.entities[key]
        assert again.entities[key].state() == live.state()
        stored = unpack_entity(key, pack_state(live))  # a snapshot, through msgpack
        assert stored is not None and stored.state() == live.state()
    # the counts are derived again from the orders, by the replay and by a snapshot alike
    for rebuilt in (again.entities[KEY], unpack_entity(KEY, pack_state(again.entities[KEY]))):
        assert isinstance(rebuilt, coupon.Coupon)
        assert (rebuilt.redemptions, rebuilt.held, rebuilt.by_uid) == (1, 0, {"u": 1})
    assert coupon.KIND.key("SAVE") == KEY and wallet.KIND.key("u") == "wallet:u"
