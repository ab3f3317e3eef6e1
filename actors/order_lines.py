"""An order's lines and refunds, and the money of a refund: how much of what each line
was paid, of the points spent on it and of the points it earned, goes back.

Parts are cut cumulatively (``pricing.part``): the refunds of a line, however
it is split, add up to the line exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from omnigrid.actors.pricing import part
from omnigrid.persistence.events import rfc3339


@dataclass(slots=True)
class Line:
    sku: str
    qty: int
    unit_price: int
    category: str | None
    tier_off: int  # the tier's discount on this line
    discount: int = 0  # tier and coupons
    total: int = 0  # unit_price x qty - discount
    points: int = 0  # the value of the redeemed points this line carries
    earned: int = 0  # the points its payment earned
    refunded: int = 0  # units refunded
    rid: str = ""  # its stock reservation

    def row(self) -> list[Any]:
        return [
            self.sku,
            self.qty,
            self.unit_price,
            self.category,
            self.tier_off,
            self.discount,
            self.total,
            self.points,
            self.earned,
            self.refunded,
            self.rid,
        ]


@dataclass(slots=True)
class Refund:
    refund_id: str
    status: str  # requested | completed
    lines: list[list[Any]]  # [sku, qty]
    amount: int
    reason: str
    restock: bool
    channel: str
    at: float

    def row(self) -> list[Any]:
        return [
            self.refund_id,
            self.status,
            self.lines,
            self.amount,
            self.reason,
            self.restock,
            self.channel,
            self.at,
        ]

    def view(self) -> dict[str, Any]:
        return {
            "refund_id": self.refund_id,
            "status": self.status,
            "lines": [{"sku": s, "qty": q} for s, q in self.lines],
            "amount": self.amount,
            "reason": self.reason,
            "restock": self.restock,
            "channel": self.channel,
            "at": rfc3339(self.at),
        }


def refundable(lines: list[Line], refunds: list[Refund]) -> dict[str, int]:
    """Per SKU, the units neither refunded nor asked back by an open request."""
    asked: dict[str, int] = {}
    for r in refunds:
        if r.status == "requested":
            for sku, qty in r.lines:
                asked[sku] = asked.get(sku, 0) + qty
    return {ln.sku: ln.qty - ln.refunded - asked.get(ln.sku, 0) for ln in lines}


def refund_amount(lines: list[Line], refunds: list[Refund], rows: list[list[Any]]) -> int:
    """The money a refund of these units gives back (what they were paid, less points)."""
    by_sku = {ln.sku: ln for ln in lines}
    left = refundable(lines, refunds)
    total = 0
    for sku, qty in rows:
        ln = by_sku[sku]
        already = ln.qty - left.get(sku, 0)  # refunded, or asked back before this one
        total += _cut(ln.total - ln.points, already, already + qty, ln.qty)
    return total


def refund_parts(lines: list[Line], rows: list[list[Any]]) -> tuple[int, int, int]:
    """Refund these units: ``(money, points spent on them, points they earned)``."""
    money = points_back = earned_back = 0
    by_sku = {ln.sku: ln for ln in lines}
    for sku, qty in rows:
        ln = by_sku[sku]
        before, after = ln.refunded, ln.refunded + qty
        money += _cut(ln.total - ln.points, before, after, ln.qty)
        points_back += _cut(ln.points, before, after, ln.qty)
        earned_back += _cut(ln.earned, before, after, ln.qty)
        ln.refunded = after
    return money, points_back, earned_back


def merged(lines: list[Any]) -> dict[str, int]:
    """Asked lines (``LineQty``) per SKU."""
    out: dict[str, int] = {}
    for line in lines:
        out[line.sku] = out.get(line.sku, 0) + line.qty
    return out


def _cut(amount: int, before: int, after: int, of: int) -> int:
    return part(amount, after, of) - part(amount, before, of)
