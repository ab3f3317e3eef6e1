"""Member(uid): one shopper's points ledger and tier, shared by every channel.

The ledger is append-only: earn, redeem, expire (and later reverse and restore
from orders). Earned points are kept as lots with their expiry; a redemption
takes from the lots that expire soonest, and what is left of a lot at its
``expires_at`` expires by itself (timed work, like a reservation's expiry, so
it survives restarts). An ``external_id`` is applied once: the same one again
changes nothing and answers the current view. The balance can never go below
zero: every redemption is decided by this one entity, one command at a time.

The tier is the highest whose ``min_spend_12m`` the rolling 12-month spend
reaches. Until orders exist, spend comes from explicit spend entries
(``POST /v1/members/{uid}/spend``, a positive amount for a payment, a negative
one for a refund).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

import msgspec

from omnigrid.actors import tiers
from omnigrid.actors.declaration import (
    MAX_COUNT,
    Id,
    Input,
    Kind,
    Op,
    Route,
    Stream,
    View,
)
from omnigrid.actors.entity import Entity, Outcome, intern, newest_first
from omnigrid.actors.member_orders import (
    INSUFFICIENT_POINTS,
    OrderPoints,
    OrderPointsInput,
    order_points,
)
from omnigrid.actors.merged import HandOver, MergeId, MergeState, Restore, Undone
from omnigrid.persistence.events import parse_rfc3339, rfc3339

YEAR_S = 365 * 24 * 3600.0
DEFAULT_EXPIRY_S = YEAR_S
MAX_TEXT = 128
MAX_LEDGER_PAGE = 500
EXPIRING_SHOWN = 5  # lots shown in the view's "expiring"
# query: [12-month spend, points balance, the survivor if merged] (what a checkout reads)
STANDING = "member.standing"


# -- inputs ---------------------------------------------------------------------

Points = Annotated[int, msgspec.Meta(ge=1, le=MAX_COUNT)]
Text = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_TEXT)]


class Earn(Input):
    points: Points
    reason: Text
    external_id: Text
    expires_at: Annotated[str, msgspec.Meta(description="RFC 3339; default a year on")] | None = (
        None
    )

    def __post_init__(self) -> None:
        if self.expires_at is not None:
            parse_rfc3339(self.expires_at, "expires_at")


class Redeem(Input):
    points: Points
    reason: Text
    external_id: Text


class Spend(Input):
    amount: Annotated[
        int,
        msgspec.Meta(ge=-MAX_COUNT, le=MAX_COUNT, description="minor units; negative for a refund"),
    ]
    external_id: Text
    reason: Text | None = None

    def __post_init__(self) -> None:
        if self.amount == 0:
            raise ValueError("amount must not be 0")


class HomeStore(Input):
    store: Id


class LedgerPage(Input):
    limit: Annotated[int, msgspec.Meta(ge=1, le=MAX_LEDGER_PAGE)] = 50
    cursor: Annotated[int, msgspec.Meta(ge=0, description="next_cursor of the page before")] = 0


# -- answers (documentation) ------------------------------------------------------


class Expiring(View):
    points: int
    at: str


class PointsView(View):
    balance: int
    expiring: list[Expiring]


class NextTier(View):
    tier: str
    spend_needed: int


class MemberView(View):
    uid: str
    points: PointsView
    tier: str
    spend_12m: int
    next_tier: NextTier | None
    home_store: str | None
    version: int
    updated_at: str | None


class LedgerEntry(View):
    entry_id: str
    points: Annotated[int, msgspec.Meta(description="signed: + earn/restore, - redeem/expire")]
    kind: Literal["earn", "redeem", "expire", "reverse", "restore"]
    channel: str
    reason: str | None
    external_id: str | None
    order_id: str | None
    at: str
    expires_at: str | None


class LedgerView(View):
    entries: list[LedgerEntry]
    next_cursor: int | None


# -- the entity ---------------------------------------------------------------------


@dataclass(slots=True)
class Entry:
    points: int
    kind: str
    channel: str
    reason: str | None
    external_id: str | None
    order_id: str | None
    at: float
    expires_at: float | None

    def row(self) -> list[Any]:
        return [
            *(self.points, self.kind, self.channel, self.reason, self.external_id),
            *(self.order_id, self.at, self.expires_at),
        ]


class Absorb(Input):
    """Step of a merge on the survivor's member: the merged user's points join it."""

    lots: list[list[Any]]  # [expires_at, points left]
    merge_id: MergeId
    other_uid: Id


class Member(Entity):
    __slots__ = ("applied", "entries", "home_store", "lots", "merge", "orders", "spends")

    kind: ClassVar[str] = "member"

    def __init__(self, key: str, ident: str) -> None:
        super().__init__(key, ident)
        self.entries: list[Entry] = []  # the ledger, oldest first; entry_id = its index
        # earned points not yet redeemed or expired: [expires_at, entry index, left],
        # soonest first
        self.lots: list[list[Any]] = []
        # "<earn|redeem|spend>:<external_id>" -> its entry (spend: its index in spends)
        self.applied: dict[str, int] = {}
        self.spends: list[tuple[float, int]] = []  # (at, amount), oldest first
        self.home_store: str | None = None
        self.merge: MergeState | None = None  # only on users a merge touched
        self.orders: OrderPoints | None = None  # only on members who ordered with points

    def alias(self) -> str | None:
        return self.merge.into if self.merge is not None else None

    # -- reading ------------------------------------------------------------------

    @property
    def balance(self) -> int:
        return sum(lot[2] for lot in self.lots)

    def spend_12m(self, now: float) -> int:
        return sum(amount for at, amount in self.spends if at > now - YEAR_S)

    def view(self) -> dict[str, Any]:
        now = self.updated_at or 0.0
        spend = max(0, self.spend_12m(now))
        tier = tiers.tier_for(spend)
        above = [t for t in tiers.tiers() if t.min_spend_12m > spend]
        return {
            "uid": self.ident,
            "points": {
                "balance": self.balance,
                "expiring": [
                    {"points": left, "at": rfc3339(at)}
                    for at, _, left in self.lots[:EXPIRING_SHOWN]
                ],
            }
            | ({"debt": self.orders.debt} if self.orders is not None and self.orders.debt else {}),
            "tier": tier.tier,
            "spend_12m": spend,
            "next_tier": (
                {"tier": above[0].tier, "spend_needed": above[0].min_spend_12m - spend}
                if above
                else None
            ),
            "home_store": self.home_store,
            "version": self.version,
            "updated_at": rfc3339(self.updated_at),
        } | ({"merged_from": list(self.merge.merged_from)}
             if self.merge is not None and self.merge.merged_from else {})  # fmt: skip

    def entry_view(self, index: int) -> dict[str, Any]:
        e = self.entries[index]
        return {
            "entry_id": str(index),
            "points": e.points,
            "kind": e.kind,
            "channel": e.channel,
            "reason": e.reason,
            "external_id": e.external_id,
            "order_id": e.order_id,
            "at": rfc3339(e.at),
            "expires_at": rfc3339(e.expires_at),
        }

    # -- snapshots --------------------------------------------------------------------

    def kind_state(self) -> Any:
        return [
            [e.row() for e in self.entries],
            self.lots,
            [[at, amount] for at, amount in self.spends],
            self.home_store,
            [[k, i] for k, i in self.applied.items()],
            self.merge.state() if self.merge is not None else None,
            self.orders.state() if self.orders is not None else None,
        ]

    def load_kind_state(self, data: Any) -> None:
        rows, self.lots, spends, self.home_store, applied, *rest = data
        merge, orders = [*rest, None, None][:2]  # both came later: older snapshots lack them
        self.merge = MergeState.load(merge) if merge is not None else None
        self.orders = OrderPoints.load(orders) if orders is not None else None
        self.entries = [
            Entry(p, intern(k), intern(ch), r, x, o, at, exp) for p, k, ch, r, x, o, at, exp in rows
        ]
        self.spends = [(at, amount) for at, amount in spends]
        self.applied = {k: i for k, i in applied}

    # -- timed work ---------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        return self.lots[0][0] if self.lots else None

    def expire(self, now: float) -> bool:
        changed = False
        while self.lots and self.lots[0][0] <= now:
            at, _, left = self.lots.pop(0)
            self._append(Entry(-left, "expire", "system", None, None, None, now, at))
            changed = True
        return changed

    # -- commands -------------------------------------------------------------------------

    def get(self, _: None, channel: str, now: float) -> Outcome:
        return Outcome(200, self.view(), changed=False)

    def ledger(self, page: LedgerPage, channel: str, now: float) -> Outcome:
        # a cursor is an entry_id: the page shows the entries before it
        indexes, next_cursor = newest_first(range(len(self.entries)), page.cursor, page.limit)
        entries = [self.entry_view(i) for i in indexes]
        return Outcome(200, {"entries": entries, "next_cursor": next_cursor}, changed=False)

    def earn(self, inp: Earn, channel: str, now: float) -> Outcome:
        if "earn:" + inp.external_id in self.applied:
            return Outcome(200, None, changed=False)
        expires = parse_rfc3339(inp.expires_at) if inp.expires_at else now + DEFAULT_EXPIRY_S
        entry = Entry(inp.points, "earn", intern(channel), inp.reason, inp.external_id, None,
                      now, expires)  # fmt: skip
        index = self._append(entry)
        if expires > now:
            bisect.insort(self.lots, [expires, index, inp.points])
        else:  # already past: earned and expired at once, so the ledger still tells it
            self._append(Entry(-inp.points, "expire", "system", None, None, None, now, expires))
        return Outcome(200, None, changed=True)

    def redeem(self, inp: Redeem, channel: str, now: float) -> Outcome:
        if "redeem:" + inp.external_id in self.applied:
            return Outcome(200, None, changed=False)
        balance = self.balance
        if inp.points > balance:
            raise INSUFFICIENT_POINTS(f"asked to redeem {inp.points}, the balance is {balance}")
        self.take(inp.points)
        entry = Entry(-inp.points, "redeem", intern(channel), inp.reason, inp.external_id, None,
                      now, None)  # fmt: skip
        self._append(entry)
        return Outcome(200, None, changed=True)

    def take(self, points: int) -> list[list[Any]]:
        """Take ``points`` (at most the balance) from the soonest-expiring lots:
        ``[expires_at, points]`` per lot taken from."""
        taken: list[list[Any]] = []
        while points and self.lots:
            lot = self.lots[0]
            part = min(points, lot[2])
            lot[2] -= part
            points -= part
            taken.append([lot[0], part])
            if lot[2] == 0:
                self.lots.pop(0)
        return taken

    def book(
        self,
        points: int,
        kind: str,
        channel: str,
        reason: str,
        order_id: str,
        now: float,
        expires: float | None = None,
    ) -> None:
        """A ledger entry of an order's; points given (``expires``) become a lot."""
        entry = Entry(points, kind, intern(channel), reason, None, order_id, now, expires)
        index = self._append(entry)
        if expires is not None and points > 0:
            if expires > now:
                bisect.insort(self.lots, [expires, index, points])
            else:
                self._append(Entry(-points, "expire", "system", None, None, None, now, expires))

    def spend(self, inp: Spend, channel: str, now: float) -> Outcome:
        changed = self.record_spend("spend:" + inp.external_id, inp.amount, now)
        return Outcome(200, None, changed=changed)

    def record_spend(self, key: str, amount: int, now: float) -> bool:
        """A payment (+) or refund (-) toward the 12-month spend, once per ``key``."""
        if key in self.applied:
            return False
        self.applied[key] = len(self.spends)
        self.spends.append((now, amount))
        horizon = now - YEAR_S  # older spend no longer counts: forget it
        while self.spends and self.spends[0][0] <= horizon:
            self.spends.pop(0)
        return True

    # -- a merge's steps (actors/merge.py) -------------------------------------------

    def hand_over(self, inp: HandOver, channel: str, now: float) -> Outcome:
        merge = self.merge = self.merge or MergeState()
        if inp.merge_id in merge.done:  # run again: the same lots as the first time
            return Outcome(200, merge.done[inp.merge_id], changed=False)
        lots = [[at, left] for at, _, left in self.lots]
        if lots:
            self._append(Entry(-self.balance, "reverse", intern(channel),
                               f"merged into {inp.into}", None, None, now, None))  # fmt: skip
        self.lots = []
        merge.done[inp.merge_id], merge.into = lots, inp.into
        return Outcome(200, lots, changed=True)

    def absorb(self, inp: Absorb, channel: str, now: float) -> Outcome:
        merge = self.merge = self.merge or MergeState()
        if inp.merge_id in merge.done:
            return Outcome(200, None, changed=False)
        brought = []
        for expires, points in inp.lots:
            entry = Entry(points, "restore", intern(channel), f"merged from {inp.other_uid}",
                          None, None, now, expires)  # fmt: skip
            index = self._append(entry)
            bisect.insort(self.lots, [expires, index, points])
            brought.append(index)
        merge.done[inp.merge_id] = brought
        merge.merged_from.append(inp.other_uid)
        return Outcome(200, None, changed=True)

    def give_back(self, inp: Undone, channel: str, now: float) -> Outcome:
        """Undo on the survivor: what is left of the points the merge brought."""
        merge = self.merge
        back = "back:" + inp.merge_id
        if merge is None or back in merge.done:
            return Outcome(200, merge.done[back] if merge else [], changed=False)
        brought = set(merge.done.get(inp.merge_id) or ())
        left = [[at, points] for at, index, points in self.lots if index in brought]
        self.lots = [lot for lot in self.lots if lot[1] not in brought]
        if left:
            reason = f"merge with {inp.other_uid} undone"
            taken = -sum(p for _, p in left)
            self._append(Entry(taken, "reverse", intern(channel), reason, None, None, now, None))
        merge.done[back] = left  # kept: a step run again gives back the same
        self.merge = merge.unmerged(inp.merge_id, inp.other_uid)
        return Outcome(200, left, changed=True)

    def restore(self, inp: Restore, channel: str, now: float) -> Outcome:
        """Undo on the merged user: the points given back, and no alias."""
        if self.merge is None or inp.merge_id not in self.merge.done:
            return Outcome(200, None, changed=False)
        for expires, points in inp.given:
            entry = Entry(points, "restore", intern(channel), "merge undone", None, None, now,
                          expires)  # fmt: skip
            index = self._append(entry)
            if expires > now:
                bisect.insort(self.lots, [expires, index, points])
            else:
                self._append(Entry(-points, "expire", "system", None, None, None, now, expires))
        self.merge = self.merge.given_back(inp.merge_id)
        return Outcome(200, None, changed=True)

    def set_home(self, inp: HomeStore, channel: str, now: float) -> Outcome:
        """The store a member belongs to (set when a resolve at a store creates the uid)."""
        changed = inp.store != self.home_store
        self.home_store = inp.store
        return Outcome(200, None, changed=changed)

    def _append(self, entry: Entry) -> int:
        self.entries.append(entry)
        index = len(self.entries) - 1
        if entry.external_id is not None:  # one namespace per kind of entry
            self.applied[f"{entry.kind}:{entry.external_id}"] = index
        return index


