"""A change to an entity, as plain data: what journals, streams and logs take."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Event:
    """One committed change: entity ``kind`` and ``key`` reached ``version``.

    ``view`` is the entity's view after the change, so a consumer (a stream, a
    snapshot writer) never has to ask the entity again.
    """

    kind: str
    key: str
    version: int
    channel: str
    op: str
    at: float
    view: dict[str, Any]

    def to_wire(self) -> list[Any]:
        return [self.kind, self.key, self.version, self.channel, self.op, self.at, self.view]

    @classmethod
    def from_wire(cls, wire: list[Any]) -> Event:
        return cls(*wire)
