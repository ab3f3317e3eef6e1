"""The embedded journal's segment files, on real files (and a tmpfs of the test's own)."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from loadtest.fault_makers import small_disk
from omnigrid.actors.protocol import Command
from omnigrid.actors.shard import Shard
from omnigrid.actors.slots import SlotMap
from omnigrid.persistence.events import Event
from omnigrid.persistence.file_journal import FileJournal, carry_over_sqlite
from omnigrid.persistence.journal import JournalUnavailable, pack_event


def _event(n: int, size: int = 0) -> Event:
    return Event(
        "stock", f"stock:s{n % 7}", n, "pos", "stock.set", 1_700_000_000.0 + n,
        {"on_hand": n, "pad": "x" * size}, {"on_hand": n},
    )  # fmt: skip


def _seqs(journal: FileJournal) -> list[int]:
    return [seq for seq, _ in journal.replay()]


def test_a_shard_replays_into_the_same_state(tmp_path: Path) -> None:
    first = Shard(0, SlotMap.even(1), FileJournal(str(tmp_path / "j")))
    first.apply(Command("stock.set", "stock:a", {"on_hand": 10}, "pos"))
    reserve = Command("stock.reserve", "stock:a", {"qty": 3, "ttl_s": 60, "ref": None}, "app", "k")
    reserved = first.apply(reserve)
    first.apply(Command("cart.add", "cart:u", {"sku": "a", "qty": 2, "available": 7}, "h5"))
    first.journal.close()  # type: ignore[attr-defined]
    again = Shard(0, SlotMap.even(1), FileJournal(str(tmp_path / "j")))
    assert again.recover(again.journal.replay()) == 3
    for key, entity in first.entities.items():
        assert again.entities[key].view() == entity.view()
    assert again.apply(reserve).body == reserved.body  # the idempotency record came back too
    assert again.journal.last_seq() == 3


def test_events_come_back_with_their_numbers_in_both_sync_modes(tmp_path: Path) -> None:
    for sync in ("normal", "full"):
        journal = FileJournal(str(tmp_path / sync), sync)
        journal.append(1, [_event(1), _event(2)])
        journal.append(5, [_event(5)])  # numbers 3-4 were a removed batch's
        journal.close()
        journal = FileJournal(str(tmp_path / sync), sync)
        got = list(journal.replay())
        assert [s for s, _ in got] == [1, 2, 5] and got[2][1] == _event(5)
        assert journal.last_seq() == 5
        journal.close()
    with pytest.raises(ValueError):
        FileJournal(str(tmp_path / "x"), "sometimes")


def test_trim_drops_whole_segments_and_numbering_goes_on(tmp_path: Path) -> None:
    journal = FileJournal(str(tmp_path), segment_bytes=2_000)
    for n in range(1, 41):
        journal.append(n, [_event(n, size=200)])
    segments = sorted(p.name for p in tmp_path.glob("seg-*.log"))
    assert len(segments) > 5  # rolled over, each named after its first number
    journal.trim(25)
    assert _seqs(journal) == list(range(26, 41))
    journal.close()  # the housekeeping thread has deleted them by then
    assert len(list(tmp_path.glob("seg-*.log"))) < len(segments)
    journal = FileJournal(str(tmp_path), segment_bytes=2_000)
    assert _seqs(journal) == list(range(26, 41))  # the mark skips the tail's stored ones
    journal.trim(40)
    journal.close()
    journal = FileJournal(str(tmp_path), segment_bytes=2_000)
    assert _seqs(journal) == [] and journal.last_seq() == 40
    journal.append(41, [_event(41)])
    assert _seqs(journal) == [41]
    journal.trim(10)  # behind the mark: nothing happens
    assert _seqs(journal) == [41]


def test_a_record_cut_short_is_cut_off_and_never_read(tmp_path: Path) -> None:
    journal = FileJournal(str(tmp_path))
    journal.append(1, [_event(1)])
    journal.append(2, [_event(2), _event(3)])
    journal.close()
    (tail,) = tmp_path.glob("seg-*.log")
    whole = tail.read_bytes()
    tail.write_bytes(whole[:-5])  # a power loss in the middle of the second record
    journal = FileJournal(str(tmp_path))
    assert _seqs(journal) == [1] and journal.last_seq() == 1
    journal.append(2, [_event(2)])  # the next append follows the whole record
    journal.close()
    assert _seqs(FileJournal(str(tmp_path))) == [1, 2]


def test_a_record_with_a_flipped_byte_ends_the_journal(tmp_path: Path) -> None:
    journal = FileJournal(str(tmp_path))
    for n in (1, 2, 3):
        journal.append(n, [_event(n)])
    journal.close()
    (tail,) = tmp_path.glob("seg-*.log")
    data = bytearray(tail.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the second record
    tail.write_bytes(bytes(data))
    assert _seqs(FileJournal(str(tmp_path))) == [1]


def test_a_damaged_segment_before_the_tail_refuses_to_open(tmp_path: Path) -> None:
    journal = FileJournal(str(tmp_path), segment_bytes=500)
    for n in range(1, 6):
        journal.append(n, [_event(n, size=400)])
    journal.close()
    first = sorted(tmp_path.glob("seg-*.log"))[0]
    first.write_bytes(first.read_bytes()[:-3])
    with pytest.raises(JournalUnavailable, match="damaged"):
        FileJournal(str(tmp_path), segment_bytes=500)


def test_a_second_writer_waits_for_the_first_to_go(tmp_path: Path) -> None:
    journal = FileJournal(str(tmp_path))
    journal.append(1, [_event(1)])
    with pytest.raises(JournalUnavailable, match="another process"):
        FileJournal(str(tmp_path), lock_wait_s=0.2)
    threading.Timer(0.3, journal.close).start()
    started = time.monotonic()
    second = FileJournal(str(tmp_path), lock_wait_s=10)  # taken once the first lets go
    assert time.monotonic() - started >= 0.25
    assert _seqs(second) == [1]


def test_a_full_disk_refuses_the_batch_and_leaves_no_trace() -> None:
    with small_disk(1) as disk:
        journal = FileJournal(str(disk / "j"))
        journal.append(1, [_event(1)])
        filler = disk / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
        with pytest.raises(OSError):  # to the last page
            while True:
                os.write(fd, b"\0" * 4096)
        os.close(fd)
        (tail,) = (disk / "j").glob("seg-*.log")
        size = tail.stat().st_size  # its page has room left: the write below is cut short
        with pytest.raises(JournalUnavailable):
            journal.append(2, [_event(n, size=3000) for n in range(2, 6)])
        assert tail.stat().st_size == size  # what was written of it, taken back
        filler.unlink()
        assert journal.settle(None) == 1
        journal.append(2, [_event(2)])
        journal.close()
        assert _seqs(FileJournal(str(disk / "j"))) == [1, 2]


def _sqlite_journal(path: str, events: list[tuple[int, Event]], trimmed: int) -> None:
    """A journal as the SQLite journal of earlier versions left it (its two tables)."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE journal (seq INTEGER PRIMARY KEY, event BLOB NOT NULL)")
    db.execute("CREATE TABLE trimmed (upto INTEGER NOT NULL)")
    db.executemany("INSERT INTO journal VALUES (?, ?)", [(n, pack_event(e)) for n, e in events])
    db.executemany("INSERT INTO trimmed VALUES (?)", [(trimmed,)] if trimmed else [])
    db.close()


def test_an_earlier_sqlite_journal_is_carried_over_once(tmp_path: Path) -> None:
    path = str(tmp_path / "journal-shard0.sqlite3")
    # 1 trimmed (stored); 4-5 a removed batch's numbers
    _sqlite_journal(path, [(n, _event(n)) for n in (2, 3, 6)], trimmed=1)
    journal = FileJournal(str(tmp_path / "journal-shard0"))
    assert carry_over_sqlite(path, journal) == 3
    assert not any(os.path.exists(path + s) for s in ("", "-wal", "-shm"))
    assert [(s, e.version) for s, e in journal.replay()] == [(2, 2), (3, 3), (6, 6)]
    journal.append(7, [_event(7)])
    journal.close()
    assert _seqs(FileJournal(str(tmp_path / "journal-shard0"))) == [2, 3, 6, 7]
    emptied = str(tmp_path / "emptied.sqlite3")  # everything stored: only the numbering
    _sqlite_journal(emptied, [], trimmed=9)
    journal = FileJournal(str(tmp_path / "emptied"))
    assert carry_over_sqlite(emptied, journal) == 0
    journal.close()
    journal = FileJournal(str(tmp_path / "emptied"))
    assert journal.last_seq() == 9 and _seqs(journal) == []
