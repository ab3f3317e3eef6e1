"""The journal: every batch of changes, durable before any of its answers.

A shard hands each batch's events to its journal in one group commit (one
transaction, one pipelined round trip) and releases the batch's answers only
after ``append`` returns. Recovery replays ``replay()`` in order.

Backends: ``SqliteJournal`` (embedded default, one WAL file per shard under
the data directory, ``synchronous=FULL``) and ``RedisJournal`` (one Redis
Stream per shard, when ``OMNIGRID_REDIS_URL`` is set). ``MemoryJournal``
keeps events in memory for tests; ``NullJournal`` drops them.
"""

from __future__ import annotations

import os
import sqlite3
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import msgpack

from omnigrid.persistence.events import Event

REPLAY_CHUNK = 10_000


class JournalUnavailable(Exception):
    """The journal could not make a batch durable: nothing of it may be acknowledged."""


class Journal(Protocol):
    def append(self, events: Sequence[Event]) -> None:
        """Make one batch of events durable, in order, as one group (or raise)."""

    def replay(self) -> Iterator[Event]:
        """Every event appended so far, oldest first."""


def _pack(event: Event) -> bytes:
    packed: bytes = msgpack.packb(event.to_wire(), use_bin_type=True)
    return packed


def _unpack(data: bytes) -> Event:
    wire: list[Any] = msgpack.unpackb(data, use_list=True)
    return Event.from_wire(wire)


class NullJournal:
    def append(self, events: Sequence[Event]) -> None:
        return None

    def replay(self) -> Iterator[Event]:
        return iter(())


class MemoryJournal:
    """Keeps the most recent ``capacity`` events (for tests and debugging)."""

    def __init__(self, capacity: int = 100_000) -> None:
        self.events: deque[Event] = deque(maxlen=capacity)
        self.batches = 0

    def append(self, events: Sequence[Event]) -> None:
        self.batches += 1
        self.events.extend(events)

    def replay(self) -> Iterator[Event]:
        return iter(list(self.events))


class SqliteJournal:
    """An embedded journal: one SQLite file in WAL mode.

    ``sync="full"`` fsyncs every commit: an acknowledged batch survives a
    power loss. ``sync="normal"`` hands every commit to the operating system
    and fsyncs at checkpoints: an acknowledged batch survives the death of any
    process, not of the machine.
    """

    def __init__(self, path: str, sync: str = "full") -> None:
        if sync not in ("full", "normal"):
            raise ValueError("sync must be 'full' or 'normal'")
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={sync.upper()}")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS journal (seq INTEGER PRIMARY KEY, event BLOB NOT NULL)"
        )

    def append(self, events: Sequence[Event]) -> None:
        try:
            with self._db:  # one transaction: the group commit
                self._db.executemany(
                    "INSERT INTO journal (event) VALUES (?)", [(_pack(e),) for e in events]
                )
        except sqlite3.Error as e:
            raise JournalUnavailable(f"SQLite journal {self.path}: {e}") from e

    def replay(self) -> Iterator[Event]:
        last = 0
        while True:
            rows = self._db.execute(
                "SELECT seq, event FROM journal WHERE seq > ? ORDER BY seq LIMIT ?",
                (last, REPLAY_CHUNK),
            ).fetchall()
            if not rows:
                return
            for seq, data in rows:
                last = seq
                yield _unpack(data)

    def close(self) -> None:
        self._db.close()


class RedisJournal:
    """One Redis Stream per shard; a batch is one pipelined round trip of XADDs.

    Durable only as far as Redis is: production needs ``appendonly yes`` with
    ``appendfsync always`` (or replicas and ``WAIT``).
    """

    def __init__(self, url: str, stream: str) -> None:
        import redis

        self.stream = stream
        self._redis = redis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)

    def append(self, events: Sequence[Event]) -> None:
        import redis

        pipe = self._redis.pipeline(transaction=True)  # MULTI/EXEC: all of a batch or none
        for event in events:
            pipe.xadd(self.stream, {b"e": _pack(event)})
        try:
            pipe.execute()
        except redis.RedisError as e:
            raise JournalUnavailable(f"Redis journal {self.stream}: {e}") from e

    def replay(self) -> Iterator[Event]:
        import redis

        start = "-"
        while True:
            try:
                entries: Any = self._redis.xrange(self.stream, min=start, count=REPLAY_CHUNK)
            except redis.RedisError as e:
                raise JournalUnavailable(f"Redis journal {self.stream}: {e}") from e
            if not entries:
                return
            for _, fields in entries:
                yield _unpack(fields[b"e"])
            start = "(" + bytes(entries[-1][0]).decode()

    def close(self) -> None:
        self._redis.close()
