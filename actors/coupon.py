"""Coupon(code): a discount an order holds while pending and consumes when paid.

Defined once (``POST /v1/coupons``), never edited: an amount off (at most the
eligible lines' total) or a percentage (rounded down), on the lines whose SKU or
category it names (every line if neither), on the channels it names (all if
none), from ``valid_from`` until (not at) ``valid_until``. The same definition
again answers the coupon; another is 409 ``coupon_exists``. A coupon with a
``uid`` is that user's alone, listed in their wallet (actors/wallet.py).

A checkout saga takes it through ``coupon.hold`` (pending order), then
``coupon.consume`` (paid) or ``coupon.release`` (expired, cancelled), maybe
``coupon.restore`` (paid, then cancelled or refunded): each keyed by the order
id and safe to send twice, as a saga resends a step after a crash. The limits
count holds too, and this one entity decides every hold, one command at a time:
raced from every channel, a coupon is never taken more than ``max_redemptions``
times, nor ``per_uid`` times by one uid. A release that overtakes its hold
leaves a tombstone, so that straggling hold is refused, not left holding.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import asdict, astuple, dataclass
from typing import Annotated, Any, ClassVar, Literal

import msgspec

from omnigrid.actors import identifiers
from omnigrid.actors.declaration import (
    ID_PATTERN,
    MAX_COUNT,
    Grid,
    Id,
    Input,
    Kind,
    Op,
    Query,
    QueryFamilies,
    Refusal,
    Route,
    View,
    answer,
    check_id,
)
from omnigrid.actors.entity import Entity, Outcome, intern
from omnigrid.actors.errors import GridError, InvalidRequest
from omnigrid.actors.pricing import split
from omnigrid.actors.protocol import Command
from omnigrid.persistence.events import parse_rfc3339, rfc3339

MAX_SKUS = 500
MAX_CATEGORIES = 100
MAX_CHANNELS = 32
MAX_LINES = 500  # an order's lines in one hold (a cart holds at most 200)
HELD, CONSUMED, RELEASED, RESTORED = "held", "consumed", "released", "restored"
VIEW = "coupon.view"  # query: the view (None: no coupon)
USAGE = "coupon.usage:"  # query family, "coupon.usage:<uid>": what `usable` needs for a uid
WALLET_ADD = "wallet.add"  # actors/wallet.py's op (it imports this module, not back)

COUPON_INVALID = Refusal("coupon_invalid", 409, "Coupon invalid")
COUPON_EXISTS = Refusal("coupon_exists", 409, "Coupon exists")

# -- inputs ---------------------------------------------------------------------

Money = Annotated[int, msgspec.Meta(ge=0, le=MAX_COUNT, description="minor units")]
Count = Annotated[int, msgspec.Meta(ge=1, le=MAX_COUNT)]
Category = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Channel = Annotated[str, msgspec.Meta(pattern=ID_PATTERN, max_length=32)]
Time = Annotated[str, msgspec.Meta(max_length=40, description="RFC 3339")]


class CouponCreate(Input):
    kind: Literal["amount", "percent"]
    value: Annotated[int, msgspec.Meta(ge=1, le=MAX_COUNT, description="amount: minor units; "
                                       "percent: 1-100")]  # fmt: skip
    code: Annotated[Id | None, msgspec.Meta(description="none: the grid makes one")] = None
    uid: Annotated[Id | None, msgspec.Meta(description="issued to; none: an open code")] = None
    min_spend: Money = 0
    skus: Annotated[list[Id], msgspec.Meta(max_length=MAX_SKUS)] | None = None
    categories: Annotated[list[Category], msgspec.Meta(max_length=MAX_CATEGORIES)] | None = None
    channels: Annotated[list[Channel], msgspec.Meta(max_length=MAX_CHANNELS)] | None = None
    valid_from: Time | None = None
    valid_until: Time | None = None
    max_redemptions: Count = 1
    per_uid: Count = 1
    restore_on_refund: bool = False

    def __post_init__(self) -> None:
        for what, one in (("code", self.code), ("uid", self.uid)):
            if one is not None:
                check_id(one, what)
        for what, many in (("skus", self.skus), ("channels", self.channels)):
            for one in many or ():
                check_id(one, what + "[]")
        if self.kind == "percent" and self.value > 100:
            raise ValueError("a percent coupon's value is 1-100")
        start = None if self.valid_from is None else parse_rfc3339(self.valid_from, "valid_from")
        end = None if self.valid_until is None else parse_rfc3339(self.valid_until, "valid_until")
        if start is not None and end is not None and end <= start:
            raise ValueError("valid_until must be after valid_from")


# [sku, category or None, amount]: a line's price after the tier discount
Line = tuple[Id, Category | None, Money]


class Hold(Input):
    order_id: Id
    uid: Id
    channel: Channel  # the order's
    lines: Annotated[list[Line], msgspec.Meta(min_length=1, max_length=MAX_LINES)]

    def __post_init__(self) -> None:
        check_id(self.order_id, "order_id")
        check_id(self.uid, "uid")


class OrderRef(Input):
    order_id: Id


class Restore(Input):
    order_id: Id
    cancel: bool = False  # a cancelled order always gets its coupon back; a refund by rule


# -- answers (documentation) ------------------------------------------------------


class CouponView(View):
    coupon_id: str
    code: str
    uid: str | None
    kind: Literal["amount", "percent"]
    value: int
    min_spend: int
    skus: list[str] | None
    categories: list[str] | None
    channels: Annotated[list[str] | None, msgspec.Meta(description="null: every channel")]
    valid_from: str | None
    valid_until: str | None
    max_redemptions: int
    per_uid: int
    restore_on_refund: bool
    redemptions: Annotated[int, msgspec.Meta(description="consumed by paid orders")]
    held: Annotated[int, msgspec.Meta(description="held by pending orders")]
    version: int
    updated_at: str | None


class ListedCoupon(CouponView):
    usable: Annotated[bool, msgspec.Meta(description="the user may use it on the channel now")]


# -- the entity ---------------------------------------------------------------------


@dataclass(slots=True)
class Terms:
    """A coupon's definition: fixed at creation; a re-creation must match it."""

    uid: str | None
    kind: str
    value: int
    min_spend: int
    skus: list[str] | None  # None: no restriction (an empty list is none either)
    categories: list[str] | None
    channels: list[str] | None
    valid_from: float | None
    valid_until: float | None
    max_redemptions: int
    per_uid: int
    restore_on_refund: bool

    @classmethod
    def of(cls, inp: CouponCreate) -> Terms:
        def unique(items: list[str] | None) -> list[str] | None:
            return list(dict.fromkeys(items)) if items else None

        start = None if inp.valid_from is None else parse_rfc3339(inp.valid_from)
        end = None if inp.valid_until is None else parse_rfc3339(inp.valid_until)
        return cls(inp.uid, inp.kind, inp.value, inp.min_spend, unique(inp.skus),
                   unique(inp.categories), unique(inp.channels), start, end,
                   inp.max_redemptions, inp.per_uid, inp.restore_on_refund)  # fmt: skip

    def row(self) -> list[Any]:
        return list(astuple(self))

    def why_not(self, uid: str, channel: str, now: float, taken: int, mine: int) -> str | None:
        """Why ``uid`` may not take the coupon on ``channel`` at ``now`` (None: it may),
        given its holds and redemptions: ``taken`` by everyone, ``mine`` by ``uid``."""
        if self.valid_from is not None and now < self.valid_from:
            return f"not valid before {rfc3339(self.valid_from)}"
        if self.valid_until is not None and now >= self.valid_until:
            return f"expired at {rfc3339(self.valid_until)}"
        if self.channels and channel not in self.channels:
            return f"not valid on channel {channel!r}"
        if self.uid is not None and uid != self.uid:
            return "issued to another user"  # never says to whom
        if taken >= self.max_redemptions:
            return f"redeemed or held {taken} of {self.max_redemptions} times"
        if mine >= self.per_uid:
            return f"this user redeemed or holds it {mine} of {self.per_uid} times"
        return None


