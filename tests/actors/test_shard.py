"""A shard in-process: ownership, versions, reservation expiry, idempotency, If-Match, journal."""

from __future__ import annotations

from typing import Any

import pytest

from omnigrid.actors.cart import MAX_LINE_QTY, MAX_LINES
from omnigrid.actors.entity import IDEMPOTENCY_TTL_S
from omnigrid.actors.kinds import kinds
from omnigrid.actors.protocol import MOVED, Command, Result
from omnigrid.actors.shard import QUERY, SYSTEM_CHANNEL, Shard
from omnigrid.actors.slots import SlotMap, slot_of
from omnigrid.actors.stock import Stock
from omnigrid.persistence.events import Event, rfc3339
from omnigrid.persistence.journal import MemoryJournal

T0 = 1_700_000_000.0


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def cmd(
    op: str,
    key: str,
    channel: str = "app",
    idem: str | None = None,
    fingerprint: str | None = None,
    if_match: int | None = None,
    **args: Any,
) -> Command:
    return Command(op, key, dict(args), channel, idem, fingerprint, if_match)


class Grid:
    """One shard owning every slot, its clock and its journal."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.journal = MemoryJournal()
        self.shard = Shard(0, SlotMap.even(1), self.journal, clock=self.clock)

    def run(self, op: str, key: str, **kw: Any) -> Result:
        return self.shard.apply(cmd(op, key, **kw))

    def ok(self, op: str, key: str, **kw: Any) -> Result:
        result = self.run(op, key, **kw)
        assert result.ok, result
        return result

    def stock(self, sku: str) -> dict[str, Any]:
        result = self.ok("stock.get", "stock:" + sku)
        body: dict[str, Any] = result.body
        return body

    def cart(self, uid: str) -> dict[str, Any]:
        body: dict[str, Any] = self.ok("cart.get", "cart:" + uid).body
        return body

    def stocked(self, sku: str, on_hand: int) -> None:
        self.ok("stock.set", "stock:" + sku, channel="pos", on_hand=on_hand)

    def reserve(self, sku: str, qty: int, ttl_s: int = 60, **kw: Any) -> str:
        result = self.ok("stock.reserve", "stock:" + sku, qty=qty, ttl_s=ttl_s, **kw)
        assert result.status == 201
        rid: str = result.body["reservation_id"]
        return rid

    def entity_state(self, key: str) -> tuple[int, dict[str, Any]] | None:
        """(version, view) read without going through a command (no lazy expiry)."""
        entity = self.shard.entities.get(key)
        if entity is None:
            return None
        return entity.version, entity.view()


@pytest.fixture()
def g() -> Grid:
    return Grid()


# -- slot ownership -------------------------------------------------------------


def key_on_shard(slot_map: SlotMap, shard: int, prefix: str) -> str:
    for i in range(10_000):
        key = f"{prefix}:{i}"
        if slot_map.owner(key) == shard:
            return key
    raise AssertionError("no key found")


@pytest.mark.parametrize("op", ["stock.get", "stock.set", "cart.get", "cart.add"])
def test_a_key_the_shard_does_not_own_answers_moved_with_the_slot_map(op: str) -> None:
    slot_map = SlotMap.even(2, version=3)
    shard = Shard(0, slot_map, MemoryJournal(), clock=Clock())
    kind = op.partition(".")[0]
    key = key_on_shard(slot_map, 1, kind)
    result = shard.apply(cmd(op, key, on_hand=5, sku="x", qty=1, available=5))
    assert result.status == MOVED == 421
    assert result.code == "moved"
    assert not result.ok
    assert result.body == slot_map.to_wire()
    assert SlotMap.from_wire(result.body) == slot_map
    assert shard.entities == {}


def test_an_owned_key_on_a_two_shard_map_is_served() -> None:
    slot_map = SlotMap.even(2)
    shard = Shard(1, slot_map, MemoryJournal(), clock=Clock())
    key = key_on_shard(slot_map, 1, "stock")
    assert shard.apply(cmd("stock.set", key, on_hand=1)).status == 200


AVAIL = "stock.available"


def available(*keys: str) -> Command:
    """The stock kind's declared query of these keys, as the router sends it."""
    asks = dict.fromkeys(keys, "stock.available")
    return cmd(QUERY, keys[0] if keys else "stock:none", asks=asks)


def test_a_query_of_a_key_on_another_shard_answers_moved() -> None:
    slot_map = SlotMap.even(2)
    shard = Shard(0, slot_map, MemoryJournal(), clock=Clock())
    mine = key_on_shard(slot_map, 0, "stock")
    theirs = key_on_shard(slot_map, 1, "stock")
    assert shard.apply(available(mine)).status == 200
    moved = shard.apply(available(mine, theirs))
    assert moved.status == MOVED
    assert moved.body == slot_map.to_wire()


