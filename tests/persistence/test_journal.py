"""Journals against real stores: SQLite files and a Redis of the test's own."""

from __future__ import annotations

import os
import signal
import sqlite3
import time

import pytest

from omnigrid.actors.protocol import Command
from omnigrid.actors.shard import Shard
from omnigrid.actors.slots import SlotMap
from omnigrid.persistence.events import Event
from omnigrid.persistence.journal import JournalOutcomeUnknown, JournalUnavailable, SqliteJournal
from omnigrid.persistence.redis_journal import RedisJournal
from tests.conftest import OwnRedis, free_port


def stock(shard: Shard, sku: str, on_hand: int) -> int:
    return shard.apply(Command("stock.set", "stock:" + sku, {"on_hand": on_hand}, "pos")).status


def test_sqlite_journal_replays_into_the_same_state(tmp_path: object) -> None:
    path = f"{tmp_path}/journal.sqlite3"
    first = Shard(0, SlotMap.even(1), SqliteJournal(path))
    stock(first, "a", 10)
    reserved = first.apply(
        Command("stock.reserve", "stock:a", {"qty": 3, "ttl_s": 60, "ref": None}, "app", "k", "f")
    )
    first.apply(Command("cart.add", "cart:u", {"sku": "a", "qty": 2, "available": 7}, "h5"))
    again = Shard(0, SlotMap.even(1), SqliteJournal(path))
    assert again.recover(again.journal.replay()) == 3
    for key, entity in first.entities.items():
        assert again.entities[key].view() == entity.view()
    retry = again.apply(
        Command("stock.reserve", "stock:a", {"qty": 3, "ttl_s": 60, "ref": None}, "app", "k", "f")
    )
    assert retry.body == reserved.body  # the idempotency record was replayed too


def test_appends_never_checkpoint_and_a_thread_keeps_the_wal_small(tmp_path: object) -> None:
    """A commit that filled SQLite's 1,000 pages used to copy the WAL into the file and
    fsync it inside the append, on the shard's loop: the checkpointer thread does it."""
    path = f"{tmp_path}/journal.sqlite3"
    journal = SqliteJournal(path, sync="normal")
    assert journal.checkpointer is not None and SqliteJournal(path + "2").checkpointer is None
    journal.checkpointer.every_s = 0.05
    try:
        view = {"uid": "u", "version": 1, "lines": [{"sku": "s" * 200, "qty": 1}]}
        events = [Event("cart", f"cart:u{i}", 1, "app", "cart.add", 0.0, view) for i in range(50)]
        seq = 1
        for _ in range(400):  # ~20,000 events of ~300 bytes: several times 1,000 pages
            journal.append(seq, events)
            seq += len(events)
        (autocheckpoint,) = journal._db.execute("PRAGMA wal_autocheckpoint").fetchone()
        assert autocheckpoint == 0
        deadline = time.monotonic() + 10
        while journal.checkpointer.checkpoints < 2:
            assert time.monotonic() < deadline, "the checkpointer never ran"
            time.sleep(0.05)
        # the thread's passes copied every frame: the next append starts the WAL over
        journal.append(seq, events[:1])
        seq += 1
        probe = sqlite3.connect(path)
        _, frames, _ = probe.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        probe.close()
        assert 0 < frames < 100, frames  # not the thousands of pages appended before
        assert journal.checkpointer.failures == 0
        assert sum(1 for _ in journal.replay()) == seq - 1
    finally:
        journal.close()
    assert not journal.checkpointer._thread.is_alive()


def test_the_wal_starts_over_under_steady_appends(tmp_path: object) -> None:
    """One checkpoint pass a second never caught up with appends that never pause:
    the WAL grew ~15 MB/s (255 MB after a 40 s benchmark). Passes until one finds
    nothing new, then a pause, let an append start the file over every time."""
    path = f"{tmp_path}/journal.sqlite3"
    journal = SqliteJournal(path, sync="normal")
    assert journal.checkpointer is not None
    journal.checkpointer.every_s = 0.1
    # Past 1 MB, a restart is forced: on a busy machine (CI) the passes alone did not
    # always find an append-free moment.
    journal.checkpointer.restart_over_bytes = 1_000_000
    try:
        events = [Event("cart", f"cart:u{i}", 1, "app", "cart.add", 0.0, {}) for i in range(5)]
        seq, appends = 1, 0
        deadline = time.monotonic() + 60
        while journal.checkpointer.checkpoints < 10:  # appends never pause meanwhile
            assert time.monotonic() < deadline, "the checkpointer never ran"
            journal.append(seq, events)
            seq, appends = seq + len(events), appends + 1
            time.sleep(0.0002)
        probe = sqlite3.connect(path)
        _, frames, _ = probe.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        probe.close()
        # every commit writes at least one frame to the WAL: one never started over
        # would hold all of them
        assert appends > 1_000 and frames < appends / 3, (appends, frames)
        assert journal.checkpointer.failures == 0
        assert sum(1 for _ in journal.replay()) == seq - 1
    finally:
        journal.close()


