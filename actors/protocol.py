"""Commands and results: the plain data that crosses process boundaries.

A command names one operation on one entity key. It travels as a short
msgpack list, never as a pickled object, so a batch of a hundred costs one
small frame and the same encoding can feed a journal.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# A shard that does not own a command's slot answers with this status and its
# slot map in the body; routers never show it to a client.
MOVED = 421
# The entity is an alias of another of its kind (a merged user): the body names it,
# ``{"into": ident}``, and the router sends the command on to it.
ALIASED = 308


@dataclass(slots=True)
class Command:
    op: str
    key: str
    args: dict[str, Any] = field(default_factory=dict)
    channel: str = ""
    idempotency_key: str | None = None
    fingerprint: str | None = None
    if_match: int | None = None
    # a signed request's "<key id>:<nonce>", checked by the owner before it applies
    # the command (api/http/nonce_claim.py); never journaled
    nonce: str | None = None

    def to_wire(self) -> list[Any]:
        wire = [
            self.op,
            self.key,
            self.args,
            self.channel,
            self.idempotency_key,
            self.fingerprint,
            self.if_match,
        ]
        if self.nonce is not None:  # most commands carry none: the wire stays as it was
            wire.append(self.nonce)
        return wire

    @classmethod
    def from_wire(cls, wire: list[Any]) -> Command:
        return cls(*wire)


@dataclass(slots=True)
class Result:
    status: int
    body: Any = None
    code: str | None = None
    detail: str | None = None
    # The answer of an earlier write with the same idempotency key, given again
    # (POST /v1/sync reports it as "duplicate"). Not part of the answer itself.
    replayed: bool = field(default=False, compare=False)

    @property
    def ok(self) -> bool:
        return self.status < 400

    def to_wire(self) -> list[Any]:
        return [self.status, self.body, self.code, self.detail, self.replayed]

    @classmethod
    def from_wire(cls, wire: list[Any]) -> Result:
        return cls(*wire)
