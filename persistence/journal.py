"""The journal: every batch of changes, durable before any of its answers.

A shard hands each batch's events to its journal in one group commit (one
transaction, one pipelined round trip) and releases the batch's answers only
after ``append`` returns. Recovery replays ``replay()`` in order. Every event
has a sequence number given by its shard; once the snapshots covering events
up to a number are durable in the store, ``trim`` drops them, so the journal
holds only what the store does not have yet.

Backends: ``SqliteJournal`` (embedded default, one WAL file per shard under
the data directory, ``synchronous=FULL``) and ``RedisJournal`` (one Redis
Stream per shard, when ``OMNIGRID_REDIS_URL`` is set). ``MemoryJournal``
keeps events in memory for tests; ``NullJournal`` drops them.
"""

from __future__ import annotations

import bisect
import os
import sqlite3
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import msgpack

from omnigrid.persistence.events import Event

REPLAY_CHUNK = 10_000
APPEND_CHUNK = 10_000  # rows per INSERT (SQLite allows 32,766 parameters)
TRIM_CHUNK = 10_000  # journal rows deleted per trim (one per drain, 5 a second)


class JournalUnavailable(Exception):
    """The journal could not make a batch durable: nothing of it may be acknowledged."""


class Journal(Protocol):
    def append(self, first_seq: int, events: Sequence[Event]) -> None:
        """Make one batch durable, in order, as one group (or raise), numbered from first_seq."""

    def replay(self) -> Iterator[tuple[int, Event]]:
        """Every event appended and not trimmed, oldest first, with its number."""

    def trim(self, upto: int) -> None:
        """Forget events numbered ``upto`` or lower (their snapshots are durable)."""

    def last_seq(self) -> int:
        """The highest number ever appended (0 for a new journal), trimmed or not."""


def _pack(event: Event) -> bytes:
    packed: bytes = msgpack.packb(event.to_wire(), use_bin_type=True)
    return packed


def _unpack(data: bytes) -> Event:
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
        # The highest number trimmed, so numbering goes on after a full trim.
        self._db.execute("CREATE TABLE IF NOT EXISTS trimmed (upto INTEGER NOT NULL)")

    def append(self, first_seq: int, events: Sequence[Event]) -> None:
        try:
            with self._db:  # one transaction: the group commit
                # One multi-row statement: executemany would give the GIL up and
                # take it back once per row, each time after the other threads.
                for start in range(0, len(events), APPEND_CHUNK):
                    chunk = events[start : start + APPEND_CHUNK]
                    params: list[Any] = []
                    for seq, event in enumerate(chunk, first_seq + start):
                        params += (seq, _pack(event))
                    values = ",".join(["(?,?)"] * len(chunk))
                    self._db.execute(f"INSERT INTO journal (seq, event) VALUES {values}", params)
        except sqlite3.Error as e:
            raise JournalUnavailable(f"SQLite journal {self.path}: {e}") from e

    def replay(self) -> Iterator[tuple[int, Event]]:
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
                yield seq, _unpack(data)

    def trim(self, upto: int) -> None:
        """Delete at most TRIM_CHUNK numbers per call: the rest goes with the next calls.

        A big entity's snapshot lets 100,000 events go at once, and deleting
        them in one statement on the shard's event loop stalled it for 100 ms.
        """
        try:
            (done,) = self._db.execute("SELECT coalesce(max(upto), 0) FROM trimmed").fetchone()
            if done == 0:
                (first,) = self._db.execute("SELECT coalesce(min(seq), 1) FROM journal").fetchone()
                done = first - 1
            upto = min(upto, int(done) + TRIM_CHUNK)
            if upto <= done:
                return
            with self._db:
                self._db.execute("DELETE FROM journal WHERE seq <= ?", (upto,))
                self._db.execute("DELETE FROM trimmed")
                self._db.execute("INSERT INTO trimmed (upto) VALUES (?)", (upto,))
        except sqlite3.Error as e:
            raise JournalUnavailable(f"SQLite journal {self.path}: {e}") from e

    def last_seq(self) -> int:
        (appended,) = self._db.execute("SELECT coalesce(max(seq), 0) FROM journal").fetchone()
        (trimmed,) = self._db.execute("SELECT coalesce(max(upto), 0) FROM trimmed").fetchone()
        return max(int(appended), int(trimmed))

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

    # An event's stream id is "<seq>-0": its number is its id, and trimming is XTRIM MINID.

    def append(self, first_seq: int, events: Sequence[Event]) -> None:
        import redis

        pipe = self._redis.pipeline(transaction=True)  # MULTI/EXEC: all of a batch or none
        for seq, event in enumerate(events, first_seq):
            pipe.xadd(self.stream, {b"e": _pack(event)}, id=f"{seq}-0")
        try:
            pipe.execute()
        except redis.RedisError as e:
            raise JournalUnavailable(f"Redis journal {self.stream}: {e}") from e

    def replay(self) -> Iterator[tuple[int, Event]]:
        import redis

        start = "-"
        while True:
            try:
                entries: Any = self._redis.xrange(self.stream, min=start, count=REPLAY_CHUNK)
            except redis.RedisError as e:
                raise JournalUnavailable(f"Redis journal {self.stream}: {e}") from e
            if not entries:
                return
            for entry_id, fields in entries:
                yield int(bytes(entry_id).split(b"-")[0]), _unpack(fields[b"e"])
            start = "(" + bytes(entries[-1][0]).decode()

    def trim(self, upto: int) -> None:
        import redis

        try:
            self._redis.xtrim(self.stream, minid=f"{upto + 1}-0", approximate=False)
        except redis.RedisError as e:
            raise JournalUnavailable(f"Redis journal {self.stream}: {e}") from e

    def last_seq(self) -> int:
        import redis

        try:
            info: Any = self._redis.xinfo_stream(self.stream)
        except redis.ResponseError:
            return 0  # no such stream yet
        except redis.RedisError as e:
            raise JournalUnavailable(f"Redis journal {self.stream}: {e}") from e
        return int(bytes(info["last-generated-id"]).split(b"-")[0])

    def close(self) -> None:
        self._redis.close()
