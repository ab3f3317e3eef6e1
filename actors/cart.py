"""Cart(uid): one shopper's cart, shared by every channel.

Each line remembers the channel that added it and the one that last changed
it. A cart holds no stock: the availability a command checks against is read
from the SKU's Stock entity by the route's flow and passed in the input's
``available`` (``None`` for a SKU never stocked), a decision the journal keeps;
the live availability in a cart view is read the same way at answer time.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

import msgspec

from omnigrid.actors import product, stock
from omnigrid.actors.declaration import (
    Grid,
    Id,
    Input,
    Kind,
    Op,
    Refusal,
    Route,
    Stream,
    View,
    answer,
    check_id,
)
from omnigrid.actors.entity import Entity, Outcome, intern
from omnigrid.actors.errors import InvalidRequest
from omnigrid.actors.merged import HandOver, MergeId, MergeState, Restore, Undone
from omnigrid.actors.protocol import Command
from omnigrid.persistence.events import rfc3339

MAX_LINE_QTY = 9_999
MAX_LINES = 200
CART_FULL = Refusal("cart_full", 409, "Cart full")
LINE_SKUS = "cart.skus"  # query: the SKUs of a cart's lines
LINE_QTYS = "cart.lines"  # query: [sku, qty] of a cart's lines (a checkout's default)


# -- inputs ---------------------------------------------------------------------


class LineAdd(Input):
    sku: Id
    qty: Annotated[int, msgspec.Meta(ge=1, le=MAX_LINE_QTY)]
    available: int | None = None  # decided: the SKU's availability it was checked against
    clerk: str | None = None  # decided: the pos clerk adding for the shopper (X-Clerk)

    def __post_init__(self) -> None:
        check_id(self.sku, "sku")


class LineSet(Input):
    sku: Id
    qty: Annotated[int, msgspec.Meta(ge=0, le=MAX_LINE_QTY, description="0 removes the line")]
    available: int | None = None  # decided, as for LineAdd
    clerk: str | None = None  # decided, as for LineAdd


class LineRemove(Input):
    sku: Id


class Bought(Input):
    skus: list[str]  # of a paid order
    # the units of each it bought (none: the whole line, as a payment journaled before
    # quantities were sent asks); sent once, by the order's Idempotency-Key
    qty: dict[str, int] = msgspec.field(default_factory=dict)


# -- answers (documentation) ------------------------------------------------------


class CartLine(View):
    sku: str
    qty: int
    added_via: str
    updated_via: str
    updated_at: str
    available: Annotated[
        int, msgspec.Meta(description="the SKU's live availability at the time of the read")
    ]
    in_stock: Annotated[bool, msgspec.Meta(description="available > 0")]
    unit_price: Annotated[
        int | None, msgspec.Meta(description="the reading channel's price; null: no product")
    ]
    added_by_clerk: Annotated[
        str | None, msgspec.Meta(description="the pos clerk who added it for the shopper")
    ] = None


class CartView(View):
    uid: str
    version: int
    updated_at: str | None
    lines: list[CartLine]
    subtotal: Annotated[int, msgspec.Meta(description="the priced lines' unit_price x qty")]
    merged_from: list[str] | None = None


# -- the entity ---------------------------------------------------------------------


@dataclass(slots=True)
class Line:
    qty: int
    added_via: str
    updated_via: str
    updated_at: float
    clerk: str | None = None  # the pos clerk who added it (X-Clerk)


class Absorb(Input):
    """Step of a merge on the survivor's cart: the merged user's lines join it."""

    lines: list[list[Any]]  # [sku, qty, added_via, updated_via, updated_at]
    merge_id: MergeId
    other_uid: Id
    rule: Literal["sum", "max"] = "sum"


class Cart(Entity):
    __slots__ = ("lines", "merge")

    kind: ClassVar[str] = "cart"

    def __init__(self, key: str, ident: str) -> None:
        super().__init__(key, ident)
        self.lines: dict[str, Line] = {}
        self.merge: MergeState | None = None  # only on users a merge touched

    def alias(self) -> str | None:
        return self.merge.into if self.merge is not None else None

    def view(self) -> dict[str, Any]:
        if self.merge is not None and self.merge.merged_from:
            return {**self._view(), "merged_from": list(self.merge.merged_from)}
        return self._view()

    def _view(self) -> dict[str, Any]:
        return {
            "uid": self.ident,
            "version": self.version,
            "updated_at": rfc3339(self.updated_at),
            "lines": [
                {
                    "sku": sku,
                    "qty": line.qty,
                    "added_via": line.added_via,
                    "updated_via": line.updated_via,
                    "updated_at": rfc3339(line.updated_at),
                }
                | ({"added_by_clerk": line.clerk} if line.clerk is not None else {})
                for sku, line in self.lines.items()
            ],
        }

    def rows(self) -> list[list[Any]]:
        return [
            [sku, ln.qty, ln.added_via, ln.updated_via, ln.updated_at]
            + ([ln.clerk] if ln.clerk is not None else [])
            for sku, ln in self.lines.items()
        ]

    def kind_state(self) -> Any:
        if self.merge is None:
            return self.rows()  # the format every cart a merge never touched keeps
        return {"lines": self.rows(), "merge": self.merge.state()}

    def load_kind_state(self, data: Any) -> None:
        if isinstance(data, dict):
            self.merge = MergeState.load(data["merge"])
            data = data["lines"]
        self.lines = {
            intern(row[0]): Line(row[1], intern(row[2]), intern(row[3]), *row[4:]) for row in data
        }

    def get(self, _: None, channel: str, now: float) -> Outcome:
        return Outcome(200, self.view(), changed=False)

    def add(self, inp: LineAdd, channel: str, now: float) -> Outcome:
        line = self.lines.get(inp.sku)
        qty = inp.qty + (line.qty if line else 0)
        self._put(inp.sku, qty, inp.available, channel, now, inp.clerk)
        return Outcome(200, None, changed=True)

    def set_qty(self, inp: LineSet, channel: str, now: float) -> Outcome:
        if inp.qty == 0:
            return self.remove(LineRemove(sku=inp.sku), channel, now)
        line = self.lines.get(inp.sku)
        if line is not None and line.qty == inp.qty:
            return Outcome(200, None, changed=False)
        self._put(inp.sku, inp.qty, inp.available, channel, now, inp.clerk)
        return Outcome(200, None, changed=True)

    def remove(self, inp: LineRemove, channel: str, now: float) -> Outcome:
        changed = self.lines.pop(inp.sku, None) is not None
        return Outcome(200, None, changed=changed)

    def clear(self, _: None, channel: str, now: float) -> Outcome:
        changed = bool(self.lines)
        self.lines.clear()
        return Outcome(200, None, changed=changed)

    def bought(self, inp: Bought, channel: str, now: float) -> Outcome:
        """What a paid order bought leaves the cart: each line less the units bought
        (units added since the checkout stay), or whole when none are given."""
        changed = False
        for sku in inp.skus:
            line = self.lines.get(sku)
            if line is None:
                continue
            changed = True
            took = inp.qty.get(sku)
            if took is None or line.qty <= took:
                del self.lines[sku]
            else:
                line.qty -= took
                line.updated_via, line.updated_at = intern(channel), now
        return Outcome(200, None, changed=changed)

    # -- a merge's steps (actors/merge.py) -------------------------------------------

    def hand_over(self, inp: HandOver, channel: str, now: float) -> Outcome:
        merge = self.merge = self.merge or MergeState()
        if inp.merge_id in merge.done:  # run again: the same lines as the first time
            return Outcome(200, merge.done[inp.merge_id], changed=False)
        merge.done[inp.merge_id] = rows = self.rows()
        merge.into = inp.into
        self.lines.clear()
        return Outcome(200, rows, changed=True)

    def absorb(self, inp: Absorb, channel: str, now: float) -> Outcome:
        merge = self.merge = self.merge or MergeState()
        if inp.merge_id in merge.done:
            return Outcome(200, None, changed=False)
        for sku, qty, added, updated, *at_and_clerk in inp.lines:
            line = self.lines.get(sku)
            if line is None:
                if len(self.lines) < MAX_LINES:
                    self.lines[intern(sku)] = Line(
                        qty, intern(added), intern(updated), *at_and_clerk
                    )
                continue
            line.qty = min(
                MAX_LINE_QTY, line.qty + qty if inp.rule == "sum" else max(line.qty, qty)
            )
        merge.done[inp.merge_id] = True
        merge.merged_from.append(inp.other_uid)
        return Outcome(200, None, changed=True)

    def restore(self, inp: Restore, channel: str, now: float) -> Outcome:
        """Undo on the merged user's cart: the lines it had at the merge, and no alias."""
        if self.merge is None or inp.merge_id not in self.merge.done:
            return Outcome(200, None, changed=False)
        self.load_kind_state(inp.given)
        self.merge = self.merge.given_back(inp.merge_id)
        return Outcome(200, None, changed=True)

    def unmerged(self, inp: Undone, channel: str, now: float) -> Outcome:
        """Undo on the survivor's cart: no longer merged from the other (its lines stay)."""
        if self.merge is None or inp.other_uid not in self.merge.merged_from:
            return Outcome(200, None, changed=False)
        self.merge = self.merge.unmerged(inp.merge_id, inp.other_uid)
        return Outcome(200, None, changed=True)

    def _put(
        self,
        sku: str,
        qty: int,
        available: int | None,
        channel: str,
        now: float,
        clerk: str | None = None,
    ) -> None:
        line = self.lines.get(sku)
        if qty > MAX_LINE_QTY:
            raise InvalidRequest(f"a cart line holds at most {MAX_LINE_QTY}; this would be {qty}")
        if available is None:
            raise stock.UNKNOWN_SKU(f"SKU {sku!r} has never been stocked")
        if line is None and len(self.lines) >= MAX_LINES:
            raise CART_FULL(f"a cart holds at most {MAX_LINES} lines")
        if qty > available:
            raise stock.INSUFFICIENT_STOCK(
                f"the line would hold {qty} of {sku!r}; {available} available"
            )
        channel = intern(channel)
        if line is None:
            self.lines[intern(sku)] = Line(qty, channel, channel, now, clerk)
        else:
            line.qty, line.updated_via, line.updated_at = qty, channel, now
            line.clerk = clerk or line.clerk


