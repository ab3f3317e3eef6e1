"""Slots handed from one shard to another through a real store (SQLite files): frozen
commands change nothing, every change reaches the target, versions and idempotency
go on, reservations still expire, and the source's journal restarts cleanly."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

from omnigrid.actors import handover
from omnigrid.actors.protocol import MOVED, Command, Result
from omnigrid.actors.residency import pack_state
from omnigrid.actors.shard import Shard
from omnigrid.actors.slots import SlotMap, slot_of
from omnigrid.persistence.file_journal import FileJournal
from omnigrid.persistence.store import SqliteStore
from omnigrid.persistence.writebehind import WriteBehind
from tests.persistence.test_writebehind import Clock


class Side:
    """One shard of two, with its own journal, on the store both share."""

    def __init__(
        self,
        path: Path,
        shard_id: int,
        slot_map: SlotMap,
        clock: Clock,
        journal: Path | None = None,
    ) -> None:
        journal = journal or path / f"journal{shard_id}"
        self.journal = FileJournal(str(journal), "normal")
        self.store = SqliteStore(str(path / "store.sqlite3"))
        self.shard = Shard(shard_id, slot_map, self.journal, clock=clock, loader=self.store.load)
        self.shard.recover(self.journal.replay(), self.store.scan(slot_map.ranges(shard_id)))
        self.writebehind = WriteBehind(self.shard, self.store, 0.2, 100)

    def run(self, op: str, key: str, idem: str | None = None, **args: Any) -> Result:
        cmd = Command(op, key, args, "pos", idem, "fp" if idem else None)
        return self.shard.apply(cmd)


def test_slots_move_whole_and_the_source_restarts_on_the_new_map(tmp_path: Path) -> None:
    clock = Clock()
    before = SlotMap.even(2)
    source, target = (Side(tmp_path, i, before, clock) for i in (0, 1))
    skus = [f"s{i}" for i in range(400) if before.owner(f"stock:s{i}") == 0][:40]
    for sku in skus:
        assert source.run("stock.set", f"stock:{sku}", on_hand=10).ok
    held = source.run("stock.reserve", f"stock:{skus[0]}", idem="r1", qty=3, ttl_s=30)
    assert held.ok
    asyncio.run(source.writebehind.drain())
    for sku in skus:  # changes the store does not have yet
        assert source.run("stock.adjust", f"stock:{sku}", delta=1).ok
    slots = sorted({slot_of(f"stock:{sku}") for sku in skus})

    keys = handover.freeze(source.shard, slots)
    assert len(keys) == len(skus)
    frozen = source.run("stock.adjust", f"stock:{skus[1]}", delta=100)
    assert frozen.status == 503 and frozen.code == "unavailable"
    clock.now += 60  # the reservation is due, but a frozen slot's timed work waits
    source.shard.tick()
    assert source.shard.entities[f"stock:{skus[0]}"].view()["reserved"] == 3
    assert handover.unstored(source.shard, slots) > 0
    untrimmed = tmp_path / "crashed"  # the source's journal as a crash would leave it
    source.journal.wait_for_housekeeping()
    shutil.copytree(tmp_path / "journal0", untrimmed / "journal0")
    while handover.unstored(source.shard, slots):
        assert asyncio.run(source.writebehind.drain(force=True))
    states = {k: pack_state(source.shard.entities[k]) for k in keys}

    after = before.moved(dict.fromkeys(slots, 1))
    taken = handover.take_in(target.shard, after, target.store.scan([(s, s) for s in slots]))
    assert taken == len(skus)
    assert {k: pack_state(target.shard.entities[k]) for k in keys} == states
    assert handover.release(source.shard, after) == len(skus)
    moved = source.run("stock.adjust", f"stock:{skus[1]}", delta=100)
    assert moved.status == MOVED and SlotMap.from_wire(moved.body) == after

    first = target.shard.entities[f"stock:{skus[1]}"].version
    assert target.run("stock.adjust", f"stock:{skus[1]}", delta=1).body["version"] == first + 1
    again = target.run("stock.reserve", f"stock:{skus[0]}", idem="r1", qty=3, ttl_s=30)
    assert again.body == held.body  # the idempotency record came along: not applied twice
    target.shard.tick()  # the reservation's expiry came along too
    assert target.shard.entities[f"stock:{skus[0]}"].view()["reserved"] == 0

    # a source that crashed before trimming its journal: the moved slots' changes in it
    # are the store's on the new map, skipped; its own slots come back as they were
    restarted = Side(tmp_path, 0, after, clock, journal=untrimmed / "journal0")
    assert any(after.owner(e.key) == 1 for _, e in restarted.journal.replay())
    assert not any(after.owner(k) == 1 for k in restarted.shard.entities)
    assert set(restarted.shard.entities) == set(source.shard.entities)


def test_a_hand_over_given_up_leaves_the_slots_served_by_the_source(tmp_path: Path) -> None:
    clock = Clock()
    side = Side(tmp_path, 0, SlotMap.even(1), clock)
    assert side.run("stock.set", "stock:a", on_hand=5).ok
    slot = slot_of("stock:a")
    handover.freeze(side.shard, [slot])
    assert side.run("stock.adjust", "stock:a", delta=1).status == 503
    handover.thaw(side.shard, [slot])
    assert side.run("stock.adjust", "stock:a", delta=1).body["on_hand"] == 6
    assert not side.shard.backlog.urgent