def test_assign_only_takes_a_newer_map() -> None:
    v2 = SlotMap.even(2, version=2)
    shard = Shard(0, v2, MemoryJournal(), clock=Clock())
    assert shard.assign(SlotMap.even(1, version=1)) is False
    assert shard.assign(SlotMap.even(1, version=2)) is False
    assert shard.slot_map is v2
    foo_slot = slot_of("foo")  # shard 1 under an even split of two
    assert not shard.owns("foo")
    v3 = v2.moved({foo_slot: 0})
    assert shard.assign(v3) is True
    assert shard.slot_map is v3
    assert shard.owns("foo")
    assert shard.assign(v3) is False
    # a shard that lost a slot refuses it with the newer map
    other = Shard(1, v2, MemoryJournal(), clock=Clock())
    assert other.assign(v3)
    result = other.apply(cmd("stock.get", "foo"))
    assert result.status == MOVED
    assert result.body == v3.to_wire()


# -- versions -------------------------------------------------------------------------


def test_stock_version_grows_by_one_per_change(g: Grid) -> None:
    assert g.run("stock.get", "stock:a").code == "unknown_sku"
    g.stocked("a", 10)
    assert g.stock("a")["version"] == 1
    g.ok("stock.adjust", "stock:a", delta=5, reason="delivery")
    assert g.stock("a") | {"updated_at": None} == {
        "sku": "a",
        "on_hand": 15,
        "reserved": 0,
        "available": 15,
        "version": 2,
        "updated_at": None,
    }
    rid = g.reserve("a", 4)
    assert g.stock("a")["version"] == 3
    g.ok("stock.commit", "stock:a", reservation_id=rid)
    view = g.stock("a")
    assert (view["on_hand"], view["reserved"], view["available"], view["version"]) == (11, 0, 11, 4)
    rid = g.reserve("a", 1)
    g.ok("stock.release", "stock:a", reservation_id=rid)
    assert g.stock("a")["version"] == 6
    # reads change nothing
    g.stock("a")
    g.ok("stock.reservation", "stock:a", reservation_id=rid)
    assert g.stock("a")["version"] == 6


def test_stock_view_times_are_the_clock_of_the_last_change(g: Grid) -> None:
    g.stocked("a", 1)
    g.clock.now += 2.5
    g.stock("a")
    assert g.stock("a")["updated_at"] == rfc3339(T0)
    g.ok("stock.adjust", "stock:a", delta=1)
    assert g.stock("a")["updated_at"] == rfc3339(T0 + 2.5)
    assert rfc3339(0.0) == "1970-01-01T00:00:00.000Z"
    assert rfc3339(None) is None


def test_cart_version_grows_by_one_per_change_and_not_on_no_ops(g: Grid) -> None:
    empty = g.cart("u")
    assert empty == {"uid": "u", "version": 0, "updated_at": None, "lines": []}
    # no-ops on a cart never seen: nothing kept, nothing journaled
    assert g.ok("cart.remove", "cart:u", sku="x").body == empty
    assert g.ok("cart.clear", "cart:u").body == empty
    assert g.ok("cart.set", "cart:u", sku="x", qty=0, available=None).body == empty
    assert "cart:u" not in g.shard.entities
    assert g.journal.batches == 0

    view = g.ok("cart.add", "cart:u", channel="pos", sku="x", qty=2, available=5).body
    assert view["version"] == 1
    assert view["lines"] == [
        {
            "sku": "x",
            "qty": 2,
            "added_via": "pos",
            "updated_via": "pos",
            "updated_at": rfc3339(T0),
        }
    ]
    g.clock.now += 1
    view = g.ok("cart.add", "cart:u", channel="web", sku="x", qty=1, available=5).body
    assert view["version"] == 2
    assert view["lines"][0]["qty"] == 3
    assert view["lines"][0]["added_via"] == "pos"
    assert view["lines"][0]["updated_via"] == "web"
    assert view["lines"][0]["updated_at"] == rfc3339(T0 + 1)
    assert view["updated_at"] == rfc3339(T0 + 1)

    # setting the quantity a line already holds is not a change
    assert g.ok("cart.set", "cart:u", sku="x", qty=3, available=5).body["version"] == 2
    assert g.ok("cart.set", "cart:u", sku="x", qty=4, available=5).body["version"] == 3
    assert g.ok("cart.set", "cart:u", sku="y", qty=1, available=1).body["version"] == 4
    # removing a line that is not there is not a change
    assert g.ok("cart.remove", "cart:u", sku="zzz").body["version"] == 4
    assert g.ok("cart.remove", "cart:u", sku="y").body["version"] == 5
    # qty 0 removes the line; then it is absent and another qty 0 is a no-op
    assert g.ok("cart.set", "cart:u", sku="x", qty=0).body["version"] == 6
    assert g.ok("cart.set", "cart:u", sku="x", qty=0).body["version"] == 6
    assert g.cart("u")["lines"] == []
    # clearing an empty cart is not a change; clearing a full one is one change
    assert g.ok("cart.clear", "cart:u").body["version"] == 6
    g.ok("cart.add", "cart:u", sku="a", qty=1, available=1)
    g.ok("cart.add", "cart:u", sku="b", qty=1, available=1)
    cleared = g.ok("cart.clear", "cart:u").body
    assert cleared["version"] == 9
    assert cleared["lines"] == []
    assert [e.version for e in g.journal.events if e.key == "cart:u"] == list(range(1, 10))