KIND = Kind(
    name="member",
    scope="members",
    entity=Member,
    ident="uid",
    view=MemberView,
    ops=(
        Op("member.get", Member.get, read=True),
        Op("member.ledger", Member.ledger, LedgerPage, read=True),
        Op("member.earn", Member.earn, Earn),
        Op("member.redeem", Member.redeem, Redeem),
        Op("member.spend", Member.spend, Spend),
        Op("member.order_points", order_points, OrderPointsInput),
        Op("member.home", Member.set_home, HomeStore),
        Op("member.tiers", None, read=True),
        Op("member.hand_over", Member.hand_over, HandOver, on_alias=True),
        Op("member.absorb", Member.absorb, Absorb),
        Op("member.give_back", Member.give_back, Undone),
        Op("member.restore", Member.restore, Restore, on_alias=True),
    ),
    routes=(
        Route(
            "GET",
            "/v1/members/{uid}",
            "get_member",
            "member.get",
            "Read a member: points, tier, spend",
            MemberView,
        ),
        Route(
            "POST",
            "/v1/members/{uid}/points/earn",
            "earn_points",
            "member.earn",
            "Earn points (an external_id applies once)",
            MemberView,
        ),
        Route(
            "POST",
            "/v1/members/{uid}/points/redeem",
            "redeem_points",
            "member.redeem",
            "Redeem points; never below a balance of 0",
            MemberView,
            refusals=("insufficient_points",),
        ),
        Route(
            "GET",
            "/v1/members/{uid}/points/ledger",
            "points_ledger",
            "member.ledger",
            "The points ledger, newest first",
            LedgerView,
            query_fields=("limit", "cursor"),
        ),
        Route(
            "POST",
            "/v1/members/{uid}/spend",
            "record_spend",
            "member.spend",
            "Record a payment (+) or refund (-) toward the 12-month spend",
            MemberView,
        ),
        Route(
            "GET",
            "/v1/tiers",
            "tiers",
            "member.tiers",
            "The tier table: spend thresholds, discounts, points per unit",
            list[tiers.TierView],
            flow=tiers.tier_table,
            scope="",
        ),
    ),
    stream=Stream(
        "/v1/streams/users/{uid}",
        "user_stream",
        "Server-Sent Events: every change to the user's cart and membership "
        "(resumable with Last-Event-ID)",
    ),
    queries={
        STANDING: lambda m: [m.spend_12m(m.updated_at or 0.0), m.balance, m.alias()],
        "member.home": lambda m: m.home_store,  # a store-bound key's check (api/http/guard.py)
    },
    refusals=(INSUFFICIENT_POINTS,),
)