def discount_on(
    code: str,
    t: Terms,
    lines: Sequence[Sequence[Any]],
    uid: str,
    channel: str,
    now: float,
    taken: int,
    mine: int,
) -> tuple[int, list[int]]:
    """What the coupon takes off these lines (``[sku, category, amount]``): the discount
    and its split over them. Refused (``coupon_invalid``) with the reason it cannot be
    used. The hold decides; a checkout asks first, to refuse before it holds anything."""
    why = t.why_not(uid, channel, now, taken, mine)
    if why is not None:
        raise COUPON_INVALID(f"{code}: {why}")
    skus, categories = set(t.skus or ()), set(t.categories or ())
    every = not skus and not categories  # neither named: every line
    covered = [every or s in skus or c in categories for s, c, _ in lines]
    if not any(covered):
        raise COUPON_INVALID(f"{code}: no line is eligible")
    amounts = [a if ok else 0 for ok, (_, _, a) in zip(covered, lines, strict=True)]
    eligible = sum(amounts)
    if eligible < t.min_spend:
        raise COUPON_INVALID(
            f"{code}: the eligible lines come to {eligible}, below its minimum spend of "
            f"{t.min_spend}"
        )
    discount = min(t.value, eligible) if t.kind == "amount" else eligible * t.value // 100
    if discount == 0:  # it would use the coupon up for nothing
        raise COUPON_INVALID(f"{code}: no discount on these lines")
    return discount, split(discount, amounts)