def test_cart_lines_keep_insertion_order(g: Grid) -> None:
    for sku in ("c", "a", "b"):
        g.ok("cart.add", "cart:u", sku=sku, qty=1, available=9)
    g.ok("cart.set", "cart:u", sku="c", qty=5, available=9)
    assert [line["sku"] for line in g.cart("u")["lines"]] == ["c", "a", "b"]
    g.ok("cart.remove", "cart:u", sku="c")
    g.ok("cart.add", "cart:u", sku="c", qty=1, available=9)
    assert [line["sku"] for line in g.cart("u")["lines"]] == ["a", "b", "c"]


def test_releasing_a_released_reservation_is_not_a_change(g: Grid) -> None:
    g.stocked("a", 5)
    rid = g.reserve("a", 2)
    first = g.ok("stock.release", "stock:a", reservation_id=rid)
    assert first.body["status"] == "released"
    before = g.stock("a")
    assert before["version"] == 3
    assert before["reserved"] == 0
    again = g.ok("stock.release", "stock:a", reservation_id=rid)
    assert again.body["status"] == "released"
    assert g.stock("a") == before


def test_commit_refusals(g: Grid) -> None:
    g.stocked("a", 5)
    rid = g.reserve("a", 2)
    g.ok("stock.commit", "stock:a", reservation_id=rid)
    before = g.stock("a")
    for op in ("stock.commit", "stock.release"):
        result = g.run(op, "stock:a", reservation_id=rid)
        assert (result.status, result.code) == (409, "reservation_closed")
    released = g.reserve("a", 1)
    g.ok("stock.release", "stock:a", reservation_id=released)
    result = g.run("stock.commit", "stock:a", reservation_id=released)
    assert (result.status, result.code) == (409, "reservation_closed")
    missing = g.run("stock.commit", "stock:a", reservation_id="r-nope")
    assert (missing.status, missing.code) == (404, "not_found")
    assert g.stock("a")["version"] == before["version"] + 2
    assert g.stock("a")["on_hand"] == 3


def test_reservation_view(g: Grid) -> None:
    g.stocked("a", 5)
    result = g.ok("stock.reserve", "stock:a", channel="kiosk", qty=2, ttl_s=900, ref="order-1")
    assert result.status == 201
    body = result.body
    rid = body["reservation_id"]
    assert body == {
        "reservation_id": rid,
        "sku": "a",
        "qty": 2,
        "status": "held",
        "expires_at": rfc3339(T0 + 900),
        "ref": "order-1",
        "channel": "kiosk",
    }
    assert g.ok("stock.reservation", "stock:a", reservation_id=rid).body == body
    assert g.reserve("a", 1) != rid


# -- reservation expiry -----------------------------------------------------------------


def test_expiry_by_tick_gives_quantity_back_and_bumps_the_version_once(g: Grid) -> None:
    g.stocked("a", 10)
    r1 = g.reserve("a", 3, ttl_s=30)
    r2 = g.reserve("a", 4, ttl_s=30)
    r3 = g.reserve("a", 1, ttl_s=100)
    assert g.entity_state("stock:a") is not None
    g.clock.now = T0 + 29.999
    assert g.shard.tick() == 0
    state = g.entity_state("stock:a")
    assert state is not None and state[0] == 4
    batches = g.journal.batches

    g.clock.now = T0 + 30  # due exactly at expires_at
    assert g.shard.tick() == 1
    assert g.journal.batches == batches + 1
    state = g.entity_state("stock:a")
    assert state is not None
    version, view = state
    assert version == 5
    assert (view["on_hand"], view["reserved"], view["available"]) == (10, 1, 9)
    assert view["updated_at"] == rfc3339(T0 + 30)
    last = g.journal.events[-1]
    assert (last.kind, last.key, last.version, last.channel, last.op) == (
        "stock",
        "stock:a",
        5,
        SYSTEM_CHANNEL,
        "stock.expire",
    )
    assert last.view == view
    for rid, status in ((r1, "expired"), (r2, "expired"), (r3, "held")):
        assert g.ok("stock.reservation", "stock:a", reservation_id=rid).body["status"] == status
    # nothing more is due: another tick does nothing
    assert g.shard.tick() == 0
    assert g.journal.batches == batches + 1

    g.clock.now = T0 + 100
    assert g.shard.tick() == 1
    state = g.entity_state("stock:a")
    assert state is not None
    assert state[0] == 6
    assert state[1]["reserved"] == 0


