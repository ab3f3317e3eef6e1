"""Cart(uid): one shopper's cart, shared by every channel.

Each line remembers the channel that added it and the one that last changed
it. A cart holds no stock: the availability a command checks against is read
from the SKU's Stock entity by the router and passed in ``args["available"]``
(``None`` for a SKU never stocked); the live availability in a cart view is
filled in the same way at read time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from omnigrid.actors.entity import Entity, Handler, Outcome, intern
from omnigrid.actors.errors import GridError, InvalidRequest
from omnigrid.persistence.events import rfc3339

MAX_LINE_QTY = 9_999
MAX_LINES = 200


@dataclass(slots=True)
class Line:
    qty: int
    added_via: str
    updated_via: str
    updated_at: float


class Cart(Entity):
    __slots__ = ("lines",)

    kind: ClassVar[str] = "cart"
    reads: ClassVar[frozenset[str]] = frozenset({"cart.get"})

    def __init__(self, key: str, ident: str) -> None:
        super().__init__(key, ident)
        self.lines: dict[str, Line] = {}

    def view(self) -> dict[str, Any]:
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
                for sku, line in self.lines.items()
            ],
        }

    def kind_state(self) -> Any:
        return [
            [sku, ln.qty, ln.added_via, ln.updated_via, ln.updated_at]
            for sku, ln in self.lines.items()
        ]

    def load_kind_state(self, data: Any) -> None:
        self.lines = {
            intern(sku): Line(qty, intern(added), intern(updated), at)
            for sku, qty, added, updated, at in data
        }

    def get(self, args: dict[str, Any], channel: str, now: float) -> Outcome:
        return Outcome(200, self.view(), changed=False)

    def add(self, args: dict[str, Any], channel: str, now: float) -> Outcome:
        sku: str = args["sku"]
        line = self.lines.get(sku)
        qty = args["qty"] + (line.qty if line else 0)
        self._check(sku, qty, args.get("available"), new_line=line is None)
        channel = intern(channel)
        if line is None:
            self.lines[intern(sku)] = Line(qty, channel, channel, now)
        else:
            line.qty, line.updated_via, line.updated_at = qty, channel, now
        return Outcome(200, None, changed=True)

    def set_qty(self, args: dict[str, Any], channel: str, now: float) -> Outcome:
        sku: str = args["sku"]
        qty: int = args["qty"]
        if qty == 0:
            return self.remove(args, channel, now)
        line = self.lines.get(sku)
        if line is not None and line.qty == qty:
            return Outcome(200, None, changed=False)
        self._check(sku, qty, args.get("available"), new_line=line is None)
        channel = intern(channel)
        if line is None:
            self.lines[intern(sku)] = Line(qty, channel, channel, now)
        else:
            line.qty, line.updated_via, line.updated_at = qty, channel, now
        return Outcome(200, None, changed=True)

    def remove(self, args: dict[str, Any], channel: str, now: float) -> Outcome:
        changed = self.lines.pop(args["sku"], None) is not None
        return Outcome(200, None, changed=changed)

    def clear(self, args: dict[str, Any], channel: str, now: float) -> Outcome:
        changed = bool(self.lines)
        self.lines.clear()
        return Outcome(200, None, changed=changed)

    def _check(self, sku: str, qty: int, available: int | None, new_line: bool) -> None:
        if qty > MAX_LINE_QTY:
            raise InvalidRequest(f"a cart line holds at most {MAX_LINE_QTY}; this would be {qty}")
        if available is None:
            raise GridError("unknown_sku", f"SKU {sku!r} has never been stocked")
        if new_line and len(self.lines) >= MAX_LINES:
            raise GridError("cart_full", f"a cart holds at most {MAX_LINES} lines")
        if qty > available:
            raise GridError(
                "insufficient_stock", f"the line would hold {qty} of {sku!r}; {available} available"
            )

    handlers: ClassVar[dict[str, Handler]] = {
        "cart.get": get,
        "cart.add": add,
        "cart.set": set_qty,
        "cart.remove": remove,
        "cart.clear": clear,
    }
