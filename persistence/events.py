"""A change to an entity, as plain data: what journals, streams and logs take."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Event:
    """One committed change: entity ``kind`` and ``key`` reached ``version``.

    ``view`` is the entity's view after the change, so a consumer (a stream, a
    snapshot writer) never has to ask the entity again. ``args`` (with every
    decision the entity made, such as a reservation id), ``idempotency_key``
    and ``fingerprint`` let recovery run the same command again at ``at`` and
    reach the same state.
    """

    kind: str
    key: str
    version: int
    channel: str
    op: str
    at: float
    view: dict[str, Any]
    args: dict[str, Any] = field(default_factory=dict)
    idempotency_key: str | None = None
    fingerprint: str | None = None

    def to_wire(self) -> list[Any]:
        return [
            self.kind,
            self.key,
            self.version,
            self.channel,
            self.op,
            self.at,
            self.view,
            self.args,
            self.idempotency_key,
            self.fingerprint,
        ]

    @classmethod
    def from_wire(cls, wire: list[Any]) -> Event:
        return cls(*wire)