def test_expiry_happens_lazily_on_access_without_a_tick(g: Grid) -> None:
    g.stocked("a", 10)
    rid = g.reserve("a", 3, ttl_s=30)
    g.reserve("a", 2, ttl_s=31)
    g.clock.now = T0 + 60
    state = g.entity_state("stock:a")
    assert state is not None and state[1]["reserved"] == 5  # no tick yet
    view = g.stock("a")
    assert (view["reserved"], view["available"], view["version"]) == (0, 10, 4)
    assert [e.op for e in g.journal.events][-1] == "stock.expire"
    assert g.stock("a")["version"] == 4  # once, not once per reservation or per read
    # expired: commit is refused, release answers as it stands
    result = g.run("stock.commit", "stock:a", reservation_id=rid)
    assert (result.status, result.code) == (409, "reservation_closed")
    released = g.ok("stock.release", "stock:a", reservation_id=rid)
    assert released.body["status"] == "expired"
    assert g.stock("a")["version"] == 4
    # a tick afterwards finds nothing left to do
    assert g.shard.tick() == 0


def test_lazy_expiry_on_query(g: Grid) -> None:
    g.stocked("a", 10)
    g.reserve("a", 3, ttl_s=5)
    assert g.shard.apply(available("stock:a")).body == {"stock:a": 7}
    g.clock.now = T0 + 5
    assert g.shard.apply(available("stock:a")).body == {"stock:a": 10}
    assert g.journal.events[-1].op == "stock.expire"
    state = g.entity_state("stock:a")
    assert state is not None and state[0] == 3


def test_a_write_after_expiry_sees_the_quantity_back(g: Grid) -> None:
    g.stocked("a", 5)
    g.reserve("a", 5, ttl_s=10)
    refused = g.run("stock.reserve", "stock:a", qty=1, ttl_s=10)
    assert (refused.status, refused.code) == (409, "insufficient_stock")
    g.clock.now = T0 + 10
    g.reserve("a", 5, ttl_s=10)
    ops = [e.op for e in g.journal.events]
    assert ops == ["stock.set", "stock.reserve", "stock.expire", "stock.reserve"]
    assert [e.version for e in g.journal.events] == [1, 2, 3, 4]


@pytest.mark.parametrize("close", ["stock.release", "stock.commit"])
@pytest.mark.parametrize("second_first", [False, True])
def test_tick_expires_a_reservation_queued_behind_a_closed_one(
    g: Grid, close: str, second_first: bool
) -> None:
    # Regression: the shard's deadline for "stock:a" was the closed reservation's; a tick
    # between the two deadlines found nothing due and dropped the key, so the held one
    # never expired by tick (only when something next touched the SKU).
    g.stocked("a", 10)
    if second_first:
        later = g.reserve("a", 2, ttl_s=20)
        early = g.reserve("a", 1, ttl_s=10)
    else:
        early = g.reserve("a", 1, ttl_s=10)
    g.ok(close, "stock:a", reservation_id=early)
    if not second_first:
        later = g.reserve("a", 2, ttl_s=20)
    g.clock.now = T0 + 15  # the closed one's deadline has passed, the held one's has not
    assert g.shard.tick() == 0
    g.clock.now = T0 + 17
    assert g.shard.tick() == 0
    g.clock.now = T0 + 30
    assert g.shard.tick() == 1
    state = g.entity_state("stock:a")
    assert state is not None
    assert state[1]["reserved"] == 0
    assert g.journal.events[-1].op == "stock.expire"
    status = g.ok("stock.reservation", "stock:a", reservation_id=later).body["status"]
    assert status == "expired"


