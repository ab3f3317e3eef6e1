"""The orders of a user and of a store, from every channel: two small list entities.

An order lives on the shard its id hashes to, so "this user's orders" needs a
list of its own: ``user_orders:{uid}`` and ``store_orders:{store}`` (the
orders sold at a store or picked up from it). Each of an order's visible
changes is noted in its lists (an outbox entry of the order, sent with the
order's view at the time: a note older than the one a list holds changes
nothing). The user's list is also how order changes reach the user's stream:
each note is an ``order`` event there, its data the order.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

import msgspec

from omnigrid.actors.declaration import (
    Grid,
    Id,
    Input,
    Kind,
    Op,
    Route,
    Stream,
    View,
    answer,
)
from omnigrid.actors.entity import Entity, Outcome, intern
from omnigrid.actors.order_inputs import OrderPage, OrdersView
from omnigrid.actors.protocol import Command
from omnigrid.persistence.events import rfc3339

BOUGHT = ("paid", "packed", "shipped", "ready_for_pickup", "completed")
BOUGHT_SKUS = "user_orders.bought"  # query: the SKUs of the user's paid orders
RECENT = "user_orders.recent"  # query: the ids of the user's latest orders (a timeline's)
RECENT_SHOWN = 50
ORDER_VIEW = "order.view"  # the order's query for its view (None: not placed)


class Note(Input):
    order_id: Id
    order: dict[str, Any]  # the order's view when the note was sent


class OrderListView(View):
    ident: str
    orders: Annotated[int, msgspec.Meta(description="how many orders the list holds")]
    order: dict[str, Any] | None
    version: int
    updated_at: str | None


class OrderList(Entity):
    __slots__ = ("bought", "ids", "last", "seen")

    kind: ClassVar[str] = ""

    def __init__(self, key: str, ident: str) -> None:
        super().__init__(key, ident)
        self.ids: list[str] = []  # oldest first
        self.seen: dict[str, list[Any]] = {}  # order id -> [status, version noted]
        self.bought: set[str] = set()  # SKUs of paid orders (a review's verified_purchase)
        self.last: dict[str, Any] | None = None  # the order of the latest note

    def view(self) -> dict[str, Any]:
        return {
            "ident": self.ident,
            "orders": len(self.ids),
            "order": self.last,
            "version": self.version,
            "updated_at": rfc3339(self.updated_at),
        }

    def kind_state(self) -> Any:
        # not ``last``: it is in the note's event already (a stream's history reads it there)
        return [self.ids, [self.seen[i] for i in self.ids], sorted(self.bought)]

    def load_kind_state(self, data: Any) -> None:
        ids, seen, bought = data
        self.ids = list(ids)
        self.seen = {i: [intern(s), v] for i, (s, v) in zip(ids, seen, strict=True)}
        self.bought = {intern(sku) for sku in bought}

    def note(self, inp: Note, channel: str, now: float) -> Outcome:
        status, version = inp.order.get("status"), inp.order.get("version", 0)
        known = self.seen.get(inp.order_id)
        if known is not None and known[1] >= version:
            return Outcome(200, None, changed=False)  # a note sent twice, or overtaken
        if known is None:
            self.ids.append(inp.order_id)
        self.seen[inp.order_id] = [intern(str(status)), version]
        if status in BOUGHT:
            self.bought.update(intern(line["sku"]) for line in inp.order.get("lines", ()))
        self.last = inp.order
        return Outcome(200, None, changed=True)

    def page(self, inp: OrderPage, channel: str, now: float) -> Outcome:
        """Order ids newest first, of one status if asked; the route reads the orders."""
        chosen = [
            i for i in reversed(self.ids) if inp.status is None or self.seen[i][0] == inp.status
        ]
        ids = chosen[inp.cursor : inp.cursor + inp.limit]
        more = inp.cursor + inp.limit < len(chosen)
        return Outcome(
            200,
            {"ids": ids, "next_cursor": inp.cursor + inp.limit if more else None},
            changed=False,
        )


class UserOrders(OrderList):
    __slots__ = ()
    kind: ClassVar[str] = "user_orders"


class StoreOrders(OrderList):
    __slots__ = ()
    kind: ClassVar[str] = "store_orders"


async def listed(grid: Grid, cmd: Command) -> tuple[int, Any]:
    """A page of the list's orders, read from their owners at once."""
    _, page = answer(await grid.call(cmd))
    keys = [f"order:{i}" for i in page["ids"]]
    views = await grid.query(dict.fromkeys(keys, ORDER_VIEW)) if keys else {}
    orders = [views[k] for k in keys if views.get(k) is not None]
    return 200, {"orders": orders, "next_cursor": page["next_cursor"]}


def _kind(name: str, entity: type[OrderList], ident: str, path: str, summary: str) -> Kind:
    return Kind(
        name=name,
        entity=entity,
        ident=ident,
        view=OrderListView,
        ops=(
            Op(f"{name}.note", entity.note, Note),
            Op(f"{name}.page", entity.page, OrderPage, read=True),
        ),
        routes=(
            Route(
                "GET",
                path,
                f"{name}_list",
                f"{name}.page",
                summary,
                OrdersView,
                query_fields=("status", "limit", "cursor"),
                flow=listed,
            ),
        ),
        queries={
            BOUGHT_SKUS: lambda lst: sorted(lst.bought),
            RECENT: lambda lst: lst.ids[-RECENT_SHOWN:],
        },
        stream=Stream(
            "/v1/streams/users/{uid}",
            "user_stream",
            "Server-Sent Events: every change to the user's cart, membership and orders "
            "(resumable with Last-Event-ID)",
        )
        if name == "user_orders"
        else None,
        # on the user's stream a note is an "order" event carrying the order
        stream_events={f"{name}.note": "order"},
        event_view=lambda view: view.get("order") or view,
    )


USER_KIND = _kind(
    "user_orders",
    UserOrders,
    "uid",
    "/v1/users/{uid}/orders",
    "A user's orders from every channel, newest first",
)
STORE_KIND = _kind(
    "store_orders",
    StoreOrders,
    "store",
    "/v1/stores/{store}/orders",
    "The orders sold at or picked up from a store, newest first",
)
