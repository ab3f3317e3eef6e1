"""Stock(sku): one SKU's on-hand count and the reservations that hold it.

``available = on_hand - reserved`` and no command ever makes it negative, so
no mix of channels can oversell: every reservation for a SKU is decided by
this one entity, one command at a time.
"""

from __future__ import annotations

import heapq
import secrets
from collections import deque
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

import msgspec

from omnigrid.actors.declaration import (
    MAX_COUNT,
    Id,
    Input,
    Kind,
    Op,
    Refusal,
    Route,
    Stream,
    View,
)
from omnigrid.actors.entity import Entity, Outcome, intern
from omnigrid.actors.errors import GridError
from omnigrid.persistence.events import rfc3339

# A closed reservation is remembered this long, so commit/release after it
# answers "reservation_closed" rather than "not_found".
CLOSED_RETENTION_S = 24 * 3600.0
MAX_TTL_S = 3600
DEFAULT_TTL_S = 900
MAX_REF_CHARS = 128
MAX_REASON_CHARS = 256
AVAILABLE = "stock.available"  # query: on_hand - reserved (a cart checks and shows it)

UNKNOWN_SKU = Refusal("unknown_sku", 404, "Unknown SKU")
INSUFFICIENT_STOCK = Refusal("insufficient_stock", 409, "Insufficient stock")
RESERVATION_CLOSED = Refusal("reservation_closed", 409, "Reservation closed")


# -- inputs ---------------------------------------------------------------------


class StockSet(Input):
    on_hand: Annotated[int, msgspec.Meta(ge=0, le=MAX_COUNT)]


class StockAdjustment(Input):
    delta: Annotated[int, msgspec.Meta(ge=-MAX_COUNT, le=MAX_COUNT, description="non-zero")]
    reason: Annotated[str, msgspec.Meta(max_length=MAX_REASON_CHARS)] | None = None

    def __post_init__(self) -> None:
        if self.delta == 0:
            raise ValueError("delta must not be 0")


class ReservationCreate(Input):
    qty: Annotated[int, msgspec.Meta(ge=1, le=MAX_COUNT)]
    ttl_s: Annotated[int, msgspec.Meta(ge=1, le=MAX_TTL_S)] = DEFAULT_TTL_S
    ref: Annotated[str, msgspec.Meta(max_length=MAX_REF_CHARS)] | None = None
    rid: str | None = None  # decided: the reservation's id, so a replay makes the same one


class ReservationRef(Input):
    reservation_id: Id


class Settle(Input):
    """An order's hold, at its end (actors/order.py)."""

    reservation_id: Id
    to: Literal["committed", "released"]


# -- answers (documentation) ------------------------------------------------------


class StockView(View):
    sku: str
    on_hand: int
    reserved: int
    available: Annotated[int, msgspec.Meta(description="on_hand - reserved, never negative")]
    version: int
    updated_at: str | None


class ReservationView(View):
    reservation_id: str
    sku: str
    qty: int
    status: Literal["held", "committed", "released", "expired"]
    expires_at: str
    ref: str | None
    channel: str


@dataclass(slots=True)
class Reservation:
    rid: str
    qty: int
    status: str  # held | committed | released | expired
    expires_at: float
    ref: str | None
    channel: str


