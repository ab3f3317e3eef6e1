"""Stock and Cart in one shard, against a plain Python model (hypothesis, stateful).

Every rule sends real commands to a ``Shard`` and computes, in the model, what the
answer must be. Reservation expiry is modelled the way the grid promises it: a held
reservation past its ``expires_at`` gives its quantity back the next time its SKU is
touched (any command, a peek, or a tick), one version bump per touch that expires
anything; a tick (run in budgeted slices while ``due()``) must expire everything due by
itself. The invariants compare the shard's entities, read directly (so no check
triggers an expiry of its own), and its journal with the model after every step, and
look ahead on a deep copy of the shard that ticks alone will expire every held
reservation in time.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from omnigrid.actors.cart import Cart
from omnigrid.actors.protocol import Command, Result
from omnigrid.actors.shard import QUERY, SYSTEM_CHANNEL, Shard
from omnigrid.actors.slots import SlotMap
from omnigrid.actors.stock import Stock
from omnigrid.persistence.journal import MemoryJournal

CHANNELS = ("miniprogram", "app", "h5", "wechat_oa", "pos", "web", "alipay", "kiosk")
SKUS = ("a", "b", "c")
NEVER_STOCKED = "zz"  # no rule ever stocks it
UIDS = ("u1", "u2")
T0 = 1_700_000_000.0
TICK_EVERY_S = 5.0

SETTINGS = settings(max_examples=75, stateful_step_count=40, deadline=None, database=None)


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def ts(t: float | None) -> str | None:
    """RFC 3339 UTC with milliseconds, written independently of the code under test."""
    if t is None:
        return None
    d = datetime.fromtimestamp(t, UTC)
    return d.strftime("%Y-%m-%dT%H:%M:%S.") + f"{d.microsecond // 1000:03d}Z"


# -- the model -------------------------------------------------------------------------


@dataclass
class MReservation:
    rid: str
    sku: str
    qty: int
    status: str
    expires_at: float
    ref: str | None
    channel: str


@dataclass
class MStock:
    on_hand: int = 0
    version: int = 0
    updated_at: float | None = None
    stocked_in: int = 0  # every unit ever put on hand by set/adjust
    net_in: int = 0  # what set/adjust added, less what they took away
    committed: int = 0


@dataclass
class MLine:
    qty: int
    added_via: str
    updated_via: str
    updated_at: float


@dataclass
class MCart:
    lines: dict[str, MLine] = field(default_factory=dict)
    version: int = 0
    updated_at: float | None = None


@dataclass(frozen=True)
class How:
    """How a write is sent: its channel, its If-Match and whether it has an Idempotency-Key.

    ``match`` is None for no If-Match, 0 for the current version, else an offset from it.
    """

    channel: str
    match: int | None
    idem: bool


hows = st.builds(
    How,
    channel=st.sampled_from(CHANNELS),
    match=st.one_of(st.none(), st.none(), st.none(), st.just(0), st.sampled_from([-1, 1, 2])),
    idem=st.booleans(),
)
skus = st.sampled_from(SKUS)
cart_skus = st.sampled_from((*SKUS, NEVER_STOCKED))
# a cart line is mostly of a SKU that may be stocked, sometimes of one never stocked
line_skus = st.one_of(skus, skus, skus, st.just(NEVER_STOCKED))
uids = st.sampled_from(UIDS)
durations = st.one_of(st.integers(0, 40), st.floats(0, 40, allow_nan=False))
ttls = st.integers(1, 60)  # whole seconds, as the contract takes them

EventRow = tuple[int, str, str, dict[str, Any]]  # version, channel, op, view


class GridModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = Clock()
        self.journal = MemoryJournal()
        self.shard = Shard(0, SlotMap.even(1), self.journal, clock=self.clock)
        self.stocks: dict[str, MStock] = {}
        self.reservations: dict[str, MReservation] = {}
        self.carts: dict[str, MCart] = {uid: MCart() for uid in UIDS}
        self.events: dict[str, list[EventRow]] = {}
        self.accepted: list[tuple[Command, Result]] = []
        self.seq = itertools.count()

    # -- model helpers ------------------------------------------------------------------

    def held(self, sku: str) -> list[MReservation]:
        return [r for r in self.reservations.values() if r.sku == sku and r.status == "held"]

    def reserved(self, sku: str) -> int:
        return sum(r.qty for r in self.held(sku))

    def available(self, sku: str) -> int | None:
        s = self.stocks.get(sku)
        return None if s is None else s.on_hand - self.reserved(sku)

    def stock_view(self, sku: str) -> dict[str, Any]:
        s = self.stocks[sku]
        return {
            "sku": sku,
            "on_hand": s.on_hand,
            "reserved": self.reserved(sku),
            "available": s.on_hand - self.reserved(sku),
            "version": s.version,
            "updated_at": ts(s.updated_at),
        }

    def reservation_view(self, r: MReservation) -> dict[str, Any]:
        return {
            "reservation_id": r.rid,
            "sku": r.sku,
            "qty": r.qty,
            "status": r.status,
            "expires_at": ts(r.expires_at),
            "ref": r.ref,
            "channel": r.channel,
        }

    def cart_view(self, uid: str) -> dict[str, Any]:
        c = self.carts[uid]
        return {
            "uid": uid,
            "version": c.version,
            "updated_at": ts(c.updated_at),
            "lines": [
                {
                    "sku": sku,
                    "qty": line.qty,
                    "added_via": line.added_via,
                    "updated_via": line.updated_via,
                    "updated_at": ts(line.updated_at),
                }
                for sku, line in c.lines.items()
            ],
        }

    def stock_changed(self, sku: str, channel: str, op: str) -> dict[str, Any]:
        s = self.stocks[sku]
        s.version += 1
        s.updated_at = self.clock.now
        view = self.stock_view(sku)
        self.events.setdefault("stock:" + sku, []).append((s.version, channel, op, view))
        return view

    def cart_changed(self, uid: str, channel: str, op: str) -> dict[str, Any]:
        c = self.carts[uid]
        c.version += 1
        c.updated_at = self.clock.now
        view = self.cart_view(uid)
        self.events.setdefault("cart:" + uid, []).append((c.version, channel, op, view))
        return view

    def touch(self, sku: str) -> bool:
        """The SKU is accessed now: expire what is due; return whether that was a change."""
        if sku not in self.stocks:
            return False
        due = [r for r in self.held(sku) if r.expires_at <= self.clock.now]
        for r in due:
            r.status = "expired"
        if due:
            self.stock_changed(sku, SYSTEM_CHANNEL, "stock.expire")
        return bool(due)

    def stock_version(self, sku: str) -> int:
        s = self.stocks.get(sku)
        return 0 if s is None else s.version

    # -- sending ------------------------------------------------------------------------

    def send(self, op: str, key: str, args: dict[str, Any], how: How, version: int) -> Result:
        """Send a write; ``version`` is the entity's current version, for If-Match."""
        n = next(self.seq)
        idem, fingerprint = (f"k{n}", f"f{n}") if how.idem else (None, None)
        if_match = None if how.match is None else version + how.match
        command = Command(op, key, args, how.channel, idem, fingerprint, if_match)
        result = self.shard.apply(command)
        if idem is not None:
            if result.ok:
                self.accepted.append((command, result))
            else:
                entity = self.shard.entities.get(key)
                assert entity is None or idem not in entity.idempotency
        return result

    def stale(self, result: Result, how: How) -> bool:
        """Whether the write carried a stale If-Match (and so must have been refused)."""
        if how.match is None or how.match == 0:
            return False
        assert (result.status, result.code, result.body) == (412, "version_conflict", None)
        return True

    @staticmethod
    def refused(result: Result, status: int, code: str) -> None:
        assert (result.status, result.code, result.body) == (status, code, None), result

    def peek(self, sku_list: list[str]) -> dict[str, int | None]:
        keys = ["stock:" + sku for sku in sku_list]
        args = {"asks": dict.fromkeys(keys, "stock.available")}
        result = self.shard.apply(Command(QUERY, keys[0], args))
        for sku in sku_list:
            self.touch(sku)
        expected = {sku: self.available(sku) for sku in sku_list}
        assert result == Result(200, {"stock:" + sku: a for sku, a in expected.items()})
        return expected

    # -- stock rules ----------------------------------------------------------------------

    @initialize(on_hand=st.lists(st.integers(5, 30), min_size=2, max_size=2))
    def stock_some(self, on_hand: list[int]) -> None:
        # "a" and "b" start stocked so most runs get to reservations; "c" starts unknown
        for sku, n in zip(("a", "b"), on_hand, strict=True):
            self.set_stock(sku, n, How("pos", None, False))

    def set_stock(self, sku: str, on_hand: int, how: How) -> None:
        self.touch(sku)
        result = self.send(
            "stock.set", "stock:" + sku, {"on_hand": on_hand}, how, self.stock_version(sku)
        )
        if self.stale(result, how):
            return
        if on_hand < self.reserved(sku):
            self.refused(result, 409, "insufficient_stock")
            return
        existed = sku in self.stocks
        s = self.stocks.setdefault(sku, MStock())
        if existed and on_hand == s.on_hand:  # setting what is there changes nothing
            assert result == Result(200, self.stock_view(sku))
            return
        delta = on_hand - s.on_hand
        s.stocked_in += max(delta, 0)
        s.net_in += delta
        s.on_hand = on_hand
        assert result == Result(200, self.stock_changed(sku, how.channel, "stock.set"))

    def adjust(self, sku: str, delta: int, how: How) -> None:
        self.touch(sku)
        result = self.send(
            "stock.adjust",
            "stock:" + sku,
            {"delta": delta, "reason": "count"},
            how,
            self.stock_version(sku),
        )
        if self.stale(result, how):
            return
        s = self.stocks.get(sku)
        if s is None:
            self.refused(result, 404, "unknown_sku")
            return
        if s.on_hand + delta < self.reserved(sku):
            self.refused(result, 409, "insufficient_stock")
            return
        s.on_hand += delta
        s.stocked_in += max(delta, 0)
        s.net_in += delta
        assert result == Result(200, self.stock_changed(sku, how.channel, "stock.adjust"))

    @rule(data=st.data(), op=st.sampled_from(["set", "adjust"]), how=hows)
    def restock(self, data: st.DataObject, op: str, how: How) -> None:
        """Put stock on hand: an absolute count (PUT) or a delta (adjustment)."""
        if op == "set":
            self.set_stock(data.draw(skus), data.draw(st.integers(0, 30)), how)
        else:
            self.adjust(data.draw(cart_skus), data.draw(st.integers(-8, 8).filter(bool)), how)

    @rule(
        sku=skus,
        qty=st.integers(1, 5),
        ttl=ttls,
        ref=st.one_of(st.none(), st.just("order-1")),
        how=hows,
    )
    def reserve(self, sku: str, qty: int, ttl: float, ref: str | None, how: How) -> None:
        self.touch(sku)
        args: dict[str, Any] = {"qty": qty, "ttl_s": ttl}
        if ref is not None:
            args["ref"] = ref
        result = self.send("stock.reserve", "stock:" + sku, args, how, self.stock_version(sku))
        if self.stale(result, how):
            return
        available = self.available(sku)
        if available is None:
            self.refused(result, 404, "unknown_sku")
            return
        if qty > available:
            self.refused(result, 409, "insufficient_stock")
            return
        assert result.status == 201, result
        rid = result.body["reservation_id"]
        assert rid not in self.reservations
        r = MReservation(rid, sku, qty, "held", self.clock.now + ttl, ref, how.channel)
        self.reservations[rid] = r
        self.stock_changed(sku, how.channel, "stock.reserve")
        assert result == Result(201, self.reservation_view(r))

    def send_to_reservation(self, op: str, r: MReservation, how: How) -> Result | None:
        """Send a commit or release; None when the If-Match was stale (and refused)."""
        self.touch(r.sku)
        args = {"reservation_id": r.rid}
        result = self.send(op, "stock:" + r.sku, args, how, self.stock_version(r.sku))
        return None if self.stale(result, how) else result

    def commit(self, r: MReservation, how: How) -> None:
        result = self.send_to_reservation("stock.commit", r, how)
        if result is None:
            return
        if r.status != "held":
            self.refused(result, 409, "reservation_closed")
            return
        r.status = "committed"
        s = self.stocks[r.sku]
        s.on_hand -= r.qty
        s.committed += r.qty
        self.stock_changed(r.sku, how.channel, "stock.commit")
        assert result == Result(200, self.reservation_view(r))

    def release(self, r: MReservation, how: How) -> None:
        result = self.send_to_reservation("stock.release", r, how)
        if result is None:
            return
        if r.status == "committed":
            self.refused(result, 409, "reservation_closed")
            return
        if r.status == "held":
            r.status = "released"
            self.stock_changed(r.sku, how.channel, "stock.release")
        assert result == Result(200, self.reservation_view(r))

    def close_unknown(self, sku: str, op: str, how: How) -> None:
        self.touch(sku)
        result = self.send(
            op, "stock:" + sku, {"reservation_id": "r-none"}, how, self.stock_version(sku)
        )
        if self.stale(result, how):
            return
        if sku in self.stocks:
            self.refused(result, 404, "not_found")
        else:
            self.refused(result, 404, "unknown_sku")

    @rule(data=st.data(), op=st.sampled_from(["commit", "release", "unknown"]), how=hows)
    def close(self, data: st.DataObject, op: str, how: How) -> None:
        """Commit or release a reservation the model knows (or one nobody made)."""
        if op == "unknown" or not self.reservations:
            sku = data.draw(cart_skus)
            close_op = data.draw(st.sampled_from(["stock.commit", "stock.release"]))
            self.close_unknown(sku, close_op, how)
            return
        held = [r for r in self.reservations.values() if r.status == "held"]
        # mostly a reservation still held (the interesting case), sometimes any at all
        pool = list(self.reservations.values())
        if held and data.draw(st.integers(0, 3)) > 0:
            pool = held
        r = data.draw(st.sampled_from(pool))
        if op == "commit":
            self.commit(r, how)
        else:
            self.release(r, how)

    def get_stock(self, sku: str) -> None:
        result = self.shard.apply(Command("stock.get", "stock:" + sku, {}, "app"))
        self.touch(sku)
        if sku in self.stocks:
            assert result == Result(200, self.stock_view(sku))
        else:
            self.refused(result, 404, "unknown_sku")

    def get_reservation(self, r: MReservation) -> None:
        command = Command("stock.reservation", "stock:" + r.sku, {"reservation_id": r.rid})
        result = self.shard.apply(command)
        self.touch(r.sku)
        assert result == Result(200, self.reservation_view(r))

    def get_cart(self, uid: str) -> None:
        result = self.shard.apply(Command("cart.get", "cart:" + uid))
        assert result == Result(200, self.cart_view(uid))

    @rule(data=st.data(), what=st.sampled_from(["stock", "reservation", "peek", "cart"]))
    def read(self, data: st.DataObject, what: str) -> None:
        if what == "stock":
            self.get_stock(data.draw(cart_skus))
        elif what == "reservation" and self.reservations:
            self.get_reservation(
                self.reservations[data.draw(st.sampled_from(list(self.reservations)))]
            )
        elif what == "cart":
            self.get_cart(data.draw(uids))
        else:
            self.peek(data.draw(st.lists(cart_skus, min_size=1, max_size=4)))

    # -- time -------------------------------------------------------------------------------

    def tick(self, budget: int) -> None:
        """The shard's timed work alone must expire everything due, once per SKU.

        It runs in slices of ``budget`` entities while ``due()`` says more is waiting,
        the way a node's loop runs it.
        """
        expected = [sku for sku in SKUS if self.touch(sku)]
        touched = self.shard.tick(budget=budget)
        for _ in range(len(SKUS) + 2):
            if not self.shard.due():
                break
            touched += self.shard.tick(budget=budget)
        assert not self.shard.due()
        assert touched == len(expected)

    @rule(dt=durations, ticking=st.booleans(), budget=st.integers(1, 3))
    def time_passes(self, dt: float, ticking: bool, budget: int) -> None:
        """Move the clock by ``dt``.

        Ticking, the shard's timed work runs every ``TICK_EVERY_S`` on the way (as a node's
        loop runs it) and once at the end; not ticking, expiry waits for an access.
        """
        if ticking:
            end = self.clock.now + dt
            while self.clock.now + TICK_EVERY_S < end:
                self.clock.now += TICK_EVERY_S
                self.tick(budget)
            self.clock.now = end
            self.tick(budget)
        else:
            self.clock.now += dt

    # -- cart rules -------------------------------------------------------------------------

    def check_line(self, uid: str, sku: str, qty: int, available: int | None) -> str | None:
        """The code a line of ``qty`` is refused with, if any (the cart's own rule order)."""
        if available is None:
            return "unknown_sku"
        if qty > available:
            return "insufficient_stock"
        return None

    def put_line(self, uid: str, sku: str, qty: int, channel: str) -> None:
        line = self.carts[uid].lines.get(sku)
        if line is None:
            self.carts[uid].lines[sku] = MLine(qty, channel, channel, self.clock.now)
        else:
            line.qty, line.updated_via, line.updated_at = qty, channel, self.clock.now

    def cart_add(self, uid: str, sku: str, qty: int, how: How) -> None:
        available = self.peek([sku])[sku]  # what the router reads before a cart write
        cart = self.carts[uid]
        args = {"sku": sku, "qty": qty, "available": available}
        result = self.send("cart.add", "cart:" + uid, args, how, cart.version)
        if self.stale(result, how):
            return
        line = cart.lines.get(sku)
        total = qty + (line.qty if line else 0)
        code = self.check_line(uid, sku, total, available)
        if code is not None:
            self.refused(result, 404 if code == "unknown_sku" else 409, code)
            return
        self.put_line(uid, sku, total, how.channel)
        assert result == Result(200, self.cart_changed(uid, how.channel, "cart.add"))

    def cart_set(self, uid: str, sku: str, qty: int, how: How) -> None:
        available = self.peek([sku])[sku]
        cart = self.carts[uid]
        args = {"sku": sku, "qty": qty, "available": available}
        result = self.send("cart.set", "cart:" + uid, args, how, cart.version)
        if self.stale(result, how):
            return
        line = cart.lines.get(sku)
        if qty == 0:
            if line is None:
                assert result == Result(200, self.cart_view(uid))
            else:
                del cart.lines[sku]
                assert result == Result(200, self.cart_changed(uid, how.channel, "cart.set"))
            return
        if line is not None and line.qty == qty:
            assert result == Result(200, self.cart_view(uid))
            return
        code = self.check_line(uid, sku, qty, available)
        if code is not None:
            self.refused(result, 404 if code == "unknown_sku" else 409, code)
            return
        self.put_line(uid, sku, qty, how.channel)
        assert result == Result(200, self.cart_changed(uid, how.channel, "cart.set"))

    def cart_remove(self, uid: str, sku: str, how: How) -> None:
        cart = self.carts[uid]
        result = self.send("cart.remove", "cart:" + uid, {"sku": sku}, how, cart.version)
        if self.stale(result, how):
            return
        if cart.lines.pop(sku, None) is None:
            assert result == Result(200, self.cart_view(uid))
        else:
            assert result == Result(200, self.cart_changed(uid, how.channel, "cart.remove"))

    def cart_clear(self, uid: str, how: How) -> None:
        cart = self.carts[uid]
        result = self.send("cart.clear", "cart:" + uid, {}, how, cart.version)
        if self.stale(result, how):
            return
        if cart.lines:
            cart.lines.clear()
            assert result == Result(200, self.cart_changed(uid, how.channel, "cart.clear"))
        else:
            assert result == Result(200, self.cart_view(uid))

    @rule(data=st.data(), add=st.booleans(), uid=uids, how=hows)
    def cart_line(self, data: st.DataObject, add: bool, uid: str, how: How) -> None:
        """Add to a line, or set its quantity (0 removes it)."""
        sku = data.draw(line_skus)
        if add:
            self.cart_add(uid, sku, data.draw(st.integers(1, 6)), how)
        else:
            self.cart_set(uid, sku, data.draw(st.integers(0, 6)), how)

    @rule(data=st.data(), clear=st.booleans(), uid=uids, how=hows)
    def cart_drop(self, data: st.DataObject, clear: bool, uid: str, how: How) -> None:
        """Remove one line, or clear the cart."""
        if clear:
            self.cart_clear(uid, how)
        else:
            self.cart_remove(uid, data.draw(line_skus), how)

    # -- idempotency --------------------------------------------------------------------------

    def touch_key(self, key: str) -> None:
        kind, _, ident = key.partition(":")
        if kind == "stock":
            self.touch(ident)

    @precondition(lambda self: bool(self.accepted))
    @rule(data=st.data(), reuse=st.booleans())
    def retry(self, data: st.DataObject, reuse: bool) -> None:
        """Send an accepted write again under its Idempotency-Key, same body or not."""
        command, first = data.draw(st.sampled_from(self.accepted))
        self.touch_key(command.key)  # the retry still touches the entity
        if reuse:
            other = Command.from_wire(command.to_wire())
            other.fingerprint = f"{command.fingerprint}-other"
            self.refused(self.shard.apply(other), 422, "idempotency_key_reused")
        else:
            assert self.shard.apply(command) == first

    # -- invariants -----------------------------------------------------------------------------

    @invariant()
    def stock_matches_the_model(self) -> None:
        for sku in (*SKUS, NEVER_STOCKED):
            entity = self.shard.entities.get("stock:" + sku)
            model = self.stocks.get(sku)
            if model is None:
                assert entity is None
                continue
            assert isinstance(entity, Stock)
            held = sum(r.qty for r in entity.reservations.values() if r.status == "held")
            committed = sum(r.qty for r in entity.reservations.values() if r.status == "committed")
            assert entity.reserved == held
            assert entity.on_hand >= 0
            assert entity.available >= 0
            assert committed + held <= model.stocked_in
            assert committed == model.committed
            assert entity.on_hand == model.net_in - committed
            assert entity.view() == self.stock_view(sku)
            assert entity.version == model.version
            assert {rid: entity.reservation_view(r) for rid, r in entity.reservations.items()} == {
                r.rid: self.reservation_view(r) for r in self.reservations.values() if r.sku == sku
            }

    @invariant()
    def carts_match_the_model(self) -> None:
        for uid in UIDS:
            entity = self.shard.entities.get("cart:" + uid)
            if entity is None:
                assert self.carts[uid].version == 0
                assert self.cart_view(uid) == Cart("cart:" + uid, uid).view()
            else:
                assert isinstance(entity, Cart)
                assert entity.view() == self.cart_view(uid)

    @invariant()
    def ticks_alone_will_expire_every_held_reservation(self) -> None:
        """Look ahead on a copy: with no command at all, ticks expire each hold in time.

        A lost deadline shows here as soon as it is lost, not only if a later tick
        happens to land after the hold's expiry with nothing touching the SKU first.
        """
        deadlines = sorted({r.expires_at for r in self.reservations.values() if r.status == "held"})
        if not deadlines:
            return
        shadow = copy.deepcopy(self.shard)
        clock = shadow.clock
        assert isinstance(clock, Clock) and clock is not self.clock
        for when in deadlines:
            clock.now = max(when, self.clock.now)
            shadow.tick()
            for _ in range(len(SKUS) + 2):
                if not shadow.due():
                    break
                shadow.tick()
            for sku in SKUS:
                stock = shadow.entities.get("stock:" + sku)
                if stock is None:
                    continue
                assert isinstance(stock, Stock)
                assert stock.reserved == sum(
                    r.qty for r in self.held(sku) if r.expires_at > clock.now
                ), (sku, clock.now - T0)

    @invariant()
    def journal_matches_the_model(self) -> None:
        got: dict[str, list[EventRow]] = {}
        for e in self.journal.events:
            assert e.kind == e.key.partition(":")[0]
            got.setdefault(e.key, []).append((e.version, e.channel, e.op, e.view))
        assert got == self.events
        for rows in got.values():
            assert [row[0] for row in rows] == list(range(1, len(rows) + 1))


TestGridModel = GridModel.TestCase
TestGridModel.settings = SETTINGS
