"""The Redis journal against a Redis of the test's own (the embedded one: test_file_journal.py)."""

from __future__ import annotations

import os
import signal
import time

import pytest

from omnigrid.actors.protocol import Command
from omnigrid.actors.shard import Shard
from omnigrid.actors.slots import SlotMap
from omnigrid.persistence.events import Event
from omnigrid.persistence.journal import JournalOutcomeUnknown, JournalUnavailable
from omnigrid.persistence.redis_journal import SETTLE_TIMEOUT_S, RedisJournal
from tests.conftest import OwnRedis, free_port


def stock(shard: Shard, sku: str, on_hand: int) -> int:
    return shard.apply(Command("stock.set", "stock:" + sku, {"on_hand": on_hand}, "pos")).status


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


def test_a_trim_never_holds_the_caller_while_redis_is_stalled(own_redis: OwnRedis) -> None:
    """Trims ran on the shard's loop and waited SETTLE_TIMEOUT_S (0.5 s) each for a
    stalled Redis: the appends behind them were not even sent (a CI run's 1 s stall
    saw no write refused). A thread of its own trims now."""
    journal = RedisJournal(own_redis.url, "og:test:trim")
    assert journal.last_seq() == 0
    journal.append(1, [event(1), event(2), event(3)])
    assert own_redis.proc is not None
    os.kill(own_redis.proc.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        journal.trim(2)  # no exception, no wait: the thread's try fails on its own
        took = time.monotonic() - started
    finally:
        os.kill(own_redis.proc.pid, signal.SIGCONT)
    assert took < SETTLE_TIMEOUT_S / 2, took
    journal.wait_for_housekeeping()
    journal.trim(2)  # the next drain's trim goes as far
    journal.wait_for_housekeeping()
    assert [seq for seq, _ in journal.replay()] == [3]
    journal.close()


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