def test_tick_keeps_every_held_deadline_through_many_closes(g: Grid) -> None:
    g.stocked("a", 100)
    held = []
    for i in range(10):
        rid = g.reserve("a", 1, ttl_s=10 + i)
        if i % 2:
            held.append(rid)
        else:
            g.ok("stock.release", "stock:a", reservation_id=rid)
    expired = 0
    for t in range(1, 40):
        g.clock.now = T0 + t
        expired += g.shard.tick()
        state = g.entity_state("stock:a")
        assert state is not None
        due = sum(1 for i in range(1, 10, 2) if 10 + i > t)
        assert state[1]["reserved"] == due
    assert expired == len(held)


def test_tick_works_in_slices_of_a_budget_of_entities(g: Grid) -> None:
    for sku in ("a", "b", "c"):
        g.stocked(sku, 5)
        g.reserve(sku, 2, ttl_s=10)
    assert not g.shard.due()
    g.clock.now = T0 + 10
    assert g.shard.due()
    assert g.shard.tick(budget=1) == 1
    assert g.shard.due()
    assert g.shard.tick(budget=2) == 2
    assert not g.shard.due()
    assert g.shard.tick() == 0
    for sku in ("a", "b", "c"):
        state = g.entity_state("stock:" + sku)
        assert state is not None
        assert (state[0], state[1]["reserved"]) == (3, 0)


def test_a_flash_sale_of_one_sku_is_one_unit_of_timed_work(g: Grid) -> None:
    g.stocked("a", 1_000)
    for _ in range(1_000):
        g.reserve("a", 1, ttl_s=60)
    g.clock.now = T0 + 59
    assert g.shard.tick(budget=1) == 0
    g.clock.now = T0 + 60
    assert g.shard.tick(budget=1) == 1  # every reservation of the SKU, in one version
    assert not g.shard.due()
    state = g.entity_state("stock:a")
    assert state is not None
    assert (state[0], state[1]["reserved"], state[1]["available"]) == (1_002, 0, 1_000)


def test_an_earlier_deadline_supersedes_a_later_one(g: Grid) -> None:
    g.stocked("a", 5)
    g.reserve("a", 1, ttl_s=100)
    g.reserve("a", 2, ttl_s=10)  # now the SKU's first deadline
    g.clock.now = T0 + 10
    assert g.shard.tick(budget=1) == 1
    state = g.entity_state("stock:a")
    assert state is not None and state[1]["reserved"] == 1
    g.clock.now = T0 + 99.9
    assert g.shard.tick() == 0
    g.clock.now = T0 + 100
    assert g.shard.tick(budget=1) == 1
    assert g.shard.tick(budget=1) == 0  # whatever is left in the queue is stale
    assert not g.shard.due()
    state = g.entity_state("stock:a")
    assert state is not None
    assert (state[0], state[1]["reserved"]) == (5, 0)


def test_lazy_expiry_then_tick_keeps_the_next_deadline(g: Grid) -> None:
    g.stocked("a", 5)
    g.reserve("a", 1, ttl_s=10)
    g.reserve("a", 2, ttl_s=30)
    g.clock.now = T0 + 12
    assert g.stock("a")["reserved"] == 2  # expired on access, before any tick
    assert g.shard.tick() == 0  # the passed deadline is due but nothing is left to do
    g.clock.now = T0 + 30
    assert g.shard.tick() == 1
    state = g.entity_state("stock:a")
    assert state is not None and state[1]["reserved"] == 0


# -- idempotency ------------------------------------------------------------------------


def test_idempotent_retry_returns_the_first_result_and_applies_nothing(g: Grid) -> None:
    g.stocked("a", 10)
    reserve = cmd("stock.reserve", "stock:a", idem="k1", fingerprint="f1", qty=3, ttl_s=60)
    first = g.shard.apply(reserve)
    assert first.status == 201
    state = g.entity_state("stock:a")
    events = len(g.journal.events)
    g.clock.now += 1
    second = g.shard.apply(reserve)
    assert second == first
    assert g.entity_state("stock:a") == state
    assert len(g.journal.events) == events
    assert g.stock("a")["reserved"] == 3

    # a different fingerprint under the same key is refused and changes nothing
    reused = g.shard.apply(
        cmd("stock.reserve", "stock:a", idem="k1", fingerprint="f2", qty=4, ttl_s=60)
    )
    assert (reused.status, reused.code) == (422, "idempotency_key_reused")
    assert g.entity_state("stock:a") == state
    assert len(g.journal.events) == events


def test_idempotent_retry_of_a_cart_write(g: Grid) -> None:
    add = cmd("cart.add", "cart:u", idem="k", fingerprint="f", sku="x", qty=2, available=9)
    first = g.shard.apply(add)
    assert first.ok
    g.ok("cart.add", "cart:u", sku="x", qty=1, available=9)
    # the retry answers with the first view (version 1), not the current one
    assert g.shard.apply(add) == first
    assert first.body["version"] == 1
    assert g.cart("u")["lines"][0]["qty"] == 3
    assert g.cart("u")["version"] == 2