# -- flows: a cart's answers carry each line's live availability ---------------------


# What a cart view shows of each line's SKU, read live: (available, price), where
# price is the product's [base price, channel prices] (None: no product).
Live = tuple[int | None, Any]


def _asks(skus: list[str]) -> dict[str, str]:
    asks = {stock.KIND.key(sku): stock.AVAILABLE for sku in skus}
    return asks | {product.KIND.key(sku): product.PRICE for sku in skus}


def _live(skus: list[str], answers: dict[str, Any]) -> dict[str, Live]:
    return {s: (answers[stock.KIND.key(s)], answers[product.KIND.key(s)]) for s in skus}


async def availability(grid: Grid, skus: list[str]) -> dict[str, int | None]:
    """Live availability of many SKUs (``None``: never stocked), one query per owner."""
    keys = {stock.KIND.key(sku): sku for sku in skus}
    answers = await grid.query(dict.fromkeys(keys, stock.AVAILABLE))
    return {sku: answers[key] for key, sku in keys.items()}


async def live(grid: Grid, skus: list[str]) -> dict[str, Live]:
    """Availability and price of many SKUs: one query per owner shard, all at once."""
    return _live(skus, await grid.query(_asks(skus))) if skus else {}


def unit_price(price: Any, channel: str) -> int | None:
    """The channel's price from a ``product.PRICE`` answer (``None``: no product)."""
    return None if price is None else product.channel_price(price[0], price[1], channel)


