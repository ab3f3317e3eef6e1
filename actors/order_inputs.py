"""An order's inputs, answers and refusals: what its routes take and give, checked and
documented by the same classes (actors/order.py decides, actors/order_saga.py runs)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from omnigrid.actors.declaration import MAX_COUNT, Id, Input, Refusal, View, check_id

MAX_ORDER_LINES = 100
MAX_COUPONS = 5
MAX_PAY_WITHIN_S = 3_000  # a reservation lives at most an hour: the order releases first
DEFAULT_PAY_WITHIN_S = 900

INVALID_TRANSITION = Refusal("invalid_transition", 409, "Invalid transition")
ORDER_EXPIRED = Refusal("order_expired", 409, "Order expired")
REFUND_EXCEEDS_ORDER = Refusal("refund_exceeds_order", 409, "Refund exceeds order")

Qty = Annotated[int, msgspec.Meta(ge=1, le=9_999)]
Text = Annotated[str, msgspec.Meta(max_length=256)]


class LineQty(Input):
    sku: Id
    qty: Qty

    def __post_init__(self) -> None:
        check_id(self.sku, "sku")


def _distinct(values: list[str], what: str) -> None:
    if len(set(values)) != len(values):
        raise ValueError(f"{what} must not repeat")


class CheckoutRequest(Input):
    uid: Id
    lines: (
        Annotated[
            list[LineQty],
            msgspec.Meta(
                min_length=1, max_length=MAX_ORDER_LINES, description="default: the uid's cart"
            ),
        ]
        | None
    ) = None
    coupon_codes: Annotated[list[Id], msgspec.Meta(max_length=MAX_COUPONS)] = msgspec.field(
        default_factory=list
    )
    points: Annotated[int, msgspec.Meta(ge=0, le=MAX_COUNT, description="points to redeem")] = 0
    store: Id | None = None
    fulfilment: Literal["delivery", "pickup"] = "delivery"
    pickup_store: Id | None = None
    pay_within_s: Annotated[
        int, msgspec.Meta(ge=1, le=MAX_PAY_WITHIN_S, description="pay_by = now + this")
    ] = DEFAULT_PAY_WITHIN_S

    def __post_init__(self) -> None:
        check_id(self.uid, "uid")
        if self.lines is not None:
            _distinct([ln.sku for ln in self.lines], "lines' skus")
        _distinct(self.coupon_codes, "coupon_codes")
        for code in self.coupon_codes:
            check_id(code, "a coupon code")
        if self.fulfilment == "pickup" and self.pickup_store is None:
            raise ValueError("a pickup order needs a pickup_store")
        if self.fulfilment == "delivery" and self.pickup_store is not None:
            raise ValueError("pickup_store is for pickup orders")


class Begin(Input):
    """The checkout's plan, every price and benefit read before any hold is placed."""

    uid: Id
    store: Id | None
    fulfilment: str
    pickup_store: Id | None
    tier: str
    points_per_unit: float
    points: int
    pay_within_s: int
    lines: list[list[Any]]  # [sku, qty, unit_price, category, tier discount]
    coupon_codes: list[str]
    cart_skus: list[str] = msgspec.field(default_factory=list)


class Priced(Input):
    coupon_lines: list[list[int]]  # per coupon held, its discount on each line


class Refuse(Input):
    code: str
    detail: str
    extra: dict[str, Any] | None = None


class Pay(Input):
    payment_ref: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]


class Transition(Input):
    to: Literal["packed", "shipped", "ready_for_pickup", "completed"]


class RefundRequest(Input):
    lines: (
        Annotated[
            list[LineQty],
            msgspec.Meta(min_length=1, max_length=MAX_ORDER_LINES, description="default: all"),
        ]
        | None
    ) = None
    reason: Text = ""
    restock: bool = True
    refund_id: str | None = None  # decided: the refund's id, so a replay makes the same


class Approve(Input):
    refund_id: Id


class Sent(Input):
    upto: Annotated[int, msgspec.Meta(ge=0)]
    problems: list[str] = msgspec.field(default_factory=list)


class OrderPage(Input):
    status: (
        Literal[
            "pending", "paid", "packed", "shipped", "ready_for_pickup", "completed",
            "cancelled", "expired", "refunded",
        ]
        | None
    ) = None  # fmt: skip
    limit: Annotated[int, msgspec.Meta(ge=1, le=100)] = 20
    cursor: Annotated[int, msgspec.Meta(ge=0, description="next_cursor of the page before")] = 0


# -- answers (documentation) --------------------------------------------------------


class OrderLineView(View):
    sku: str
    qty: int
    unit_price: int
    discount: int
    total: Annotated[int, msgspec.Meta(description="unit_price x qty - discount")]
    refunded_qty: int


class HistoryView(View):
    status: str
    channel: str
    at: str


class RefundLineView(View):
    sku: str
    qty: int


class RefundView(View):
    refund_id: str
    status: Literal["requested", "completed", "superseded"]
    lines: list[RefundLineView]
    amount: int
    reason: str
    restock: bool
    channel: str
    at: str


class OrderView(View):
    order_id: str
    uid: str
    status: str
    channel: str
    store: str | None
    fulfilment: str
    pickup_store: str | None
    lines: list[OrderLineView]
    subtotal: int
    discount: int
    points_redeemed: int
    points_earned: int
    total: Annotated[int, msgspec.Meta(description="subtotal - discount - points value")]
    currency: str
    coupons: list[str]
    pay_by: str
    payment_ref: str | None
    history: list[HistoryView]
    refunds: list[RefundView]
    version: int
    updated_at: str | None


class OrdersView(View):
    orders: list[OrderView]
    next_cursor: int | None