def test_idempotent_retry_wins_over_a_now_stale_if_match(g: Grid) -> None:
    g.stocked("a", 1)
    put = cmd("stock.set", "stock:a", idem="k", fingerprint="f", if_match=1, on_hand=7)
    first = g.shard.apply(put)
    assert first.ok and first.body["version"] == 2
    assert g.shard.apply(put) == first
    assert g.stock("a")["version"] == 2


def test_idempotent_no_op_is_remembered_too(g: Grid) -> None:
    clear = cmd("cart.clear", "cart:u", idem="k", fingerprint="f")
    first = g.shard.apply(clear)
    assert first.ok and first.body["version"] == 0
    g.ok("cart.add", "cart:u", sku="x", qty=1, available=1)
    assert g.shard.apply(clear) == first  # replayed, not applied: the line stays
    assert len(g.cart("u")["lines"]) == 1
    reused = g.shard.apply(cmd("cart.clear", "cart:u", idem="k", fingerprint="other"))
    assert reused.code == "idempotency_key_reused"


def test_a_failed_write_leaves_no_idempotency_record(g: Grid) -> None:
    g.stocked("a", 2)
    big = cmd("stock.reserve", "stock:a", idem="k", fingerprint="f", qty=5, ttl_s=60)
    refused = g.shard.apply(big)
    assert (refused.status, refused.code) == (409, "insufficient_stock")
    assert "k" not in g.shard.entities["stock:a"].idempotency
    # the same key is free to carry a different request ...
    g.ok("stock.adjust", "stock:a", delta=3)
    ok = g.shard.apply(cmd("stock.reserve", "stock:a", idem="k", fingerprint="g", qty=5, ttl_s=60))
    assert ok.status == 201
    assert g.stock("a")["reserved"] == 5


def test_a_failed_write_to_a_new_entity_keeps_nothing(g: Grid) -> None:
    result = g.shard.apply(
        cmd("cart.add", "cart:u", idem="k", fingerprint="f", sku="x", qty=1, available=None)
    )
    assert (result.status, result.code) == (404, "unknown_sku")
    assert "cart:u" not in g.shard.entities
    result = g.shard.apply(cmd("stock.adjust", "stock:a", idem="k", fingerprint="f", delta=1))
    assert (result.status, result.code) == (404, "unknown_sku")
    assert g.shard.entities == {}
    assert g.journal.batches == 0


def test_idempotency_records_are_forgotten_after_the_ttl(g: Grid) -> None:
    g.stocked("a", 0)
    old = cmd("stock.adjust", "stock:a", idem="old", fingerprint="f", delta=1)
    g.shard.apply(old)
    g.clock.now += IDEMPOTENCY_TTL_S - 1
    g.shard.apply(cmd("stock.adjust", "stock:a", idem="mid", fingerprint="f", delta=1))
    assert list(g.shard.entities["stock:a"].idempotency) == ["old", "mid"]
    g.clock.now += 2
    g.shard.apply(cmd("stock.adjust", "stock:a", idem="new", fingerprint="f", delta=1))
    assert list(g.shard.entities["stock:a"].idempotency) == ["mid", "new"]


# -- If-Match -----------------------------------------------------------------------------


def test_if_match(g: Grid) -> None:
    g.stocked("a", 5)
    before = g.entity_state("stock:a")
    events = len(g.journal.events)
    for stale in (0, 2, 99):
        result = g.run("stock.adjust", "stock:a", if_match=stale, delta=1)
        assert (result.status, result.code) == (412, "version_conflict")
        assert g.entity_state("stock:a") == before
    assert len(g.journal.events) == events
    assert g.ok("stock.adjust", "stock:a", if_match=1, delta=1).body["version"] == 2

    # a cart never seen is at version 0
    result = g.run("cart.add", "cart:u", if_match=1, sku="a", qty=1, available=5)
    assert (result.status, result.code) == (412, "version_conflict")
    assert "cart:u" not in g.shard.entities
    assert g.ok("cart.add", "cart:u", if_match=0, sku="a", qty=1, available=5).body["version"] == 1


def test_if_match_on_a_read_is_ignored(g: Grid) -> None:
    g.stocked("a", 5)
    assert g.ok("stock.get", "stock:a", if_match=42).body["version"] == 1


# -- failures change nothing ------------------------------------------------------------