async def live_view(
    grid: Grid, status: int, view: dict[str, Any], known: dict[str, Live], channel: str
) -> tuple[int, Any]:
    """The cart view with each line's live availability and the reading channel's
    price, and the subtotal: ``known`` lines as given, the rest read now."""
    lines = view["lines"]
    missing = [line["sku"] for line in lines if line["sku"] not in known]
    if missing:
        known = {**known, **await live(grid, missing)}
    out = dict(view)
    out["lines"] = []
    subtotal = 0
    for line in lines:
        available, price = known.get(line["sku"], (None, None))
        a = available or 0
        unit = unit_price(price, channel)
        subtotal += unit * line["qty"] if unit is not None else 0
        out["lines"].append({**line, "available": a, "in_stock": a > 0, "unit_price": unit})
    out["subtotal"] = subtotal
    return status, out


async def live_views(grid: Grid, views: list[dict[str, Any]], channel: str) -> list[dict[str, Any]]:
    """Stream events' carts as a GET answers them: one read of all their lines' SKUs."""
    known = await live(grid, sorted({line["sku"] for view in views for line in view["lines"]}))
    return [(await live_view(grid, 200, view, known, channel))[1] for view in views]


async def then_live_view(grid: Grid, cmd: Command) -> tuple[int, Any]:
    """Run the command, then read its lines' availability and prices (two round trips)."""
    return await live_view(grid, *answer(await grid.call(cmd)), {}, cmd.channel)