class Stock(Entity):
    __slots__ = ("_closed", "_held_by_expiry", "on_hand", "reservations", "reserved")

    kind: ClassVar[str] = "stock"

    def __init__(self, key: str, ident: str) -> None:
        super().__init__(key, ident)
        self.on_hand = 0
        self.reserved = 0
        self.reservations: dict[str, Reservation] = {}
        self._held_by_expiry: list[tuple[float, str]] = []  # heap of held reservations
        self._closed: deque[tuple[float, str]] = deque()  # (closed_at, rid), oldest first

    @property
    def available(self) -> int:
        return self.on_hand - self.reserved

    def view(self) -> dict[str, Any]:
        return {
            "sku": self.ident,
            "on_hand": self.on_hand,
            "reserved": self.reserved,
            "available": self.available,
            "version": self.version,
            "updated_at": rfc3339(self.updated_at),
        }

    def reservation_view(self, r: Reservation) -> dict[str, Any]:
        return {
            "reservation_id": r.rid,
            "sku": self.ident,
            "qty": r.qty,
            "status": r.status,
            "expires_at": rfc3339(r.expires_at),
            "ref": r.ref,
            "channel": r.channel,
        }

    def kind_state(self) -> Any:
        # Columns, not a list per reservation: a flash sale's SKU holds 100,000
        # reservations, and packing seven flat lists costs a fraction of
        # packing 100,000 small ones. The expiry heap is rebuilt on load.
        rs = list(self.reservations.values())
        closed_at = {rid: when for when, rid in self._closed}
        return [
            self.on_hand,
            self.reserved,
            [r.rid for r in rs],
            [r.qty for r in rs],
            [r.status for r in rs],
            [r.expires_at for r in rs],
            [r.ref for r in rs],
            [r.channel for r in rs],
            [closed_at.get(r.rid) for r in rs],
        ]

    def load_kind_state(self, data: Any) -> None:
        self.on_hand, self.reserved, rids, qtys, statuses, expiries, refs, channels, closed = data
        self.reservations = {
            rid: Reservation(rid, qty, intern(status), expires_at, ref, intern(channel))
            for rid, qty, status, expires_at, ref, channel in zip(
                rids, qtys, statuses, expiries, refs, channels, strict=True
            )
        }
        self._held_by_expiry = [
            (r.expires_at, r.rid) for r in self.reservations.values() if r.status == "held"
        ]
        heapq.heapify(self._held_by_expiry)
        ends = [(when, rid) for when, rid in zip(closed, rids, strict=True) if when is not None]
        ends.sort(key=lambda end: end[0])  # closing order
        self._closed = deque(ends)

    # -- timed work ---------------------------------------------------------

    def next_deadline(self) -> float | None:
        heap = self._held_by_expiry
        while heap and getattr(self.reservations.get(heap[0][1]), "status", None) != "held":
            heapq.heappop(heap)  # committed or released before it was due
        return heap[0][0] if heap else None

    def expire(self, now: float) -> bool:
        """Give back the quantity of every held reservation past its expiry."""
        changed = False
        heap = self._held_by_expiry
        while heap and heap[0][0] <= now:
            _, rid = heapq.heappop(heap)
            r = self.reservations.get(rid)
            if r is not None and r.status == "held":
                r.status = "expired"
                self.reserved -= r.qty
                self._closed.append((now, rid))
                changed = True
        while self._closed and self._closed[0][0] < now - CLOSED_RETENTION_S:
            self.reservations.pop(self._closed.popleft()[1], None)
        return changed

    # -- commands -------------------------------------------------------------

    def get(self, _: None, channel: str, now: float) -> Outcome:
        self._require_stocked()
        return Outcome(200, self.view(), changed=False)

    def set_on_hand(self, inp: StockSet, channel: str, now: float) -> Outcome:
        if inp.on_hand < self.reserved:
            raise INSUFFICIENT_STOCK(
                f"on_hand {inp.on_hand} is below the {self.reserved} currently reserved"
            )
        changed = inp.on_hand != self.on_hand or not self.exists
        self.on_hand = inp.on_hand
        return Outcome(200, None, changed=changed)

    def adjust(self, inp: StockAdjustment, channel: str, now: float) -> Outcome:
        self._require_stocked()
        if self.on_hand + inp.delta < self.reserved:
            raise INSUFFICIENT_STOCK(
                f"on_hand {self.on_hand} {inp.delta:+d} would drop below the "
                f"{self.reserved} currently reserved"
            )
        self.on_hand += inp.delta
        return Outcome(200, None, changed=True)

    def reserve(self, inp: ReservationCreate, channel: str, now: float) -> Outcome:
        self._require_stocked()
        placed = self.reservations.get(inp.rid or "")
        if placed is not None:  # an order's hold sent again (or given back before it came)
            return Outcome(201, self.reservation_view(placed), changed=False)
        if inp.qty > self.available:
            raise INSUFFICIENT_STOCK(f"asked for {inp.qty}, {self.available} available")
        # The id is a decision: it goes back into the input, so the journal keeps
        # it and a replay of this command makes the same reservation.
        inp.rid = inp.rid or "r" + secrets.token_hex(10)
        r = Reservation(inp.rid, inp.qty, "held", now + inp.ttl_s, inp.ref, intern(channel))
        self.reservations[r.rid] = r
        heapq.heappush(self._held_by_expiry, (r.expires_at, r.rid))
        self.reserved += inp.qty
        return Outcome(201, self.reservation_view(r), changed=True)

    def commit(self, inp: ReservationRef, channel: str, now: float) -> Outcome:
        r = self._reservation(inp.reservation_id)
        if r.status != "held":
            raise RESERVATION_CLOSED(f"reservation {r.rid} is {r.status}")
        r.status = "committed"
        self.reserved -= r.qty
        self.on_hand -= r.qty
        self._closed.append((now, r.rid))
        return Outcome(200, self.reservation_view(r), changed=True)

    def release(self, inp: ReservationRef, channel: str, now: float) -> Outcome:
        r = self._reservation(inp.reservation_id)
        if r.status == "committed":
            raise RESERVATION_CLOSED(f"reservation {r.rid} is committed")
        if r.status != "held":  # released or expired already: nothing left to give back
            return Outcome(200, self.reservation_view(r), changed=False)
        r.status = "released"
        self.reserved -= r.qty
        self._closed.append((now, r.rid))
        return Outcome(200, self.reservation_view(r), changed=True)

    def settle(self, inp: Settle, channel: str, now: float) -> Outcome:
        """An order's hold committed or given back, once however often it is asked.

        Given back before it was placed (a checkout's straggling hold), it is kept as
        given back, so the hold is refused when it comes. Committed after it expired
        (its order was paid just as the hold ran out), it is taken again if the stock
        is still there."""
        r = self.reservations.get(inp.reservation_id)
        if r is None:
            if inp.to == "committed":
                raise GridError("not_found", f"no reservation {inp.reservation_id!r}")
            if not self.exists:
                return Outcome(200, None, changed=False)
            r = Reservation(inp.reservation_id, 0, "released", now, None, intern(channel))
            self.reservations[r.rid] = r
            self._closed.append((now, r.rid))
            return Outcome(200, self.reservation_view(r), changed=True)
        if r.status == inp.to or (r.status == "expired" and inp.to == "released"):
            return Outcome(200, self.reservation_view(r), changed=False)
        if r.status == "held":
            return (self.commit if inp.to == "committed" else self.release)(
                ReservationRef(reservation_id=r.rid), channel, now
            )
        if r.status == "expired" and r.qty <= self.available:
            r.status = "committed"
            self.on_hand -= r.qty
            return Outcome(200, self.reservation_view(r), changed=True)
        raise RESERVATION_CLOSED(f"reservation {r.rid} is {r.status}: it cannot be {inp.to}")

    def get_reservation(self, inp: ReservationRef, channel: str, now: float) -> Outcome:
        return Outcome(200, self.reservation_view(self._reservation(inp.reservation_id)), False)

    def _require_stocked(self) -> None:
        if not self.exists:
            raise UNKNOWN_SKU(f"SKU {self.ident!r} has never been stocked")

    def _reservation(self, rid: str) -> Reservation:
        self._require_stocked()
        r = self.reservations.get(rid)
        if r is None:
            raise GridError("not_found", f"no reservation {rid!r} for SKU {self.ident!r}")
        return r