def test_redis_down_means_503_for_writes_reads_from_memory_then_recovery(
    own_redis: OwnRedis,
) -> None:
    shard = Shard(0, SlotMap.even(1), RedisJournal(own_redis.url, "og:test:journal:0"))
    assert stock(shard, "a", 10) == 200
    shard.apply(Command("cart.add", "cart:u", {"sku": "a", "qty": 1, "available": 10}, "h5"))
    own_redis.stop()
    result = shard.apply(Command("stock.adjust", "stock:a", {"delta": 5}, "pos"))
    assert (result.status, result.code) == (503, "unavailable")
    # reads keep working from memory, and the refused change left no trace
    view = shard.apply(Command("stock.get", "stock:a")).body
    assert (view["on_hand"], view["version"]) == (10, 1)
    assert shard.apply(Command("cart.get", "cart:u")).body["version"] == 1
    # writes answer 503 at once while the journal is down
    again = shard.apply(Command("cart.clear", "cart:u", {}, "app"))
    assert (again.status, again.code) == (503, "unavailable")
    assert shard.apply(Command("cart.get", "cart:u")).body["version"] == 1
    own_redis.start()  # the same AOF directory: the journal is still there
    deadline = time.monotonic() + 5  # the shard tries the journal again once a second
    while stock(shard, "a", 12) == 503:
        assert time.monotonic() < deadline, "the shard never recovered"
        time.sleep(0.1)
    assert shard.apply(Command("stock.get", "stock:a")).body["version"] == 2
    rebuilt = Shard(0, SlotMap.even(1), RedisJournal(own_redis.url, "og:test:journal:0"))
    rebuilt.recover(rebuilt.journal.replay())
    for key in ("stock:a", "cart:u"):
        assert rebuilt.entities[key].view() == shard.entities[key].view()


def test_an_unreachable_redis_refuses_appends() -> None:
    journal = RedisJournal(f"redis://127.0.0.1:{free_port()}/0", "og:none")
    with pytest.raises(JournalUnavailable):
        list(journal.replay())


def event(version: int) -> Event:
    return Event("cart", "cart:u", version, "app", "cart.add", time.time(), {"version": version})


def test_a_batch_sent_to_a_stalled_redis_never_lands(own_redis: OwnRedis) -> None:
    journal = RedisJournal(own_redis.url, "og:test:stall", timeout_s=0.2)
    assert journal.last_seq() == 0
    journal.append(1, [event(1)])
    assert own_redis.proc is not None
    os.kill(own_redis.proc.pid, signal.SIGSTOP)
    try:
        with pytest.raises(JournalOutcomeUnknown) as unknown:
            journal.append(2, [event(2), event(3)])
        assert (unknown.value.first_seq, unknown.value.last_seq) == (2, 3)
        with pytest.raises(JournalUnavailable):
            journal.settle((2, 3))  # Redis still stalled: no answer yet
        time.sleep(0.3)  # past the batch's deadline
    finally:
        os.kill(own_redis.proc.pid, signal.SIGCONT)
    # Redis now runs the batch it held: the deadline has passed, it writes nothing
    assert journal.settle((2, 3)) == 1
    assert [seq for seq, _ in journal.replay()] == [1]
    journal.append(2, [event(2)])  # the journal goes on where it ends
    fresh = RedisJournal(own_redis.url, "og:test:stall")
    assert fresh.last_seq() == 2
    assert [e.version for _, e in fresh.replay()] == [1, 2]


def test_a_doubtful_batch_that_landed_is_removed_and_its_numbers_stay_used(
    own_redis: OwnRedis,
) -> None:
    journal = RedisJournal(own_redis.url, "og:test:void")
    journal.last_seq()
    journal.append(1, [event(1)])
    journal.append(2, [event(2), event(3)])  # say its answer was lost on the way back
    assert journal.settle((2, 3)) == 3  # it had landed: removed, its numbers used up
    assert [seq for seq, _ in journal.replay()] == [1]
    with pytest.raises(JournalUnavailable):
        journal.append(2, [event(2)])  # never a number twice
    journal.append(4, [event(2)])
    assert [seq for seq, _ in journal.replay()] == [1, 4]


def test_a_new_writer_fences_the_old_one(own_redis: OwnRedis) -> None:
    old = RedisJournal(own_redis.url, "og:test:fence")
    old.last_seq()
    old.append(1, [event(1)])
    new = RedisJournal(own_redis.url, "og:test:fence")  # a restarted shard process
    assert new.last_seq() == 1
    with pytest.raises(JournalUnavailable, match="OGFENCED"):
        old.append(2, [event(2)])
    new.append(2, [event(2)])
    assert [seq for seq, _ in new.replay()] == [1, 2]


def test_a_shard_refuses_a_stalled_batch_serves_reads_and_heals(own_redis: OwnRedis) -> None:
    journal = RedisJournal(own_redis.url, "og:test:shard", timeout_s=0.2)
    shard = Shard(0, SlotMap.even(1), journal)
    assert stock(shard, "a", 10) == 200
    assert own_redis.proc is not None
    os.kill(own_redis.proc.pid, signal.SIGSTOP)
    try:
        refused = shard.apply(Command("stock.adjust", "stock:a", {"delta": 5}, "pos"))
        assert (refused.status, refused.code) == (503, "unavailable")
        assert refused.detail == "the journal cannot take writes right now; retry later"
        assert shard.commit.doubtful == (2, 2)
        # reads from memory, without the refused change
        assert shard.apply(Command("stock.get", "stock:a")).body["on_hand"] == 10
        started = time.monotonic()
        assert stock(shard, "a", 11) == 503  # at once: the journal is not tried meanwhile
        assert time.monotonic() - started < 0.1
    finally:
        os.kill(own_redis.proc.pid, signal.SIGCONT)
    shard.commit.retry_at = 0.0
    assert stock(shard, "a", 12) == 200  # healed by the write itself (inline in tests)
    assert shard.journal_ok() and shard.commit.doubtful is None
    rebuilt = Shard(0, SlotMap.even(1), RedisJournal(own_redis.url, "og:test:shard"))
    rebuilt.recover(rebuilt.journal.replay())
    view = rebuilt.entities["stock:a"].view()
    assert (view["on_hand"], view["version"]) == (12, 2)
