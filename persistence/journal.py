"""The journal: every batch of changes, durable before any of its answers.

A shard hands each batch's events to its journal in one group commit (one
transaction, one pipelined round trip) and releases the batch's answers only
after ``append`` returns. Recovery replays ``replay()`` in order. Every event
has a sequence number given by its shard; once the snapshots covering events
up to a number are durable in the store, ``trim`` drops them, so the journal
holds only what the store does not have yet.

An append either works, or is refused (``JournalUnavailable``: nothing of
the batch is in the journal), or its outcome is unknown
(``JournalOutcomeUnknown``: a timeout or a cut connection after the batch was
sent). An unknown outcome is never guessed: ``settle`` fences every append
still on its way (it can no longer land), removes the doubtful batch if it
did land, and says where the journal ends, so a batch answered as failed
never comes back, live or after recovery.

Backends: ``SqliteJournal`` (embedded default, one WAL file per shard under
the data directory, ``synchronous`` NORMAL or FULL) and ``RedisJournal``
(persistence/redis_journal.py: one Redis Stream per shard, when
``OMNIGRID_REDIS_URL`` is set). ``MemoryJournal`` keeps events in memory for
tests; ``NullJournal`` drops them.
"""

from __future__ import annotations

import bisect
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import msgpack

from omnigrid.persistence.db import sqlite_transaction
from omnigrid.persistence.events import Event

REPLAY_CHUNK = 10_000
APPEND_CHUNK = 10_000  # rows per INSERT (SQLite allows 32,766 parameters)
TRIM_CHUNK = 10_000  # journal rows deleted per trim (one per drain, 5 a second)
# How long an append may hold the shard's event loop before it is refused (SQLite:
# a locked file) or its outcome is unknown (Redis: no answer). OMNIGRID_JOURNAL_TIMEOUT_S.
APPEND_TIMEOUT_S = 0.25
CHECKPOINT_EVERY_S = 1.0  # the WAL's pages go into the journal file this often
CATCH_UP_PASSES = 200  # checkpoint passes in a row, at most, until the WAL starts over
QUIET_PASSES = 3  # passes that found nothing new, a pause apart: appends have paused
RESTART_PAUSE_S = 0.001  # between them, for an append to start the WAL over
WAL_PAGE_BYTES, WAL_FRAME_HEADER = 4096, 24  # SQLite's default page, a WAL frame's header
WAL_SIZE_LIMIT = 64 * 1024 * 1024  # bytes a WAL keeps after a burst (then truncated)
log = logging.getLogger("omnigrid.journal")


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
        """Forget events numbered ``upto`` or lower (their snapshots are durable)."""

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


class SqliteJournal:
    """An embedded journal: one SQLite file in WAL mode.

    ``sync="full"`` fsyncs every commit: an acknowledged batch survives a
    power loss. ``sync="normal"`` hands every commit to the operating system
    and fsyncs at checkpoints: an acknowledged batch survives the death of any
    process, not of the machine. A file locked by another process is waited
    for ``timeout_s``, then the batch is refused: the caller's event loop is
    never held longer.
    """

    def __init__(self, path: str, sync: str = "full", timeout_s: float = APPEND_TIMEOUT_S) -> None:
        if sync not in ("full", "normal"):
            raise ValueError("sync must be 'full' or 'normal'")
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.path = path
        self.timeout_s = timeout_s
        self._db = sqlite3.connect(
            path, isolation_level=None, check_same_thread=False, timeout=timeout_s
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={sync.upper()}")
        self._db.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
        self.checkpointer: Checkpointer | None = None
        if sync == "normal":
            # No checkpoint inside an append: SQLite's automatic one ran in the commit
            # that filled 1,000 pages, on the shard's loop, and took 5-8 ms (fsync of
            # the file) once every ~600 appends of 20 events (loadtest/journal_bench.py).
            # With FULL, every commit fsyncs anyway and a thread's checkpoints made
            # appends 1.7x slower (two fsyncs contending) while the inline ones stayed
            # under 5 ms: FULL keeps SQLite's.
            self._db.execute("PRAGMA wal_autocheckpoint=0")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS journal (seq INTEGER PRIMARY KEY, event BLOB NOT NULL)"
        )
        # The highest number trimmed, so numbering goes on after a full trim.
        self._db.execute("CREATE TABLE IF NOT EXISTS trimmed (upto INTEGER NOT NULL)")
        if sync == "normal":
            self.checkpointer = Checkpointer(path, timeout_s)

    def append(self, first_seq: int, events: Sequence[Event]) -> None:
        last = first_seq + len(events) - 1
        # One statement is a transaction of its own; more need one around them
        # (the group commit is all of the batch or none of it).
        try:
            with sqlite_transaction(self._db, len(events) > APPEND_CHUNK):
                # Multi-row statements: executemany would give the GIL up and
                # take it back once per row, each time after the other threads.
                for start in range(0, len(events), APPEND_CHUNK):
                    chunk = events[start : start + APPEND_CHUNK]
                    params: list[Any] = []
                    for seq, event in enumerate(chunk, first_seq + start):
                        params += (seq, pack_event(event))
                    values = ",".join(["(?,?)"] * len(chunk))
                    self._db.execute(f"INSERT INTO journal (seq, event) VALUES {values}", params)
        except sqlite3.Error as e:
            # Whether the commit landed is read back, not assumed (an I/O error
            # can come after the commit record was written).
            try:
                landed = _last_seq(self._db) >= last
            except sqlite3.Error:
                raise JournalOutcomeUnknown(
                    f"SQLite journal {self.path}: {e}", first_seq, last
                ) from e
            if not landed:
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
                yield seq, unpack_event(data)

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
            with sqlite_transaction(self._db):
                self._db.execute("DELETE FROM journal WHERE seq <= ?", (upto,))
                self._db.execute("DELETE FROM trimmed")
                self._db.execute("INSERT INTO trimmed (upto) VALUES (?)", (upto,))
        except sqlite3.Error as e:
            raise JournalUnavailable(f"SQLite journal {self.path}: {e}") from e

    def last_seq(self) -> int:
        return _last_seq(self._db)

    def settle(self, doubtful: tuple[int, int] | None) -> int:
        """Check the file takes writes again; remove the doubtful range if it landed.

        A connection of its own: this runs on a worker thread while the
        shard's loop holds the journal's connection (and appends nothing).
        """
        try:
            db = sqlite3.connect(self.path, isolation_level=None, timeout=self.timeout_s)
        except sqlite3.Error as e:
            raise JournalUnavailable(f"SQLite journal {self.path}: {e}") from e
        try:
            with sqlite_transaction(db):  # the write lock can be had again
                if doubtful is not None:
                    db.execute("DELETE FROM journal WHERE seq BETWEEN ? AND ?", doubtful)
            return _last_seq(db)
        except sqlite3.Error as e:
            raise JournalUnavailable(f"SQLite journal {self.path}: {e}") from e
        finally:
            db.close()

    def close(self) -> None:
        if self.checkpointer is not None:
            self.checkpointer.stop()
        self._db.close()


