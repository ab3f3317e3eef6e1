"""A shard with a real journal and a real store: snapshots, trimming, recovery,
passivation, a journal that refuses writes, async durability, a full queue."""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest

import omnigrid.actors.commit as commit_module
from omnigrid.actors.cart import Cart
from omnigrid.actors.protocol import Command, Result
from omnigrid.actors.residency import pack_state, unpack_entity
from omnigrid.actors.shard import Shard
from omnigrid.actors.slots import SlotMap
from omnigrid.actors.stock import Stock
from omnigrid.persistence.file_journal import FileJournal
from omnigrid.persistence.store import SqliteStore
from omnigrid.persistence.writebehind import WriteBehind

T0 = 1_700_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


class Node:
    """A shard on the embedded journal and store in ``path``, as a grid process would hold it."""

    restarts = 0

    def __init__(self, path: Path, clock: Clock, **options: Any) -> None:
        self.path = path
        self.clock = clock
        self.journal = FileJournal(str(path / "journal"), "normal")
        self.store = SqliteStore(str(path / "store.sqlite3"))
        self.shard = Shard(
            0, SlotMap.even(1), self.journal, clock=clock, loader=self.store.load, **options
        )
        self.recovered = self.shard.recover(self.journal.replay(), self.store.scan([(0, 16383)]))
        self.writebehind = WriteBehind(self.shard, self.store, 0.2, 100)

    def run(
        self, op: str, key: str, channel: str = "app", idem: str | None = None, **args: Any
    ) -> Result:
        return self.shard.apply(Command(op, key, args, channel, idem, "fp" if idem else None))

    def ok(self, op: str, key: str, **kw: Any) -> Any:
        result = self.run(op, key, **kw)
        assert result.ok, result
        return result.body

    def drain(self) -> bool:
        return asyncio.run(self.writebehind.drain())

    def restarted(self, **options: Any) -> Node:
        """A shard started on the files as a crash would leave them now: a copy, since
        this one holds the journal's lock as a live process does, and may go on."""
        Node.restarts += 1
        self.journal.wait_for_housekeeping()  # no trimmed segment going mid-copy
        into = self.path.with_name(f"{self.path.name}-restart{Node.restarts}")
        shutil.copytree(self.path, into)
        return Node(into, self.clock, **options)

    def journal_size(self) -> int:
        return len(list(self.journal.replay()))

    def states(self) -> dict[str, bytes]:
        return {k: pack_state(e) for k, e in self.shard.entities.items()}


@pytest.fixture()
def clock() -> Clock:
    return Clock()


def fill(node: Node) -> str:
    node.ok("stock.set", "stock:a", channel="pos", on_hand=10)
    node.ok("stock.set", "stock:b", channel="pos", on_hand=5)
    rid: str = node.ok("stock.reserve", "stock:a", idem="r1", qty=3, ttl_s=60)["reservation_id"]
    done = node.ok("stock.reserve", "stock:b", qty=1, ttl_s=60)["reservation_id"]
    node.ok("stock.commit", "stock:b", reservation_id=done)
    node.ok("cart.add", "cart:u", channel="h5", idem="c1", sku="a", qty=2, available=7)
    node.ok("cart.add", "cart:u", channel="app", sku="b", qty=1, available=4)
    return rid


def test_state_round_trips_byte_for_byte(tmp_path: Path, clock: Clock) -> None:
    node = Node(tmp_path, clock)
    fill(node)
    clock.now += 120
    node.ok("stock.get", "stock:a")  # the held reservation expires
    for key, entity in node.shard.entities.items():
        copy = unpack_entity(key, pack_state(entity))
        assert copy is not None and type(copy) is type(entity)
        assert pack_state(copy) == pack_state(entity)
        assert copy.view() == entity.view()
    stock = node.shard.entities["stock:a"]
    assert isinstance(stock, Stock) and stock.reservations
    assert isinstance(node.shard.entities["cart:u"], Cart)


def test_drain_stores_snapshots_and_events_then_trims_the_journal(
    tmp_path: Path, clock: Clock
) -> None:
    node = Node(tmp_path, clock)
    fill(node)
    assert node.journal_size() == 7
    assert node.drain()
    assert (
        node.journal_size() == 0
        and not node.shard.backlog.unstored
        and not node.shard.backlog.dirty
    )
    db = sqlite3.connect(tmp_path / "store.sqlite3")
    events = db.execute(
        "SELECT key, version, channel, op FROM omnigrid_events ORDER BY at, key, version"
    ).fetchall()
    assert ("cart:u", 1, "h5", "cart.add") in events and len(events) == 7
    stored = dict(db.execute("SELECT key, state FROM omnigrid_snapshots").fetchall())
    assert stored == node.states()
    # numbering goes on after a full trim, so a restart never reuses a number
    node.ok("stock.adjust", "stock:a", delta=1)
    assert [seq for seq, _ in node.journal.replay()] == [8]


