"""Order(order_id): one purchase, its state machine, and the saga that carries it out.

An order is the coordinator of everything a purchase touches on other shards
(stock, coupons, the member's points and spend, the cart, the order lists).
It never waits on them while it decides: each command here *decides* (a
checkout priced, a payment accepted, a refund approved, a deadline passed)
and leaves the work that decision owes other entities in its ``outbox``, as
plain commands, journaled with the decision. The saga (actors/order_saga.py)
sends them and records them sent; every one of them is safe to send twice, so
a crash at any point only means they are sent again, by whichever process
owns the order when it recovers (``next_deadline`` wakes it).

Statuses: ``reserving`` (a checkout placing its holds; not shown) then
``pending``, or ``refused`` (not shown; its holds given back); then the
contract's moves. A pending order past ``pay_by`` expires by itself: its
stock, coupons and points are given back.
"""

from __future__ import annotations

import secrets
from typing import Any, ClassVar

from omnigrid.actors.entity import Entity, Outcome, intern
from omnigrid.actors.errors import GridError
from omnigrid.actors.order_inputs import (
    INVALID_TRANSITION,
    ORDER_EXPIRED,
    REFUND_EXCEEDS_ORDER,
    Approve,
    Begin,
    Pay,
    Priced,
    RefundRequest,
    Refuse,
    Sent,
    Transition,
)
from omnigrid.actors.order_lines import (
    Line,
    Refund,
    merged,
    refund_amount,
    refund_parts,
    refundable,
)
from omnigrid.actors.pricing import points_earned, price_lines, split
from omnigrid.actors.product import CURRENCY
from omnigrid.persistence.events import rfc3339

HIDDEN = ("", "reserving", "refused")  # a checkout not (or never) placed: not an order yet
SETTLE_S = 2.0  # an outbox nobody has sent for this long is sent by the order's owner
NOTE_SETTLE_S = 60.0  # the same for an outbox of notes only (see Order._owe)
RESERVE_SETTLE_S = 10.0  # a checkout placing holds this long is abandoned, its holds given back
REFUNDABLE = ("paid", "packed", "shipped", "ready_for_pickup", "completed")
MOVES = {  # (fulfilment, from) -> where a transition may go
    ("delivery", "paid"): ("packed",),
    ("delivery", "packed"): ("shipped",),
    ("delivery", "shipped"): ("completed",),
    ("pickup", "paid"): ("ready_for_pickup",),
    ("pickup", "ready_for_pickup"): ("completed",),
}
NOTE = "note"  # an outbox entry for the order lists: sent with the order's view then


