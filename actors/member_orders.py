"""A member's points moved by orders: held at checkout, given back, earned, reversed.

One op (``member.order_points``) for every move an order's saga makes
(actors/order.py), each applied once per order and key, so a step sent twice
moves nothing twice:

- ``redeem``: a checkout holds the points it spends (never below 0); refused for
  good once the order gave its points back (a straggling hold);
- ``release``: an order that expired or was cancelled unpaid gives them back, with
  the expiry dates they had;
- ``paid``: a payment's points (a debt is paid from them first) and its amount
  toward the 12-month spend;
- ``refunded``: a refund takes back the points its amount earned (what the
  balance cannot give is a debt: the balance never goes below zero), gives back
  the points spent on it (``restore``) and takes its amount off the spend.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Protocol

import msgspec

from omnigrid.actors.declaration import MAX_COUNT, Id, Input, Refusal
from omnigrid.actors.entity import Outcome

INSUFFICIENT_POINTS = Refusal("insufficient_points", 409, "Insufficient points")
EARNED_FOR_S = 365 * 24 * 3600.0  # points an order earns or gives back last a year


class OrderPointsInput(Input):
    order_id: Id
    action: Literal["redeem", "release", "paid", "refunded"]
    key: Annotated[str, msgspec.Meta(max_length=80)]  # one per move of an order
    points: Annotated[int, msgspec.Meta(ge=0, le=MAX_COUNT)] = 0  # held, earned or taken back
    restore: Annotated[int, msgspec.Meta(ge=0, le=MAX_COUNT)] = 0  # refunded: spent points back
    amount: Annotated[int, msgspec.Meta(ge=0, le=MAX_COUNT)] = 0  # paid or refunded: spend


@dataclass(slots=True)
class OrderPoints:
    debt: int = 0  # points refunds took back that the balance could not give
    held: dict[str, list[list[Any]]] = field(default_factory=dict)  # order -> lots taken

    def state(self) -> list[Any]:
        return [self.debt, self.held]

    @classmethod
    def load(cls, data: list[Any]) -> OrderPoints:
        return cls(data[0], dict(data[1]))


class Ledger(Protocol):
    """What this needs of a member (actors/member.py)."""

    applied: dict[str, int]
    orders: OrderPoints | None

    @property
    def balance(self) -> int: ...

    def take(self, points: int) -> list[list[Any]]: ...

    def record_spend(self, key: str, amount: int, now: float) -> bool: ...

    def book(
        self,
        points: int,
        kind: str,
        channel: str,
        reason: str,
        order_id: str,
        now: float,
        expires: float | None = None,
    ) -> None: ...


def order_points(m: Ledger, inp: OrderPointsInput, channel: str, now: float) -> Outcome:
    oid, points = inp.order_id, inp.points
    released = f"order:{oid}:release"
    mark = released if inp.action == "release" else f"order:{oid}:{inp.key}"
    if mark in m.applied:
        return Outcome(200, None, changed=False)
    st = m.orders if m.orders is not None else OrderPoints()
    if inp.action == "redeem":
        if released in m.applied:
            raise INSUFFICIENT_POINTS(f"order {oid} gave its points back already")
        if points > m.balance:
            raise INSUFFICIENT_POINTS(f"the order redeems {points}, the balance is {m.balance}")
        st.held[oid] = m.take(points)
        m.book(-points, "redeem", channel, "order", oid, now)
    elif inp.action == "release":
        for expires, part in st.held.pop(oid, []):
            m.book(part, "restore", channel, "order not paid", oid, now, expires)
    elif inp.action == "paid":
        if points:
            m.book(points, "earn", channel, "order paid", oid, now, now + EARNED_FOR_S)
            paid = min(st.debt, points)
            if paid:
                st.debt -= paid
                m.take(paid)
                m.book(-paid, "reverse", channel, "debt paid", oid, now)
        m.record_spend(f"spend:order:{oid}", inp.amount, now)
    else:  # refunded
        if points:
            got = sum(part for _, part in m.take(points))
            st.debt += points - got
            m.book(-got, "reverse", channel, f"refund ({points - got} owed)", oid, now)
        if inp.restore:
            m.book(inp.restore, "restore", channel, "refund", oid, now, now + EARNED_FOR_S)
        m.record_spend(f"spend:order:{oid}:{inp.key}", -inp.amount, now)
    m.applied[mark] = -1
    m.orders = st if st.debt or st.held else None
    return Outcome(200, None, changed=True)
