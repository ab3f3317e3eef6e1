"""The seam where every batch of changes leaves a shard.

A shard hands each batch's events to its journal before it releases the
batch's answers. Until durable journals land (Redis Streams, SQLite) the grid
keeps state in memory only: ``MemoryJournal`` keeps the latest events for
inspection and ``NullJournal`` drops them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Protocol

from omnigrid.persistence.events import Event


class Journal(Protocol):
    def append(self, events: Sequence[Event]) -> None:
        """Take one batch of events, in order, as one group."""


class NullJournal:
    def append(self, events: Sequence[Event]) -> None:
        return None


class MemoryJournal:
    """Keeps the most recent ``capacity`` events (for tests and debugging)."""

    def __init__(self, capacity: int = 100_000) -> None:
        self.events: deque[Event] = deque(maxlen=capacity)
        self.batches = 0

    def append(self, events: Sequence[Event]) -> None:
        self.batches += 1
        self.events.extend(events)