def test_recovery_is_the_snapshot_plus_the_journal_after_it(tmp_path: Path, clock: Clock) -> None:
    node = Node(tmp_path, clock)
    rid = fill(node)
    node.drain()
    node.ok("stock.adjust", "stock:a", channel="pos", delta=5)  # journaled, not stored
    node.ok("cart.set", "cart:u", sku="a", qty=3, available=12)
    before = node.states()

    again = node.restarted()
    assert again.recovered == 2  # only the journal's tail ran again
    assert again.states() == before
    assert again.shard.backlog.dirty == {
        "stock:a",
        "cart:u",
    }  # the store does not have the tail yet
    # the idempotency record survived, and so did the reservation's expiry
    retry = again.run("stock.reserve", "stock:a", idem="r1", qty=3, ttl_s=60)
    assert retry.status == 201 and retry.body["reservation_id"] == rid
    clock.now += 61
    again.shard.tick()
    assert again.ok("stock.get", "stock:a")["reserved"] == 0
    assert again.drain()
    third = again.restarted()
    assert third.recovered == 0 and third.states() == again.states()


def test_idle_entities_passivate_under_the_budget_and_come_back(
    tmp_path: Path, clock: Clock
) -> None:
    node = Node(tmp_path, clock, max_resident=10)
    node.ok("stock.set", "stock:a", channel="pos", on_hand=10**6)
    for i in range(100):
        node.ok("cart.add", f"cart:u{i}", idem=f"k{i}", sku="a", qty=1 + i % 3, available=10**6)
    views = {f"u{i}": node.ok("cart.get", f"cart:u{i}") for i in range(100)}
    node.shard.tick()
    assert len(node.shard.entities) == 101, "nothing leaves memory before it is stored"
    node.drain()
    node.shard.tick()
    assert len(node.shard.entities) == 10
    assert len(node.shard.residency.cold) == 91
    for i in range(100):
        assert node.ok("cart.get", f"cart:u{i}") == views[f"u{i}"]
        # an idempotency record passivated and came back with its entity
        again = node.run("cart.add", f"cart:u{i}", idem=f"k{i}", sku="a", qty=1 + i % 3)
        assert again.body == views[f"u{i}"]
    assert node.shard.residency.activations >= 90
    # a restart within the budget holds 10 and knows where the other 91 are
    restarted = node.restarted(max_resident=10)
    assert len(restarted.shard.entities) == 10 and len(restarted.shard.residency.cold) == 91
    assert restarted.ok("cart.get", "cart:u42") == views["u42"]


def test_an_entity_with_a_held_reservation_stays_in_memory(tmp_path: Path, clock: Clock) -> None:
    node = Node(tmp_path, clock, max_resident=1)
    node.ok("stock.set", "stock:a", channel="pos", on_hand=5)
    node.ok("stock.reserve", "stock:a", qty=2, ttl_s=30)
    node.ok("stock.set", "stock:b", channel="pos", on_hand=5)
    node.drain()
    node.shard.tick()
    assert set(node.shard.entities) == {"stock:a"}  # b left; a has timed work
    clock.now += 31
    node.shard.tick()  # the reservation expires: a is dirty again
    node.drain()
    node.shard.tick()
    assert len(node.shard.entities) == 1
    assert node.ok("stock.get", "stock:a")["reserved"] == 0
    assert node.ok("stock.get", "stock:b")["on_hand"] == 5


