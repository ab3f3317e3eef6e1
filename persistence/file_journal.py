"""The embedded journal: append-only segment files, one directory per shard.

Each append is one record written with one ``write`` to the tail segment: a
header (first number, count, body length, CRC32 of all three and the body)
and the batch's events as one msgpack array. The operating system has the
record once ``write`` returns, so an acknowledged batch survives the death of
any process; with ``sync="full"`` the record is also fdatasync'ed, so it
survives a power loss. A record cut short (a power loss mid-write, a full
disk) fails its length or CRC check and ends the journal: it is cut off when
the journal is opened or settled, never read as events.

Why not SQLite (the embedded journal before this one, read once here to carry
an older data directory over): an SQLite append cost 25 µs of the shard's
event loop for one event against 4 µs for this write, and its WAL pages had
to be copied into the database again by a checkpoint thread
(loadtest/journal_bench.py, BENCHMARKS.md).

Segments roll over past ``segment_bytes`` and are named after their first
number. ``trim`` deletes the segments whose every event is stored and notes
the highest trimmed number in a small file, so replay skips what the store
has (replaying a stored event would be harmless: recovery skips versions the
store holds). An exclusive ``flock`` on the directory's lock file is the
fence: a second writer of the same journal (a restarted shard whose old
process lingers) waits for the first to die, and cannot append meanwhile.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import sqlite3
import struct
import time
import zlib
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NoReturn

import msgpack

from omnigrid.persistence.events import Event
from omnigrid.persistence.journal import JournalOutcomeUnknown, JournalUnavailable, unpack_event

# first number, count, body length; then the CRC32 of those 16 bytes and the body
HEADER = struct.Struct("<QII")
CRC = struct.Struct("<I")
RECORD_HEAD = HEADER.size + CRC.size
SEGMENT_BYTES = 32 * 1024 * 1024  # a segment rolls over past this (deleting one is cheap)
LOCK_WAIT_S = 30.0  # how long a new writer waits for the old one's process to end
SEGMENT_NAME = re.compile(r"^seg-(\d{20})\.log$")
log = logging.getLogger("omnigrid.journal")


def _record(first_seq: int, events: Sequence[Event]) -> bytes:
    body: bytes = msgpack.packb([e.to_wire() for e in events], use_bin_type=True)
    head = HEADER.pack(first_seq, len(events), len(body))
    return head + CRC.pack(zlib.crc32(body, zlib.crc32(head))) + body


def _records(data: bytes) -> Iterator[tuple[int, int, int, int]]:
    """(first number, count, body offset, record end) of each whole, valid record, in order.

    Stops at the first record cut short or failing its CRC: what follows it
    was never acknowledged.
    """
    at = 0
    while at + RECORD_HEAD <= len(data):
        first, count, length = HEADER.unpack_from(data, at)
        (crc,) = CRC.unpack_from(data, at + HEADER.size)
        body = at + RECORD_HEAD
        end = body + length
        if count < 1 or end > len(data):
            return
        if zlib.crc32(data[body:end], zlib.crc32(data[at : at + HEADER.size])) != crc:
            return
        yield first, count, body, end
        at = end


def _segment_name(first_seq: int) -> str:
    return f"seg-{first_seq:020d}.log"


class FileJournal:
    def __init__(
        self,
        directory: str,
        sync: str = "normal",
        segment_bytes: int = SEGMENT_BYTES,
        lock_wait_s: float = LOCK_WAIT_S,
    ) -> None:
        if sync not in ("full", "normal"):
            raise ValueError("sync must be 'full' or 'normal'")
        self.directory = directory
        self.full = sync == "full"
        self.segment_bytes = segment_bytes
        os.makedirs(directory, exist_ok=True)
        self._lock = os.open(os.path.join(directory, "lock"), os.O_RDWR | os.O_CREAT, 0o600)
        self._take_lock(lock_wait_s)
        self._trimmed = self._read_trimmed()
        # (first number, path) of every segment, oldest first; the last is the tail
        self._segments: list[tuple[int, str]] = self._list_segments()
        if not self._segments:
            self._segments = [(self._trimmed + 1, self._new_segment(self._trimmed + 1))]
        self._last, self._end = self._open_tail()
        self._fd = os.open(self._segments[-1][1], os.O_WRONLY | os.O_APPEND)
        self._torn = False  # a record may be partly written: settle before appending
        # deletes trimmed segments and writes the mark, in order, off the shard's loop
        self._housekeeping = ThreadPoolExecutor(1, thread_name_prefix="journal-trim")

    # -- opening ----------------------------------------------------------------

    def _take_lock(self, wait_s: float) -> None:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(self._lock)
                    raise JournalUnavailable(
                        f"journal {self.directory}: another process still writes it"
                    ) from None
                time.sleep(0.05)

    def _read_trimmed(self) -> int:
        try:
            with open(os.path.join(self.directory, "trimmed")) as f:
                return int(f.read().strip() or 0)
        except FileNotFoundError:
            return 0

    def _list_segments(self) -> list[tuple[int, str]]:
        found = []
        for name in os.listdir(self.directory):
            match = SEGMENT_NAME.match(name)
            if match:
                found.append((int(match.group(1)), os.path.join(self.directory, name)))
        return sorted(found)

    def _new_segment(self, first_seq: int) -> str:
        path = os.path.join(self.directory, _segment_name(first_seq))
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        if self.full:  # the new name must survive a power loss too
            _fsync_dir(self.directory)
        return path

    def _open_tail(self) -> tuple[int, int]:
        """The last number and the end of the last whole record; a cut-short tail is cut off.

        Only the tail segment can end in a cut-short record: a segment rolls
        over after a whole record, so an earlier one that does is damaged.
        """
        last = self._segments[0][0] - 1
        for index, (first_seq, path) in enumerate(self._segments):
            with open(path, "rb") as f:
                data = f.read()
            last, end = max(last, first_seq - 1), 0
            for first, count, _, record_end in _records(data):
                last, end = first + count - 1, record_end
            if end < len(data):
                if index < len(self._segments) - 1:  # never guessed past: the shard stays down
                    os.close(self._lock)
                    raise JournalUnavailable(
                        f"journal {self.directory}: {os.path.basename(path)} is damaged at "
                        f"byte {end} of {len(data)} (a power loss with sync 'normal'?); the "
                        "changes after it cannot be read back"
                    )
                log.warning(
                    "journal %s: cut off %d bytes of a record never acknowledged",
                    self.directory,
                    len(data) - end,
                )
                os.truncate(path, end)
        return last, end

    # -- the Journal protocol ---------------------------------------------------

    def append(self, first_seq: int, events: Sequence[Event]) -> None:
        if self._torn:
            raise JournalUnavailable(f"journal {self.directory}: a record is partly written")
        if self._end >= self.segment_bytes:
            self._roll_over(first_seq)
        record = _record(first_seq, events)
        try:
            written = os.write(self._fd, record)
            if written != len(record):
                raise OSError(f"wrote {written} of {len(record)} bytes")
            if self.full:
                os.fdatasync(self._fd)
        except OSError as e:
            self._cut_back(first_seq, first_seq + len(events) - 1, e)
        self._end += len(record)
        self._last = first_seq + len(events) - 1

    def _cut_back(self, first_seq: int, last_seq: int, error: OSError) -> NoReturn:
        """Take a failed record back out of the file, then refuse the batch."""
        try:
            os.ftruncate(self._fd, self._end)
        except OSError:
            self._torn = True  # settle cuts it off; nothing is appended after it meanwhile
            raise JournalOutcomeUnknown(
                f"journal {self.directory}: {error}", first_seq, last_seq
            ) from error
        raise JournalUnavailable(f"journal {self.directory}: {error}") from error

    def _roll_over(self, first_seq: int) -> None:
        try:
            path = self._new_segment(first_seq)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        except OSError as e:
            raise JournalUnavailable(f"journal {self.directory}: {e}") from e
        os.close(self._fd)
        self._fd, self._end = fd, 0
        self._segments.append((first_seq, path))

    def replay(self) -> Iterator[tuple[int, Event]]:
        for _, path in list(self._segments):
            try:
                with open(path, "rb") as f:
                    data = f.read()
            except FileNotFoundError:  # trimmed meanwhile
                continue
            for first, count, body, end in _records(data):
                if first + count - 1 <= self._trimmed:
                    continue
                wires: list[Any] = msgpack.unpackb(data[body:end], use_list=True)
                for seq, wire in enumerate(wires, first):
                    if seq > self._trimmed:
                        yield seq, Event.from_wire(wire)

    def trim(self, upto: int) -> None:
        """Forget events up to ``upto``: whole segments go; the mark skips the rest.

        Decided here, done by the housekeeping thread: deleting a 32 MB file and
        renaming the mark held a shard's loop over 20 ms at times under load
        (OMNIGRID_STALL_WATCH_MS). A crash before it is done only means events the
        store has are read again at the next start, and recovery skips them.
        """
        if upto <= self._trimmed:
            return
        upto = min(upto, self._last)
        gone = []
        # a segment goes once the next one starts at or below upto + 1; the tail stays
        while len(self._segments) > 1 and self._segments[1][0] <= upto + 1:
            gone.append(self._segments.pop(0)[1])
        self._trimmed = upto
        self._housekeeping.submit(self._forget, gone, upto)

    def _forget(self, paths: list[str], upto: int) -> None:
        try:
            for path in paths:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            mark = os.path.join(self.directory, "trimmed")
            with open(mark + ".new", "w") as f:
                f.write(str(upto))
            os.replace(mark + ".new", mark)
        except OSError as e:  # the next trim writes the mark; a segment left goes at a restart
            log.warning("journal %s: trimming failed: %s", self.directory, e)

    def wait_for_housekeeping(self) -> None:
        """Until the trims handed over so far are done (before copying the files)."""
        self._housekeeping.submit(lambda: None).result()

    def last_seq(self) -> int:
        return max(self._last, self._trimmed)

    def settle(self, doubtful: tuple[int, int] | None) -> int:
        """Cut off a record left partly written, and say where the journal ends.

        A doubtful batch is only ever the last record, cut back or cut off
        here: a failed write is never kept.
        """
        try:
            os.ftruncate(self._fd, self._end)
            if self.full:
                os.fdatasync(self._fd)
        except OSError as e:
            raise JournalUnavailable(f"journal {self.directory}: {e}") from e
        self._torn = False
        return self.last_seq()

    def start_after(self, seq: int) -> None:
        """Number the next append after ``seq`` (an earlier journal's last number)."""
        if seq > self.last_seq():
            self._roll_over(seq + 1)  # the segment's name keeps the number across restarts
            self._last = seq

    def sync(self) -> None:
        """Everything appended to the disk itself (a power loss keeps it)."""
        os.fsync(self._fd)

    def close(self) -> None:
        self._housekeeping.shutdown(wait=True)
        os.close(self._fd)
        os.close(self._lock)  # the lock goes with it


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def carry_over_sqlite(path: str, journal: FileJournal) -> int:
    """Move an earlier SQLite journal's events (and numbering) into ``journal``, once.

    A data directory written before the file journal keeps its unstored
    events in ``journal-shardN.sqlite3`` (tables ``journal(seq, event)`` and
    ``trimmed(upto)``): they are appended with their own numbers (any already
    carried by an interrupted earlier try are skipped), made durable, and only
    then is the SQLite file removed. Returns how many events were carried.
    """
    old = sqlite3.connect(path, isolation_level=None)
    try:
        rows = old.execute("SELECT seq, event FROM journal ORDER BY seq").fetchall()
        (upto,) = old.execute("SELECT coalesce(max(upto), 0) FROM trimmed").fetchone()
    except sqlite3.Error as e:
        raise JournalUnavailable(f"the earlier journal {path}: {e}") from e
    finally:
        old.close()
    carried, run, run_first = 0, list[Event](), 0
    for seq, data in rows:
        if seq <= journal.last_seq():
            continue
        if run and seq != run_first + len(run):  # a gap: numbers of a removed batch
            journal.append(run_first, run)
            carried, run = carried + len(run), []
        if not run:
            run_first = seq
        run.append(unpack_event(data))
    if run:
        journal.append(run_first, run)
        carried += len(run)
    journal.start_after(max([int(upto)] + [seq for seq, _ in rows]))
    journal.sync()
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.unlink(path + suffix)
    log.warning("journal %s: carried %d events over from %s", journal.directory, carried, path)
    return carried