class Coupon(Entity):
    __slots__ = ("by_uid", "held", "orders", "redemptions", "terms")

    kind: ClassVar[str] = "coupon"

    def __init__(self, key: str, ident: str) -> None:
        super().__init__(key, ident)
        self.terms: Terms | None = None  # None: never created
        # order_id -> [uid, status, discount, per-line discounts], oldest first;
        # a tombstone (a release before its hold) is [None, "released", 0, []]
        self.orders: dict[str, list[Any]] = {}
        # derived from orders, never stored: the counts every hold checks
        self.redemptions = 0  # consumed
        self.held = 0
        self.by_uid: dict[str, int] = {}  # uid -> consumed + held

    def view(self) -> dict[str, Any]:
        t = self.terms or NO_TERMS
        times = {"valid_from": rfc3339(t.valid_from), "valid_until": rfc3339(t.valid_until)}
        return {"coupon_id": self.ident, "code": self.ident, **asdict(t), **times,
                "redemptions": self.redemptions, "held": self.held, "version": self.version,
                "updated_at": rfc3339(self.updated_at)}  # fmt: skip

    def usage(self, uid: str) -> list[Any] | None:
        """What ``usable`` needs to decide for ``uid`` at the gateway (actors/wallet.py)."""
        if self.terms is None:
            return None
        return [self.terms.row(), self.view(), self.by_uid.get(uid, 0)]

    # -- snapshots --------------------------------------------------------------------

    def kind_state(self) -> Any:
        terms = self.terms.row() if self.terms is not None else None
        return [terms, [[order_id, *row] for order_id, row in self.orders.items()]]

    def load_kind_state(self, data: Any) -> None:
        terms, rows = data
        self.terms = Terms(*terms) if terms is not None else None
        self.orders = {}
        self.redemptions = self.held = 0
        self.by_uid = {}
        for order_id, uid, status, discount, lines in rows:
            self.orders[order_id] = [uid, intern(status), discount, lines]
            self._count(uid, status, 1)

    # -- commands -------------------------------------------------------------------------

    def get(self, _: None, channel: str, now: float) -> Outcome:
        if self.terms is None:
            raise GridError("not_found", f"no coupon {self.ident!r}")
        return Outcome(200, self.view(), changed=False)

    def create(self, inp: CouponCreate, channel: str, now: float) -> Outcome:
        terms = Terms.of(inp)
        if inp.code is not None and inp.code != self.ident:
            raise InvalidRequest(f"code {inp.code!r} is not {self.ident!r}")
        if self.terms is not None:
            if terms != self.terms:
                raise COUPON_EXISTS(f"coupon {self.ident!r} exists with another definition")
            return Outcome(201, self.view(), changed=False)  # the same again: as it is
        self.terms = terms
        return Outcome(201, None, changed=True)

    def hold(self, inp: Hold, channel: str, now: float) -> Outcome:
        row = self.orders.get(inp.order_id)
        if row is not None:  # this order's hold again: the first answer, nothing twice
            if row[1] == RELEASED:
                raise COUPON_INVALID(f"{self.ident} was released for order {inp.order_id}")
            return Outcome(200, self._held(row), changed=False)
        taken, mine = self.redemptions + self.held, self.by_uid.get(inp.uid, 0)
        discount, shares = discount_on(self.ident, self._terms(), inp.lines, inp.uid,
                                       inp.channel, now, taken, mine)  # fmt: skip
        row = [inp.uid, HELD, discount, shares]
        self.orders[inp.order_id] = row
        self._count(inp.uid, HELD, 1)
        return Outcome(200, self._held(row), changed=True)

    def release(self, inp: OrderRef, channel: str, now: float) -> Outcome:
        if self.terms is None:  # no coupon: nothing to give back, nothing could be held
            return Outcome(200, self._status(inp.order_id), changed=False)
        row = self.orders.get(inp.order_id)
        if row is None:  # overtook its hold: the hold is refused when it comes
            self.orders[inp.order_id] = [None, RELEASED, 0, []]
        elif row[1] == HELD:
            self._move(row, RELEASED)
        else:  # released already, or paid: a paid order's coupon is restored, not released
            return Outcome(200, self._status(inp.order_id), changed=False)
        return Outcome(200, self._status(inp.order_id), changed=True)

    def consume(self, inp: OrderRef, channel: str, now: float) -> Outcome:
        row = self._order(inp.order_id)
        if row[1] == RELEASED:
            raise COUPON_INVALID(f"{self.ident} was released for order {inp.order_id}")
        if row[1] != HELD:  # consumed already (and maybe restored since)
            return Outcome(200, self._status(inp.order_id), changed=False)
        self._move(row, CONSUMED)
        return Outcome(200, self._status(inp.order_id), changed=True)

    def restore(self, inp: Restore, channel: str, now: float) -> Outcome:
        row = self._order(inp.order_id)
        if row[1] != CONSUMED or not (inp.cancel or self._terms().restore_on_refund):
            return Outcome(200, self._status(inp.order_id), changed=False)
        self._move(row, RESTORED)
        return Outcome(200, self._status(inp.order_id), changed=True)

    # -- helpers ----------------------------------------------------------------------------

    def _terms(self) -> Terms:
        if self.terms is None:
            raise COUPON_INVALID(f"no coupon {self.ident!r}")
        return self.terms

    def _order(self, order_id: str) -> list[Any]:
        self._terms()
        row = self.orders.get(order_id)
        if row is None:
            raise COUPON_INVALID(f"no hold of {self.ident} for order {order_id}")
        return row

    def _held(self, row: list[Any]) -> dict[str, Any]:
        return {"code": self.ident, "discount": row[2], "lines": list(row[3])}

    def _status(self, order_id: str) -> dict[str, Any]:
        row = self.orders.get(order_id)
        return {"code": self.ident, "order_id": order_id,
                "status": row[1] if row else None, "discount": row[2] if row else 0}  # fmt: skip

    def _move(self, row: list[Any], status: str) -> None:
        self._count(row[0], row[1], -1)
        row[1] = status
        self._count(row[0], status, 1)

    def _count(self, uid: str | None, status: str, by: int) -> None:
        if status == HELD:
            self.held += by
        elif status == CONSUMED:
            self.redemptions += by
        else:
            return
        if uid is not None:
            mine = self.by_uid.get(uid, 0) + by
            if mine:
                self.by_uid[uid] = mine
            else:
                del self.by_uid[uid]