class Order(Entity):
    __slots__ = ("coupons", "lines", "outbox", "p", "refunds", "refusal", "sent_upto", "status")

    kind: ClassVar[str] = "order"

    def __init__(self, key: str, ident: str) -> None:
        super().__init__(key, ident)
        self.status = ""
        # the plan: uid, channel, store, fulfilment, pickup_store, tier, points_per_unit,
        # points, pay_by, payment_ref, history [[status, channel, at]], problems
        self.p: dict[str, Any] = {}
        self.lines: list[Line] = []
        self.coupons: list[str] = []
        self.refunds: list[Refund] = []
        self.refusal: list[Any] | None = None  # a refused checkout's [code, detail, extra]
        self.outbox: list[list[Any]] = []  # [op, key, args, idempotent-by-key]: not sent yet
        self.sent_upto = 0  # how many outbox entries were ever sent (their numbering)

    # -- reading ------------------------------------------------------------------

    @property
    def placed(self) -> bool:
        return self.status not in HIDDEN

    def view(self) -> dict[str, Any]:
        p = self.p
        subtotal = sum(ln.unit_price * ln.qty for ln in self.lines)
        discount = sum(ln.discount for ln in self.lines)
        return {
            "order_id": self.ident,
            "uid": p.get("uid"),
            "status": self.status if self.placed else None,
            "channel": p.get("channel"),
            "store": p.get("store"),
            "fulfilment": p.get("fulfilment"),
            "pickup_store": p.get("pickup_store"),
            "lines": [
                {
                    "sku": ln.sku,
                    "qty": ln.qty,
                    "unit_price": ln.unit_price,
                    "discount": ln.discount,
                    "total": ln.total,
                    "refunded_qty": ln.refunded,
                }
                for ln in self.lines
            ],
            "subtotal": subtotal,
            "discount": discount,
            "points_redeemed": p.get("points", 0),
            "points_earned": sum(ln.earned for ln in self.lines),
            "total": subtotal - discount - p.get("points", 0),
            "currency": CURRENCY,
            "coupons": list(self.coupons),
            "pay_by": rfc3339(p.get("pay_by")),
            "payment_ref": p.get("payment_ref"),
            "history": [
                {"status": s, "channel": c, "at": rfc3339(at)} for s, c, at in p.get("history", [])
            ],
            "refunds": [r.view() for r in self.refunds],
            "version": self.version,
            "updated_at": rfc3339(self.updated_at),
        }

    def saga(self, view: dict[str, Any] | None = None) -> dict[str, Any]:
        """What the saga needs: the view, the refusal and the outbox still to send."""
        # what a coupon sees of each line: [sku, category, amount after the tier discount]
        lines = [[ln.sku, ln.category, ln.unit_price * ln.qty - ln.tier_off] for ln in self.lines]
        return {
            "view": view if view is not None else self.view(),
            "status": self.status,
            "refusal": self.refusal,
            "outbox": self.outbox,
            "sent_upto": self.sent_upto,
            "coupon_lines": lines,
        }

    # -- snapshots -------------------------------------------------------------------

    def kind_state(self) -> Any:
        return [
            self.status,
            self.p,
            [ln.row() for ln in self.lines],
            self.coupons,
            [r.row() for r in self.refunds],
            self.refusal,
            self.outbox,
            self.sent_upto,
        ]

    def load_kind_state(self, data: Any) -> None:
        status, self.p, lines, self.coupons, refunds, self.refusal, self.outbox, self.sent_upto = (
            data
        )
        self.status = intern(status)
        self.lines = [Line(*row) for row in lines]
        self.refunds = [Refund(*row) for row in refunds]

    # -- timed work ------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        if self.outbox:  # work owed: sent by the flow that decided it, else by the owner
            return float(self.p.get("due", 0.0))
        if self.status == "reserving":
            return (self.updated_at or 0.0) + RESERVE_SETTLE_S
        if self.status == "pending":
            return float(self.p["pay_by"])
        return None

    def expire(self, now: float) -> bool:
        """A pending order past ``pay_by`` expires; a checkout that stopped placing its
        holds (its process died) is refused. Either gives back everything held."""
        if self.status == "pending" and now >= self.p["pay_by"]:
            self._move("expired", "system", now)
            self._owe([*self._releases(), [NOTE]], "system", now, due=now)
            return True
        if self.status == "reserving" and now >= (self.updated_at or 0.0) + RESERVE_SETTLE_S:
            self.status = "refused"
            self.refusal = ["unavailable", "the checkout did not finish; nothing is held", None]
            self._owe(self._releases(), "system", now, due=now)
            return True
        return False

    # -- a checkout ---------------------------------------------------------------------

    def get(self, _: None, channel: str, now: float) -> Outcome:
        self._require_placed()
        return Outcome(200, self.view(), changed=False)

    def _require_placed(self) -> None:
        if not self.placed:
            raise GridError("not_found", f"no order {self.ident!r}")

    def get_saga(self, _: None, channel: str, now: float) -> Outcome:
        return Outcome(200, self.saga, changed=False)

    def begin(self, inp: Begin, channel: str, now: float) -> Outcome:
        if self.exists:
            return Outcome(200, self.saga, changed=False)
        self.status = "reserving"
        self.p = {
            "uid": inp.uid,
            "channel": intern(channel),
            "store": inp.store,
            "fulfilment": inp.fulfilment,
            "pickup_store": inp.pickup_store,
            "tier": inp.tier,
            "points_per_unit": inp.points_per_unit,
            "points": inp.points,
            "pay_by": now + inp.pay_within_s,
            "history": [],
            "cart_skus": inp.cart_skus,
        }
        self.lines = [
            Line(sku, qty, price, category, off, rid=f"{self.ident}-{i}")
            for i, (sku, qty, price, category, off) in enumerate(inp.lines)
        ]
        self.coupons = list(inp.coupon_codes)
        return Outcome(200, self.saga, changed=True)

    def priced(self, inp: Priced, channel: str, now: float) -> Outcome:
        """Every hold placed: the order is pending, priced with what the coupons gave."""
        if self.status != "reserving":
            return Outcome(200, self.saga, changed=False)  # done, or given up meanwhile
        rows = [[ln.unit_price * ln.qty, ln.tier_off] for ln in self.lines]
        for ln, (discount, total, points) in zip(
            self.lines, price_lines(rows, inp.coupon_lines, self.p["points"]), strict=True
        ):
            ln.discount, ln.total, ln.points = discount, total, points
        self._move("pending", self.p["channel"], now)
        self._owe([[NOTE]], self.p["channel"], now)
        return Outcome(200, self.saga, changed=True)

    def refuse(self, inp: Refuse, channel: str, now: float) -> Outcome:
        """A hold was refused: give back every hold the checkout may have placed."""
        if self.status != "reserving":
            return Outcome(200, self.saga, changed=False)
        self.status = "refused"
        self.refusal = [inp.code, inp.detail, inp.extra]
        self._owe(self._releases(), channel, now)
        return Outcome(200, self.saga, changed=True)

    def sent(self, inp: Sent, channel: str, now: float) -> Outcome:
        """The outbox's first entries were sent (each applied once)."""
        done = inp.upto - self.sent_upto
        if done <= 0:
            return Outcome(200, self.saga, changed=False)
        del self.outbox[:done]
        self.sent_upto = inp.upto
        if inp.problems:
            self.p["problems"] = [*self.p.get("problems", []), *inp.problems][-20:]
        # Not a change of the order: no version, no event. The next snapshot keeps it;
        # a crash before then means the outbox is sent again, every entry a no-op.
        return Outcome(200, self.saga, changed=False, noted=True)

    # -- the contract's moves -----------------------------------------------------------

    def pay(self, inp: Pay, channel: str, now: float) -> Outcome:
        self._require_placed()
        if self.status == "expired":
            raise ORDER_EXPIRED(
                f"order {self.ident} expired; its stock, points and coupons were given back"
            )
        if self.status != "pending":
            if self.placed and self.p.get("payment_ref") == inp.payment_ref:
                return Outcome(200, self.saga, changed=False)  # the same payment again
            raise INVALID_TRANSITION(f"order {self.ident} is {self._shown()}, not pending")
        self.p["payment_ref"] = inp.payment_ref
        self._move("paid", channel, now)
        money = [ln.total - ln.points for ln in self.lines]
        earned = points_earned(sum(money), self.p["points_per_unit"])
        for ln, share in zip(self.lines, split(earned, money), strict=True):
            ln.earned = share
        uid, oid = self.p["uid"], self.ident
        owed: list[list[Any]] = [
            [
                "stock.settle",
                f"stock:{ln.sku}",
                {"reservation_id": ln.rid, "to": "committed"},
                False,
            ]
            for ln in self.lines
        ]
        owed += [["coupon.consume", f"coupon:{c}", {"order_id": oid}, False] for c in self.coupons]
        owed += [["wallet.add", f"wallet:{uid}", {"code": c}, False] for c in self.coupons]
        owed.append(_points(uid, oid, "paid", "paid", points=earned, amount=sum(money)))
        bought = self.p.get("cart_skus")
        if bought:  # what was bought leaves the cart (once: by the order's key)
            units = {sku: sum(ln.qty for ln in self.lines if ln.sku == sku) for sku in bought}
            owed.append(["cart.bought", f"cart:{uid}", {"skus": bought, "qty": units}, True])
        self._owe([*owed, [NOTE]], channel, now)
        return Outcome(200, self.saga, changed=True)

    def cancel(self, _: None, channel: str, now: float) -> Outcome:
        self._require_placed()
        if self.status == "pending":
            self._move("cancelled", channel, now)
            self._owe([*self._releases(), [NOTE]], channel, now)
            return Outcome(200, self.saga, changed=True)
        if self.status != "paid":
            raise INVALID_TRANSITION(
                f"order {self.ident} is {self._shown()}: it cannot be cancelled"
            )
        # Paid, not packed yet: everything not refunded already is refunded, restocked,
        # and the coupons come back (a cancellation gives them back, whatever their rule).
        left = [[ln.sku, ln.qty - ln.refunded] for ln in self.lines if ln.qty > ln.refunded]
        for r in self.refunds:
            if r.status == "requested":
                r.status = "superseded"
        refund = Refund("cancel", "requested", left, 0, "cancelled", True, intern(channel), now)
        refund.amount = refund_amount(self.lines, self.refunds, left)
        self.refunds.append(refund)
        owed = self._complete(refund, cancel=True)
        self._move("cancelled", channel, now)
        self._owe([*owed, [NOTE]], channel, now)
        return Outcome(200, self.saga, changed=True)

    def transition(self, inp: Transition, channel: str, now: float) -> Outcome:
        self._require_placed()
        allowed = MOVES.get((self.p.get("fulfilment", ""), self.status), ())
        if inp.to not in allowed:
            raise INVALID_TRANSITION(
                f"order {self.ident} is {self._shown()} "
                f"({self.p.get('fulfilment')}): not to {inp.to}"
            )
        self._move(inp.to, channel, now)
        self._owe([[NOTE]], channel, now)
        return Outcome(200, self.saga, changed=True)

    def refund(self, inp: RefundRequest, channel: str, now: float) -> Outcome:
        self._require_placed()
        if self.status == "refunded":  # every line given back: any refund asks too much
            raise REFUND_EXCEEDS_ORDER(f"everything in order {self.ident} is refunded already")
        if self.status not in REFUNDABLE:
            raise INVALID_TRANSITION(
                f"order {self.ident} is {self._shown()}: refunds start once it is paid"
            )
        asked = merged(inp.lines) if inp.lines else None
        open_qty = refundable(self.lines, self.refunds)
        wanted = asked if asked is not None else {s: q for s, q in open_qty.items() if q}
        for sku, qty in wanted.items():
            if sku not in open_qty:
                raise REFUND_EXCEEDS_ORDER(f"order {self.ident} has no line {sku!r}")
            if qty > open_qty[sku]:
                raise REFUND_EXCEEDS_ORDER(
                    f"{qty} of {sku!r} asked back; {open_qty[sku]} can still be refunded"
                )
        if not wanted:
            raise REFUND_EXCEEDS_ORDER(f"everything in order {self.ident} is refunded already")
        rows = [[sku, qty] for sku, qty in wanted.items()]
        inp.refund_id = inp.refund_id or "rf" + secrets.token_hex(6)  # decided: replays keep it
        refund = Refund(
            inp.refund_id,
            "requested",
            rows,
            refund_amount(self.lines, self.refunds, rows),
            inp.reason,
            inp.restock,
            intern(channel),
            now,
        )
        self.refunds.append(refund)
        self._owe([[NOTE]], channel, now)
        return Outcome(201, refund.view(), changed=True)

    def approve(self, inp: Approve, channel: str, now: float) -> Outcome:
        refund = next((r for r in self.refunds if r.refund_id == inp.refund_id), None)
        if refund is None:
            raise GridError("not_found", f"order {self.ident} has no refund {inp.refund_id!r}")
        if refund.status != "requested":
            if refund.status == "completed":
                return Outcome(200, self.saga, changed=False)
            raise INVALID_TRANSITION(f"refund {inp.refund_id} is {refund.status}")
        owed = self._complete(refund, cancel=False)
        if all(ln.refunded == ln.qty for ln in self.lines):
            self._move("refunded", channel, now)
        self._owe([*owed, [NOTE]], channel, now)
        return Outcome(200, self.saga, changed=True)

    # -- what decisions owe ---------------------------------------------------------------

    def _complete(self, refund: Refund, *, cancel: bool) -> list[list[Any]]:
        """A refund done: its lines refunded, and what that owes stock, points, spend
        and coupons."""
        uid, oid, rid = self.p["uid"], self.ident, refund.refund_id
        owed: list[list[Any]] = []
        money, points_back, earned_back = refund_parts(self.lines, refund.lines)
        if refund.restock:
            owed += [
                [
                    "stock.adjust",
                    f"stock:{sku}",
                    {"delta": qty, "reason": f"refund {rid} of order {oid}"},
                    True,
                ]
                for sku, qty in refund.lines
            ]
        refund.status, refund.amount = "completed", money  # what was given back, exactly
        if earned_back or points_back or money:
            owed.append(
                _points(
                    uid, oid, "refunded", rid, points=earned_back, restore=points_back, amount=money
                )
            )
        if cancel or all(ln.refunded == ln.qty for ln in self.lines):
            owed += [
                ["coupon.restore", f"coupon:{c}", {"order_id": oid, "cancel": cancel}, False]
                for c in self.coupons
            ]
        return owed

    def _releases(self) -> list[list[Any]]:
        """Give back every hold of a checkout (a hold never placed is refused for good)."""
        uid, oid = self.p["uid"], self.ident
        owed: list[list[Any]] = [
            ["stock.settle", f"stock:{ln.sku}", {"reservation_id": ln.rid, "to": "released"}, False]
            for ln in self.lines
        ]
        owed += [["coupon.release", f"coupon:{c}", {"order_id": oid}, False] for c in self.coupons]
        if self.p.get("points"):
            owed.append(_points(uid, oid, "release", "redeem", points=self.p["points"]))
        return owed

    def _move(self, status: str, channel: str, now: float) -> None:
        self.status = status
        self.p.setdefault("history", []).append([status, intern(channel), now])

    def _owe(
        self, entries: list[list[Any]], channel: str, now: float, due: float | None = None
    ) -> None:
        """Work this decision owes other entities: ``[op, key, args, by idempotency key]``
        (or ``[NOTE]``), each with the channel that decided it."""
        if [NOTE] in entries:  # a note not sent yet is superseded by this newer one
            while self.outbox and self.outbox[0][0] == NOTE:
                self.outbox.pop(0)
                self.sent_upto += 1
        for entry in entries:
            op, key, args, keyed = entry if entry != [NOTE] else [NOTE, "", {}, False]
            self.outbox.append([op, key, args, keyed, intern(channel)])
        # only notes: the next move of the order sends a newer one anyway (a checkout
        # records no "sent" of its own; its payment supersedes it)
        only_notes = all(e[0] == NOTE for e in self.outbox)
        self.p["due"] = (
            due if due is not None else now + (NOTE_SETTLE_S if only_notes else SETTLE_S)
        )

    def _shown(self) -> str:
        return self.status if self.placed else "not placed"


def _points(uid: str, oid: str, action: str, key: str, **amounts: int) -> list[Any]:
    args = {"order_id": oid, "action": action, "key": key, **amounts}
    return ["member.order_points", f"member:{uid}", args, False]
