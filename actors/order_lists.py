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
from omnigrid.actors.entity import Entity, Outcome, intern, newest_first
from omnigrid.actors.merged import HandOver, MergeId, MergeState, Restore, Undone
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


class AbsorbOrders(Input):
    """Step of a merge on the survivor's list: the merged user's orders join it."""

    given: list[Any]  # [[order_id, status, version], ...], [bought SKUs]
    merge_id: MergeId
    other_uid: Id


class OrderListView(View):
    ident: str
    orders: Annotated[int, msgspec.Meta(description="how many orders the list holds")]
    order: dict[str, Any] | None
    version: int
    updated_at: str | None


class OrderList(Entity):
    __slots__ = ("bought", "ids", "last", "merge", "seen")

    kind: ClassVar[str] = ""

    def __init__(self, key: str, ident: str) -> None:
        super().__init__(key, ident)
        self.ids: list[str] = []  # oldest first
        self.seen: dict[str, list[Any]] = {}  # order id -> [status, version noted]
        self.bought: set[str] = set()  # SKUs of paid orders (a review's verified_purchase)
        self.last: dict[str, Any] | None = None  # the order of the latest note
        self.merge: MergeState | None = None  # only on users a merge touched

    def alias(self) -> str | None:
        return self.merge.into if self.merge is not None else None

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
        merge = [self.merge.state()] if self.merge is not None else []
        return [self.ids, [self.seen[i] for i in self.ids], sorted(self.bought), *merge]

    def load_kind_state(self, data: Any) -> None:
        ids, seen, bought, *merge = data
        self.merge = MergeState.load(merge[0]) if merge else None
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

    # -- a merge's steps (actors/merge.py): the merged user's orders go to the survivor

    def hand_over(self, inp: HandOver, channel: str, now: float) -> Outcome:
        merge = self.merge = self.merge or MergeState()
        if inp.merge_id in merge.done:
            return Outcome(200, merge.done[inp.merge_id], changed=False)
        given = [[[i, *self.seen[i]] for i in self.ids], sorted(self.bought)]
        merge.done[inp.merge_id], merge.into = given, inp.into
        self.ids, self.seen, self.bought = [], {}, set()
        return Outcome(200, given, changed=True)

    def absorb(self, inp: AbsorbOrders, channel: str, now: float) -> Outcome:
        merge = self.merge = self.merge or MergeState()
        if inp.merge_id in merge.done:
            return Outcome(200, None, changed=False)
        rows, bought = inp.given
        brought = [row[0] for row in rows if row[0] not in self.seen]
        for order_id, status, version in rows:
            if order_id in brought:
                self.ids.append(order_id)
                self.seen[order_id] = [intern(status), version]
        self.bought.update(intern(sku) for sku in bought)
        merge.done[inp.merge_id] = brought
        merge.merged_from.append(inp.other_uid)
        return Outcome(200, None, changed=True)

    def give_back(self, inp: Undone, channel: str, now: float) -> Outcome:
        """Undo on the survivor: the orders the merge brought leave its list."""
        merge, back = self.merge, "back:" + inp.merge_id
        if merge is None or back in merge.done:
            return Outcome(200, merge.done[back] if merge else [], changed=False)
        brought = set(merge.done.get(inp.merge_id) or ())
        rows = [[i, *self.seen.pop(i)] for i in self.ids if i in brought]
        self.ids = [i for i in self.ids if i not in brought]
        merge.done[back] = rows
        self.merge = merge.unmerged(inp.merge_id, inp.other_uid)
        return Outcome(200, rows, changed=True)

    def restore(self, inp: Restore, channel: str, now: float) -> Outcome:
        """Undo on the merged user: its orders back (those it had, and any since)."""
        if self.merge is None or inp.merge_id not in self.merge.done:
            return Outcome(200, None, changed=False)
        _, bought = self.merge.done[inp.merge_id]
        for order_id, status, version in inp.given:
            if order_id not in self.seen:
                self.ids.append(order_id)
                self.seen[order_id] = [intern(status), version]
        self.bought.update(intern(sku) for sku in bought)
        self.merge = self.merge.given_back(inp.merge_id)
        return Outcome(200, None, changed=True)

    def page(self, inp: OrderPage, channel: str, now: float) -> Outcome:
        """Order ids newest first, of one status if asked; the route reads the orders."""
        chosen = [i for i in self.ids if inp.status is None or self.seen[i][0] == inp.status]
        ids, next_cursor = newest_first(chosen, inp.cursor, inp.limit)
        return Outcome(200, {"ids": ids, "next_cursor": next_cursor}, changed=False)


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
        scope="orders",
        entity=entity,
        ident=ident,
        view=OrderListView,
        ops=(
            Op(f"{name}.note", entity.note, Note),
            Op(f"{name}.page", entity.page, OrderPage, read=True),
            Op(f"{name}.hand_over", entity.hand_over, HandOver, on_alias=True),
            Op(f"{name}.absorb", entity.absorb, AbsorbOrders),
            Op(f"{name}.give_back", entity.give_back, Undone),
            Op(f"{name}.restore", entity.restore, Restore, on_alias=True),
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
