"""The journal: every batch of changes, durable before any of its answers.

A shard hands each batch's events to its journal in one group commit (one
record, or one script call) and releases the batch's answers only after
``append`` returns. Recovery replays ``replay()`` in order. Every event has a
sequence number given by its shard; once the snapshots covering events up to
a number are durable in the store, ``trim`` drops them, so the journal holds
only what the store does not have yet.

An append either works, or is refused (``JournalUnavailable``: nothing of
the batch is in the journal), or its outcome is unknown
(``JournalOutcomeUnknown``: a timeout or a cut connection after the batch was
sent). An unknown outcome is never guessed: ``settle`` fences every append
still on its way (it can no longer land), removes the doubtful batch if it
did land, and says where the journal ends, so a batch answered as failed
never comes back, live or after recovery.

Backends: ``FileJournal`` (persistence/file_journal.py: the embedded default,
append-only segment files per shard under the data directory) and
``RedisJournal`` (persistence/redis_journal.py: one Redis Stream per shard,
when ``OMNIGRID_REDIS_URL`` is set). ``MemoryJournal`` keeps events in memory
for tests; ``NullJournal`` drops them.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import msgpack

from omnigrid.persistence.events import Event

REPLAY_CHUNK = 10_000
# How long an append may hold the shard's event loop before its outcome is unknown
# (Redis: no answer). OMNIGRID_JOURNAL_TIMEOUT_S.
APPEND_TIMEOUT_S = 0.25


class JournalUnavailable(Exception):
    """The journal refused a batch (or a read): nothing of the batch is in it.

    The message is for the log, never for a client: it may carry a driver's text.
    """


class JournalOutcomeUnknown(JournalUnavailable):
    """The batch was sent but no answer came (a timeout, a cut connection).

    It may or may not be in the journal, and may still land later: the owner
    must ``settle`` the journal before it appends again.
    """

    def __init__(self, message: str, first_seq: int, last_seq: int) -> None:
        super().__init__(message)
        self.first_seq = first_seq
        self.last_seq = last_seq


class Journal(Protocol):
    def append(self, first_seq: int, events: Sequence[Event]) -> None:
        """Make one batch durable, in order, as one group (or raise), numbered from first_seq."""

    def replay(self) -> Iterator[tuple[int, Event]]:
        """Every event appended and not trimmed, oldest first, with its number."""

    def trim(self, upto: int) -> None:
        """Forget events numbered ``upto`` or lower (their snapshots are durable).

        Never raises and never waits on the caller's loop: the journals hand the
        work to a thread, and a trim that fails is made good by the next one.
        """

    def last_seq(self) -> int:
        """The highest number ever appended (0 for a new journal), trimmed or not.

        Taking a journal over (a shard starting) also fences any earlier
        writer of it, so a batch an older process sent can no longer land.
        """

    def settle(self, doubtful: tuple[int, int] | None) -> int:
        """Fence appends on their way, remove the ``doubtful`` range (first, last) if it
        landed, and return the highest number in use (or raise ``JournalUnavailable``).

        Numbers of a removed batch may stay used: the next append starts after
        the returned number.
        """


def pack_event(event: Event) -> bytes:
    packed: bytes = msgpack.packb(event.to_wire(), use_bin_type=True)
    return packed


def unpack_event(data: bytes) -> Event:
    wire: list[Any] = msgpack.unpackb(data, use_list=True)
    return Event.from_wire(wire)


class NullJournal:
    def append(self, first_seq: int, events: Sequence[Event]) -> None:
        return None

    def replay(self) -> Iterator[tuple[int, Event]]:
        return iter(())

    def trim(self, upto: int) -> None:
        return None

    def last_seq(self) -> int:
        return 0

    def settle(self, doubtful: tuple[int, int] | None) -> int:
        return 0


class MemoryJournal:
    """Keeps events in memory (for tests and debugging)."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.seqs: list[int] = []
        self.batches = 0
        self._last = 0

    def append(self, first_seq: int, events: Sequence[Event]) -> None:
        self.batches += 1
        self.events.extend(events)
        self.seqs.extend(range(first_seq, first_seq + len(events)))
        self._last = first_seq + len(events) - 1

    def replay(self) -> Iterator[tuple[int, Event]]:
        return iter(list(zip(self.seqs, self.events, strict=True)))

    def trim(self, upto: int) -> None:
        keep = bisect.bisect_right(self.seqs, upto)
        del self.seqs[:keep], self.events[:keep]

    def last_seq(self) -> int:
        return self._last

    def settle(self, doubtful: tuple[int, int] | None) -> int:
        return self._last