def failing_commands() -> list[tuple[str, Command, int, str]]:
    return [
        ("set below reserved", cmd("stock.set", "stock:a", on_hand=2), 409, "insufficient_stock"),
        ("adjust below", cmd("stock.adjust", "stock:a", delta=-8), 409, "insufficient_stock"),
        (
            "reserve too many",
            cmd("stock.reserve", "stock:a", qty=8, ttl_s=9),
            409,
            "insufficient_stock",
        ),
        ("commit unknown", cmd("stock.commit", "stock:a", reservation_id="r0"), 404, "not_found"),
        ("release unknown", cmd("stock.release", "stock:a", reservation_id="r0"), 404, "not_found"),
        ("unknown op", cmd("stock.explode", "stock:a"), 422, "invalid_request"),
        (
            "cart op on stock",
            cmd("cart.add", "stock:a", sku="a", qty=1, available=9),
            422,
            "invalid_request",
        ),
        (
            "add over stock",
            cmd("cart.add", "cart:u", sku="a", qty=7, available=7),
            409,
            "insufficient_stock",
        ),
        (
            "add unknown sku",
            cmd("cart.add", "cart:u", sku="zz", qty=1, available=None),
            404,
            "unknown_sku",
        ),
        (
            "set unknown sku",
            cmd("cart.set", "cart:u", sku="zz", qty=1, available=None),
            404,
            "unknown_sku",
        ),
        (
            "set over stock",
            cmd("cart.set", "cart:u", sku="a", qty=8, available=7),
            409,
            "insufficient_stock",
        ),
        (
            "line too big",
            cmd("cart.set", "cart:u", sku="b", qty=MAX_LINE_QTY + 1, available=10**6),
            422,
            "invalid_request",
        ),
    ]


@pytest.mark.parametrize(
    ("command", "status", "code"),
    [pytest.param(c, s, code, id=name) for name, c, s, code in failing_commands()],
)
def test_a_failed_command_changes_nothing(
    g: Grid, command: Command, status: int, code: str
) -> None:
    g.stocked("a", 10)
    g.reserve("a", 3, ttl_s=600)
    g.ok("cart.add", "cart:u", sku="a", qty=1, available=7)
    before = {key: g.entity_state(key) for key in ("stock:a", "cart:u")}
    events, batches = len(g.journal.events), g.journal.batches
    g.clock.now += 1
    result = g.shard.apply(command)
    assert (result.status, result.code) == (status, code)
    assert result.body is None
    assert result.detail
    assert {key: g.entity_state(key) for key in ("stock:a", "cart:u")} == before
    assert (len(g.journal.events), g.journal.batches) == (events, batches)


def test_a_full_cart_refuses_a_new_line_but_takes_more_of_an_old_one(g: Grid) -> None:
    for i in range(MAX_LINES):
        g.ok("cart.add", "cart:u", sku=f"s{i}", qty=1, available=5)
    before = g.entity_state("cart:u")
    full = g.run("cart.add", "cart:u", sku="new", qty=1, available=5)
    assert (full.status, full.code) == (409, "cart_full")
    assert g.entity_state("cart:u") == before
    assert g.ok("cart.add", "cart:u", sku="s0", qty=1, available=5).body["version"] == MAX_LINES + 1


def test_a_line_holds_at_most_the_maximum(g: Grid) -> None:
    g.ok("cart.set", "cart:u", sku="a", qty=MAX_LINE_QTY, available=MAX_LINE_QTY)
    over = g.run("cart.add", "cart:u", sku="a", qty=1, available=MAX_LINE_QTY * 2)
    assert (over.status, over.code) == (422, "invalid_request")


# -- the journal ---------------------------------------------------------------------------


def test_apply_batch_hands_the_journal_one_group_per_batch(g: Grid) -> None:
    results = g.shard.apply_batch(
        [
            cmd("stock.set", "stock:a", channel="pos", on_hand=5),
            cmd("stock.get", "stock:a"),
            cmd("stock.adjust", "stock:a", channel="web", delta=-1),
            cmd("stock.adjust", "stock:zz", delta=1),  # fails: no event
            cmd("cart.add", "cart:u", channel="h5", sku="a", qty=2, available=4),
            cmd("cart.remove", "cart:u", sku="nope"),  # no-op: no event
        ]
    )
    assert [r.status for r in results] == [200, 200, 200, 404, 200, 200]
    assert g.journal.batches == 1
    got = [(e.kind, e.key, e.version, e.channel, e.op) for e in g.journal.events]
    assert got == [
        ("stock", "stock:a", 1, "pos", "stock.set"),
        ("stock", "stock:a", 2, "web", "stock.adjust"),
        ("cart", "cart:u", 1, "h5", "cart.add"),
    ]
    assert all(isinstance(e, Event) and e.at == T0 for e in g.journal.events)
    assert g.journal.events[1].view == results[2].body
    assert g.journal.events[2].view == results[4].body

    # a batch with nothing changed hands the journal nothing
    g.shard.apply_batch([cmd("stock.get", "stock:a"), cmd("cart.clear", "cart:v")])
    assert g.journal.batches == 1
    assert g.shard.apply_batch([]) == []
    assert g.journal.batches == 1

    g.shard.apply_batch([cmd("cart.clear", "cart:u"), cmd("stock.adjust", "stock:a", delta=1)])
    assert g.journal.batches == 2
    assert [e.op for e in g.journal.events][-2:] == ["cart.clear", "stock.adjust"]