_RESERVATION = {"rid": "reservation_id"}
_WITH_RESERVATION = ("unknown_sku", "not_found")

KIND = Kind(
    name="stock",
    scope="stock",
    entity=Stock,
    ident="sku",
    view=StockView,
    ops=(
        Op("stock.get", Stock.get, read=True),
        Op("stock.set", Stock.set_on_hand, StockSet),
        Op("stock.adjust", Stock.adjust, StockAdjustment),
        Op("stock.reserve", Stock.reserve, ReservationCreate, decided=frozenset({"rid"})),
        Op("stock.commit", Stock.commit, ReservationRef),
        Op("stock.release", Stock.release, ReservationRef),
        Op("stock.settle", Stock.settle, Settle),
        Op("stock.reservation", Stock.get_reservation, ReservationRef, read=True),
    ),
    routes=(
        Route(
            "PUT",
            "/v1/skus/{sku}/stock",
            "put_stock",
            "stock.set",
            "Set a SKU's on-hand stock",
            StockView,
            refusals=("insufficient_stock",),
        ),
        Route(
            "GET",
            "/v1/skus/{sku}/stock",
            "get_stock",
            "stock.get",
            "Read a SKU's stock",
            StockView,
            refusals=("unknown_sku",),
        ),
        Route(
            "POST",
            "/v1/skus/{sku}/stock/adjustments",
            "adjust_stock",
            "stock.adjust",
            "Add to or take from a SKU's on-hand stock",
            StockView,
            refusals=("insufficient_stock", "unknown_sku"),
        ),
        Route(
            "POST",
            "/v1/skus/{sku}/reservations",
            "reserve",
            "stock.reserve",
            "Hold stock for a checkout",
            ReservationView,
            status=201,
            refusals=("insufficient_stock", "unknown_sku"),
        ),
        Route(
            "GET",
            "/v1/skus/{sku}/reservations/{rid}",
            "get_reservation",
            "stock.reservation",
            "Read a reservation",
            ReservationView,
            refusals=_WITH_RESERVATION,
            path_fields=_RESERVATION,
        ),
        Route(
            "POST",
            "/v1/skus/{sku}/reservations/{rid}/commit",
            "commit_reservation",
            "stock.commit",
            "Commit a held reservation (on_hand drops by its qty)",
            ReservationView,
            refusals=("reservation_closed", *_WITH_RESERVATION),
            path_fields=_RESERVATION,
        ),
        Route(
            "DELETE",
            "/v1/skus/{sku}/reservations/{rid}",
            "release_reservation",
            "stock.release",
            "Release a held reservation",
            ReservationView,
            refusals=("reservation_closed", *_WITH_RESERVATION),
            path_fields=_RESERVATION,
        ),
    ),
    queries={AVAILABLE: lambda stock: stock.available},
    stream=Stream(
        "/v1/streams/skus/{sku}",
        "sku_stream",
        "Server-Sent Events: every change to the SKU's stock (resumable with Last-Event-ID)",
    ),
    refusals=(UNKNOWN_SKU, INSUFFICIENT_STOCK, RESERVATION_CLOSED),
)
