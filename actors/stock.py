"""Stock(sku): one SKU's on-hand count and the reservations that hold it.

``available = on_hand - reserved`` and no command ever makes it negative, so
no mix of channels can oversell: every reservation for a SKU is decided by
this one entity, one command at a time.
"""

from __future__ import annotations

import heapq
import secrets
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from omnigrid.actors.entity import Entity, Handler, Outcome, intern
from omnigrid.actors.errors import GridError
from omnigrid.persistence.events import rfc3339

# A closed reservation is remembered this long, so commit/release after it
# answers "reservation_closed" rather than "not_found".
CLOSED_RETENTION_S = 24 * 3600.0


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
    reads: ClassVar[frozenset[str]] = frozenset({"stock.get", "stock.reservation"})
    # a cart line's live availability (the cart checks and shows it)
    queries: ClassVar[dict[str, Callable[[Any], Any]]] = {
        "stock.available": lambda stock: stock.available
    }

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

    def get(self, args: dict[str, Any], channel: str, now: float) -> Outcome:
        if not self.exists:
            raise GridError("unknown_sku", f"SKU {self.ident!r} has never been stocked")
        return Outcome(200, self.view(), changed=False)

    def set_on_hand(self, args: dict[str, Any], channel: str, now: float) -> Outcome:
        on_hand: int = args["on_hand"]
        if on_hand < self.reserved:
            raise GridError(
                "insufficient_stock",
                f"on_hand {on_hand} is below the {self.reserved} currently reserved",
            )
        changed = on_hand != self.on_hand or not self.exists
        self.on_hand = on_hand
        return Outcome(200, None, changed=changed)

    def adjust(self, args: dict[str, Any], channel: str, now: float) -> Outcome:
        self._require_stocked()
        delta: int = args["delta"]
        if self.on_hand + delta < self.reserved:
            raise GridError(
                "insufficient_stock",
                f"on_hand {self.on_hand} {delta:+d} would drop below the "
                f"{self.reserved} currently reserved",
            )
        self.on_hand += delta
        return Outcome(200, None, changed=True)

    def reserve(self, args: dict[str, Any], channel: str, now: float) -> Outcome:
        self._require_stocked()
        qty: int = args["qty"]
        if qty > self.available:
            raise GridError("insufficient_stock", f"asked for {qty}, {self.available} available")
        # The id is a decision: it goes back into args, so the journal keeps it
        # and a replay of this command makes the same reservation.
        rid = args.get("rid") or "r" + secrets.token_hex(10)
        args["rid"] = rid
        r = Reservation(rid, qty, "held", now + args["ttl_s"], args.get("ref"), intern(channel))
        self.reservations[rid] = r
        heapq.heappush(self._held_by_expiry, (r.expires_at, rid))
        self.reserved += qty
        return Outcome(201, self.reservation_view(r), changed=True)

    def commit(self, args: dict[str, Any], channel: str, now: float) -> Outcome:
        r = self._reservation(args["reservation_id"])
        if r.status != "held":
            raise GridError("reservation_closed", f"reservation {r.rid} is {r.status}")
        r.status = "committed"
        self.reserved -= r.qty
        self.on_hand -= r.qty
        self._closed.append((now, r.rid))
        return Outcome(200, self.reservation_view(r), changed=True)

    def release(self, args: dict[str, Any], channel: str, now: float) -> Outcome:
        r = self._reservation(args["reservation_id"])
        if r.status == "committed":
            raise GridError("reservation_closed", f"reservation {r.rid} is committed")
        if r.status != "held":  # released or expired already: nothing left to give back
            return Outcome(200, self.reservation_view(r), changed=False)
        r.status = "released"
        self.reserved -= r.qty
        self._closed.append((now, r.rid))
        return Outcome(200, self.reservation_view(r), changed=True)

    def get_reservation(self, args: dict[str, Any], channel: str, now: float) -> Outcome:
        return Outcome(200, self.reservation_view(self._reservation(args["reservation_id"])), False)

    def _require_stocked(self) -> None:
        if not self.exists:
            raise GridError("unknown_sku", f"SKU {self.ident!r} has never been stocked")

    def _reservation(self, rid: str) -> Reservation:
        self._require_stocked()
        r = self.reservations.get(rid)
        if r is None:
            raise GridError("not_found", f"no reservation {rid!r} for SKU {self.ident!r}")
        return r

    handlers: ClassVar[dict[str, Handler]] = {
        "stock.get": get,
        "stock.set": set_on_hand,
        "stock.adjust": adjust,
        "stock.reserve": reserve,
        "stock.commit": commit,
        "stock.release": release,
        "stock.reservation": get_reservation,
    }