async def checked_line(grid: Grid, cmd: Command) -> tuple[int, Any]:
    """Add or set a line against the SKU's live availability, in two owner round trips.

    The first asks the SKU's owners for its availability and price and the cart's
    owner for the cart's lines, at once; the second runs the command while the
    other lines' availability and prices are read, at once. A line another
    channel added in between is read after (rare: a third trip).
    """
    sku: str = cmd.args["sku"]
    if cmd.args["qty"] == 0:  # set to 0: a removal, nothing to check
        cmd.args["available"] = 0
        return await then_live_view(grid, cmd)
    first = await grid.query({**_asks([sku]), cmd.key: LINE_SKUS})
    mine = _live([sku], first)
    cmd.args["available"] = mine[sku][0]
    others = [s for s in first[cmd.key] or () if s != sku]
    if others:
        result, known = await asyncio.gather(grid.call(cmd), live(grid, others))
    else:
        result, known = await grid.call(cmd), {}
    status, view = answer(result)
    return await live_view(grid, status, view, {**known, **mine}, cmd.channel)


_REFUSALS = ("insufficient_stock", "unknown_sku", "cart_full")

KIND = Kind(
    name="cart",
    scope="carts",
    entity=Cart,
    ident="uid",
    view=CartView,
    ops=(
        Op("cart.get", Cart.get, read=True),
        Op("cart.add", Cart.add, LineAdd, decided=frozenset({"available", "clerk"})),
        Op("cart.set", Cart.set_qty, LineSet, decided=frozenset({"available", "clerk"})),
        Op("cart.remove", Cart.remove, LineRemove),
        Op("cart.clear", Cart.clear),
        Op("cart.bought", Cart.bought, Bought),
        Op("cart.hand_over", Cart.hand_over, HandOver, on_alias=True),
        Op("cart.absorb", Cart.absorb, Absorb),
        Op("cart.restore", Cart.restore, Restore, on_alias=True),
        Op("cart.unmerged", Cart.unmerged, Undone),
    ),
    routes=(
        Route(
            "GET",
            "/v1/carts/{uid}",
            "get_cart",
            "cart.get",
            "Read a cart with live availability",
            CartView,
            flow=then_live_view,
        ),
        Route(
            "DELETE",
            "/v1/carts/{uid}",
            "clear_cart",
            "cart.clear",
            "Empty a cart",
            CartView,
            flow=then_live_view,
        ),
        Route(
            "POST",
            "/v1/carts/{uid}/lines",
            "add_line",
            "cart.add",
            "Add to a cart line",
            CartView,
            refusals=_REFUSALS,
            flow=checked_line,
        ),
        Route(
            "PUT",
            "/v1/carts/{uid}/lines/{sku}",
            "set_line",
            "cart.set",
            "Set a line's quantity",
            CartView,
            refusals=_REFUSALS,
            path_fields={"sku": "sku"},
            flow=checked_line,
        ),
        Route(
            "DELETE",
            "/v1/carts/{uid}/lines/{sku}",
            "remove_line",
            "cart.remove",
            "Remove a line",
            CartView,
            path_fields={"sku": "sku"},
            flow=then_live_view,
        ),
    ),
    queries={
        LINE_SKUS: lambda cart: list(cart.lines),
        LINE_QTYS: lambda cart: [[sku, line.qty] for sku, line in cart.lines.items()],
    },
    stream=Stream(
        "/v1/streams/users/{uid}",
        "user_stream",
        "Server-Sent Events: every change to the user's cart (resumable with Last-Event-ID)",
    ),
    live_views=live_views,
    refusals=(CART_FULL,),
)
