"""The base of every virtual actor a shard hosts.

An entity is a small object: its state, a version that grows by one with each
change, and the idempotency records of the writes it accepted. Its commands
are declared with its kind (actors/declaration.py). A handler validates first
and mutates last, so a refusal (a raised ``GridError``) leaves the entity
exactly as it was.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

# Idempotency keys are remembered for at least this long (the contract says 24 h).
IDEMPOTENCY_TTL_S = 24 * 3600.0


@dataclass(slots=True)
class Outcome:
    """What a handler did: the answer, and whether the entity changed."""

    status: int
    # the answer; None: the entity's view after the change; a callable: an answer
    # built on that view (so the view is built once, for the answer and the event)
    body: Any
    changed: bool
    # kept, not announced: bookkeeping the next snapshot keeps but that is no change
    # (no version, no event, no journal), safe to lose in a crash (a saga's record of
    # what it sent: lost, the idempotent sends are made again)
    noted: bool = False


@dataclass(slots=True)
class IdempotencyRecord:
    fingerprint: str
    status: int
    body: Any
    at: float


class Entity:
    # No per-instance __dict__: a million entities each save ~100 bytes.
    __slots__ = ("idempotency", "ident", "key", "updated_at", "version")

    kind: ClassVar[str] = ""  # the name of its Kind: its keys' prefix

    def __init__(self, key: str, ident: str) -> None:
        self.key = key
        self.ident = ident  # the uid or sku, without the kind prefix
        self.version = 0
        self.updated_at: float | None = None
        self.idempotency: dict[str, IdempotencyRecord] = {}  # oldest first

    @property
    def exists(self) -> bool:
        """Whether the entity was ever written (a never-written one is not kept)."""
        return self.version > 0

    def view(self) -> dict[str, Any]:
        raise NotImplementedError

    # -- snapshots: the whole state as plain data (msgpack-able) ----------------

    def state(self) -> list[Any]:
        """Everything needed to rebuild this entity, idempotency records included.

        Deterministic: the same entity always gives the same list, so an audit
        can compare a live entity with its stored snapshot byte for byte.
        """
        records = [[k, r.fingerprint, r.status, r.body, r.at] for k, r in self.idempotency.items()]
        return [self.version, self.updated_at, records, self.kind_state()]

    @classmethod
    def from_state(cls, key: str, ident: str, state: list[Any]) -> Entity:
        entity = cls(key, ident)
        entity.version, entity.updated_at, records, own = state
        for k, fingerprint, status, body, at in records:
            entity.idempotency[k] = IdempotencyRecord(fingerprint, status, body, at)
        entity.load_kind_state(own)
        return entity

    def kind_state(self) -> Any:
        """The subclass's own fields, as plain data."""
        raise NotImplementedError

    def load_kind_state(self, data: Any) -> None:
        raise NotImplementedError

    def alias(self) -> str | None:
        """The ident of the entity this one now stands for (a merged user's survivor)."""
        return None

    def next_deadline(self) -> float | None:
        """When this entity next has timed work to do (``expire``), if ever."""
        return None

    def expire(self, now: float) -> bool:
        """Do the timed work that is due by ``now``; return whether state changed."""
        return False

    def remember(self, idem_key: str, fingerprint: str, status: int, body: Any, now: float) -> None:
        """Keep an accepted write's answer; forget answers older than the TTL."""
        records = self.idempotency
        records.pop(idem_key, None)  # re-inserted last: the newest
        records[idem_key] = IdempotencyRecord(fingerprint, status, body, now)
        horizon = now - IDEMPOTENCY_TTL_S
        while records:
            oldest = next(iter(records))
            if records[oldest].at >= horizon:
                break
            del records[oldest]


def intern(text: str) -> str:
    """One copy of a string many entities hold (channel names, SKUs): a million
    five-line carts hold 10 million of them, about 600 MB as separate copies."""
    return sys.intern(text)


T = TypeVar("T")


def newest_first(oldest_first: Sequence[T], cursor: int, limit: int) -> tuple[list[T], int | None]:
    """A page of what an entity keeps oldest first, shown newest first, and the next
    page's cursor (None: no more). A cursor counts the items older than its page (0:
    from the newest), so items added meanwhile never push one onto a page twice."""
    top = min(cursor, len(oldest_first)) if cursor else len(oldest_first)
    page = list(oldest_first[max(0, top - limit) : top])[::-1]
    return page, top - limit if top - limit > 0 else None