def test_apply_batch_runs_in_order_and_answers_in_order(g: Grid) -> None:
    results = g.shard.apply_batch(
        [
            cmd("stock.set", "stock:a", on_hand=2),
            cmd("stock.reserve", "stock:a", qty=2, ttl_s=5),
            cmd("stock.reserve", "stock:a", qty=1, ttl_s=5),
            cmd("stock.get", "stock:a"),
        ]
    )
    assert [r.status for r in results] == [200, 201, 409, 200]
    assert results[3].body["reserved"] == 2


def test_apply_is_one_batch_per_changing_command(g: Grid) -> None:
    g.stocked("a", 1)
    g.stock("a")
    g.ok("stock.adjust", "stock:a", delta=1)
    assert g.journal.batches == 2
    assert [e.version for e in g.journal.events] == [1, 2]


# -- peek ---------------------------------------------------------------------------------


def test_query(g: Grid) -> None:
    assert g.shard.apply(available("stock:x")).body == {"stock:x": None}
    g.stocked("a", 4)
    g.stocked("b", 0)
    g.reserve("a", 3)
    answer = g.shard.apply(available("stock:a", "stock:b", "stock:never")).body
    assert answer == {"stock:a": 1, "stock:b": 0, "stock:never": None}
    assert g.shard.apply(available()).body == {}
    # a query keeps nothing and changes nothing
    assert set(g.shard.entities) == {"stock:a", "stock:b"}
    assert g.shard.commands[QUERY] == 3
    # only what a kind declares may be asked, and only of that kind
    unknown = g.shard.apply(available("cart:u"))
    assert (unknown.status, unknown.code) == (422, "invalid_request")
    not_declared = g.shard.apply(cmd(QUERY, "stock:a", asks={"stock:a": "stock.on_hand"}))
    assert (not_declared.status, not_declared.code) == (422, "invalid_request")
    # one query may ask entities of several kinds, each its own kind's query
    g.ok("cart.add", "cart:u", sku="a", qty=1, available=1)
    mixed = g.shard.apply(cmd(QUERY, "cart:u", asks={"cart:u": "cart.skus", "stock:a": AVAIL}))
    assert mixed.body == {"cart:u": ["a"], "stock:a": 1}
    # a malformed query from a buggy peer is refused, not a crash of the batch
    for bad in ({}, {"asks": ["stock:a"]}, {"asks": {"stock:a": 7}}):
        refused = g.shard.apply(cmd(QUERY, "stock:a", **bad))
        assert (refused.status, refused.code) == (422, "invalid_request"), bad


def test_a_query_of_a_sku_only_ever_touched_by_a_refused_write_is_unknown(g: Grid) -> None:
    g.run("stock.reserve", "stock:q", qty=1, ttl_s=1)
    assert g.shard.apply(available("stock:q")).body == {"stock:q": None}


# -- introspection --------------------------------------------------------------------------


def test_entity_counts_and_stock_type(g: Grid) -> None:
    every_kind = {kind.name: 0 for kind in kinds()}  # each registered kind has a count
    assert g.shard.entity_counts() == every_kind
    g.stocked("a", 1)
    g.ok("cart.add", "cart:u", sku="a", qty=1, available=1)
    g.cart("never")
    assert g.shard.entity_counts() == every_kind | {"cart": 1, "stock": 1}
    assert isinstance(g.shard.entities["stock:a"], Stock)
    assert g.shard.commands["stock.set"] == 1


def test_a_routes_own_op_sent_to_an_owner_is_refused(g: Grid) -> None:
    """Ops without a handler are run by their route's flow at the gateway."""
    ids = [{"type": "device_id", "value": "d-1"}]
    refused = g.run("identity.resolve", "identity:u", identifiers=ids)
    assert (refused.status, refused.code) == (422, "invalid_request")
    assert "identity:u" not in g.shard.entities