class Checkpointer:
    """Copies a WAL file's pages into its database from a thread, every ``every_s``.

    PASSIVE checkpoints never wait for the writer nor block it (sqlite3 gives the
    GIL up while it copies and fsyncs), and once one has copied every frame the
    next append starts the WAL over, so the file stays the size of a second's
    appends. ``journal_size_limit`` truncates what a burst left beyond that.
    """

    def __init__(self, path: str, timeout_s: float, every_s: float = CHECKPOINT_EVERY_S) -> None:
        self.path = path
        self.timeout_s = timeout_s
        self.every_s = every_s
        self.checkpoints = 0  # passes done (a test watches it)
        self.failures = 0
        self.restart_over_bytes = WAL_SIZE_LIMIT  # a WAL past this is started over by force
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"checkpoint {os.path.basename(path)}", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        db = sqlite3.connect(self.path, isolation_level=None, timeout=self.timeout_s)
        try:
            db.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
            while not self._stop.wait(self.every_s):
                try:
                    self._pass(db)
                    self.checkpoints += 1
                except Exception as e:  # a busy or failing file: the next pass tries again
                    # (the thread must not die: the WAL would grow without end)
                    self.failures += 1
                    log.warning("SQLite journal %s: checkpoint failed: %s", self.path, e)
        finally:
            db.close()

    def _pass(self, db: sqlite3.Connection) -> None:
        """Checkpoint until an append has started the WAL over (or appends pause).

        An append starts the WAL over only if every frame is copied when it
        begins and no pass is running then. A pass reports the frames there were
        when it began, so one pass a second left the file growing ~15 MB/s under
        steady appends (a 255 MB WAL after a 40 s benchmark). Passes again copy
        only what landed meanwhile; once one finds nothing new, a short pause
        leaves the next append free to start the file over."""
        before, quiet = -1, 0
        for _ in range(CATCH_UP_PASSES):
            _, logged, copied = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()[0]
            if logged <= 0 or logged < before:  # empty, or started over by an append
                return
            if logged == before and copied >= logged:
                quiet += 1
                if quiet == QUIET_PASSES:  # no appends now: the next one starts it over
                    return
                time.sleep(RESTART_PAUSE_S)
            else:
                quiet = 0
            before = logged
        # Appends never paused long enough (a busy machine: a CI run saw it). Past the
        # bound, a RESTART checkpoint waits for the append in progress, holds the next
        # ones while it copies the last frames, and starts the WAL over: a rare pause
        # of a few ms rather than a WAL without end. (Frames, not the file's size: the
        # file keeps its largest size until journal_size_limit truncates it.)
        if logged * (WAL_PAGE_BYTES + WAL_FRAME_HEADER) > self.restart_over_bytes:
            db.execute("PRAGMA wal_checkpoint(RESTART)").fetchall()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def _last_seq(db: sqlite3.Connection) -> int:
    (appended,) = db.execute("SELECT coalesce(max(seq), 0) FROM journal").fetchone()
    (trimmed,) = db.execute("SELECT coalesce(max(upto), 0) FROM trimmed").fetchone()
    return max(int(appended), int(trimmed))