def test_a_journal_that_refuses_writes_answers_503_and_reads_keep_working(
    tmp_path: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    node = Node(tmp_path, clock)
    fill(node)
    node.drain()
    node.ok("stock.adjust", "stock:a", channel="pos", delta=1)  # acknowledged, not stored
    before = node.states()
    # the journal's file, open read-only from here: every write fails for real
    (tail,) = (tmp_path / "journal").glob("seg-*.log")
    writer, kept = node.journal._fd, os.dup(node.journal._fd)
    os.dup2(os.open(tail, os.O_RDONLY), writer)
    refused = node.run("stock.adjust", "stock:a", channel="pos", delta=100)
    assert (refused.status, refused.code) == (503, "unavailable")
    again = node.run("cart.clear", "cart:u")
    assert again.status == 503  # at once, without trying the journal again
    # reads: from memory; the refused change left no trace (rebuilt: store + unstored events)
    assert node.ok("stock.get", "stock:a")["on_hand"] == 11
    assert node.states() == before
    os.dup2(kept, writer)  # writable again
    monkeypatch.setattr(commit_module, "RETRY_PAUSE_S", 0.0)
    node.shard.commit.retry_at = 0.0
    assert node.ok("stock.adjust", "stock:a", channel="pos", delta=2)["on_hand"] == 13
    assert node.drain()
    assert node.restarted().states() == node.states()


def test_async_durability_answers_first_and_journals_on_the_next_flush(
    tmp_path: Path, clock: Clock
) -> None:
    node = Node(tmp_path, clock, durability="async")
    node.ok("stock.set", "stock:a", channel="pos", on_hand=3)
    assert node.journal_size() == 0  # acknowledged, not yet durable: the loss window
    assert node.shard.commit.flush()
    assert node.journal_size() == 1
    node.ok("stock.adjust", "stock:a", delta=1)
    assert node.drain()  # a drain journals first: the store never runs ahead of the journal
    assert node.journal_size() == 0
    assert node.restarted().ok("stock.get", "stock:a")["on_hand"] == 4


def test_a_full_write_behind_queue_refuses_writes_not_reads(tmp_path: Path, clock: Clock) -> None:
    node = Node(tmp_path, clock, max_queue=3)
    for on_hand in (1, 2, 3):
        node.ok("stock.set", "stock:a", channel="pos", on_hand=on_hand)
    full = node.run("stock.set", "stock:a", channel="pos", on_hand=4)
    assert (full.status, full.code) == (503, "unavailable")
    assert "write-behind queue is full" in (full.detail or "")
    assert node.ok("stock.get", "stock:a")["on_hand"] == 3
    assert node.drain()
    assert node.ok("stock.set", "stock:a", channel="pos", on_hand=4)["on_hand"] == 4


def test_a_big_entity_is_snapshotted_rarely_and_the_journal_keeps_its_changes(
    tmp_path: Path, clock: Clock
) -> None:
    node = Node(tmp_path, clock)
    node.ok("stock.set", "stock:hot", channel="pos", on_hand=10**6)
    node.ok("stock.set", "stock:small", channel="pos", on_hand=5)
    batch = [
        Command("stock.reserve", "stock:hot", {"qty": 1, "ttl_s": 600}, "miniprogram")
        for _ in range(2_000)
    ]
    assert all(r.status == 201 for r in node.shard.apply_batch(batch))
    assert node.drain()
    assert "stock:hot" in node.shard.backlog.big  # its state is over BIG_STATE_BYTES
    assert node.journal_size() == 0

    node.ok("stock.reserve", "stock:hot", qty=5, ttl_s=600)  # journal number 2,003
    node.ok("stock.adjust", "stock:small", channel="pos", delta=1)
    assert node.drain()
    assert node.shard.backlog.dirty == {"stock:hot"}, "the big one waits for its turn"
    assert not node.shard.backlog.unstored, "its events still reached the event log"
    assert [seq for seq, _ in node.journal.replay()] == [2_003, 2_004]  # trimmed below it

    restarted = node.restarted()
    assert restarted.states() == node.states()
    assert asyncio.run(node.writebehind.drain(force=True))  # as audit and a clean stop do
    assert not node.shard.backlog.dirty and node.journal_size() == 0
    assert node.restarted().states() == node.states()


def test_a_big_backlog_drains_in_bounded_slices(tmp_path: Path, clock: Clock) -> None:
    node = Node(tmp_path, clock)
    node.shard.drain_keys = 7
    for i in range(30):
        node.ok("stock.set", f"stock:s{i}", channel="pos", on_hand=i + 1)
    drain = node.shard.take_drain()
    assert drain is not None and len(drain.snapshots) == 7 and len(drain.events) == 30
    node.shard.drain_failed(drain)
    assert not asyncio.run(node.writebehind.drain_all(rounds=2))  # 14 of 30 in two rounds
    journaled = {event.key for _, event in node.journal.replay()}
    assert node.shard.backlog.dirty and node.shard.backlog.dirty <= journaled, (
        "trimmed what is not stored"
    )
    assert node.restarted().states() == node.states()  # a restart half-way loses nothing
    assert asyncio.run(node.writebehind.drain_all())
    assert node.journal_size() == 0 and node.shard.backlog_empty()
    assert node.restarted().states() == node.states()


def test_a_journal_from_another_shard_count_is_refused(tmp_path: Path, clock: Clock) -> None:
    node = Node(tmp_path, clock)
    for i in range(20):
        node.ok("stock.set", f"stock:s{i}", channel="pos", on_hand=1)
    smaller = Shard(0, SlotMap.even(2), node.journal, clock=clock)  # owns half the slots now
    with pytest.raises(RuntimeError, match="restart with the slot map it had"):
        smaller.recover(node.journal.replay())