NO_TERMS = Terms(None, "amount", 0, 0, None, None, None, None, None, 0, 0, False)


# -- at the gateway ---------------------------------------------------------------------


def new_code(idempotency_key: str | None, channel: str) -> str:
    """A code for a coupon created without one. With an Idempotency-Key it is derived
    from it (keyed by the deployment's secret, scoped to the channel), so a retry
    names the same coupon and meets its idempotency record; else random."""
    if idempotency_key is not None and identifiers.configured():
        return "C" + identifiers.digest("coupon_code", idempotency_key, channel)[:12].upper()
    return "C" + secrets.token_hex(6).upper()


async def create(grid: Grid, cmd: Command) -> tuple[int, Any]:
    """Pick the coupon's key (its code, given or made), create it, then list it in its
    user's wallet (again on a re-creation: a crash may have come in between)."""
    code = cmd.args.get("code") or new_code(cmd.idempotency_key, cmd.channel)
    made = Command(cmd.op, KIND.key(code), {**cmd.args, "code": code}, cmd.channel,
                   cmd.idempotency_key, cmd.fingerprint, cmd.if_match)  # fmt: skip
    status, view = answer(await grid.call(made))
    if view["uid"] is not None:
        add = Command(WALLET_ADD, f"wallet:{view['uid']}", {"code": code}, cmd.channel)
        answer(await grid.call(add))
    return status, view


def _usage(uid: str) -> Query:
    """``coupon.usage:<uid>``: what ``usable`` needs, for one uid (never none)."""
    if not uid:
        raise KeyError(USAGE)
    return lambda c: c.usage(uid)


# ``coupon.view``, and the family ``coupon.usage:<uid>``, so that one query reads many
# coupons for one uid (its count is one of thousands)
QUERIES = QueryFamilies(
    {VIEW: lambda c: c.view() if c.terms is not None else None}, {USAGE: _usage}
)


KIND = Kind(
    name="coupon",
    entity=Coupon,
    ident="code",
    view=CouponView,
    ops=(
        Op("coupon.get", Coupon.get, read=True),
        Op("coupon.create", Coupon.create, CouponCreate),
        Op("coupon.hold", Coupon.hold, Hold),
        Op("coupon.release", Coupon.release, OrderRef),
        Op("coupon.consume", Coupon.consume, OrderRef),
        Op("coupon.restore", Coupon.restore, Restore),
    ),
    routes=(
        Route(
            "POST",
            "/v1/coupons",
            "create_coupon",
            "coupon.create",
            "Create a coupon (no code: the grid makes one); the same definition again "
            "answers it, another is 409 coupon_exists",
            CouponView,
            status=201,
            refusals=("coupon_exists",),
            flow=create,
            scope="coupons:write",
        ),
        Route(
            "GET",
            "/v1/coupons/{code}",
            "get_coupon",
            "coupon.get",
            "Read a coupon, its redemptions and holds",
            CouponView,
            refusals=("not_found",),
            scope="",
        ),
    ),
    queries=QUERIES,
    refusals=(COUPON_INVALID, COUPON_EXISTS),
)
