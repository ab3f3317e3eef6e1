"""A source shard whose coordinator goes quiet mid-hand-over decides from the stored
slot map (real SQLite store and journal): it serves its slots again if the map kept
them, lets them go if the map gave them away, and a coordinator that comes back late
learns the slots are no longer waiting for it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from omnigrid.actors.protocol import MOVED, Command
from omnigrid.actors.shard import Shard
from omnigrid.actors.slots import SlotMap, slot_of
from omnigrid.api.runtime import rebalance
from omnigrid.api.runtime.rebalance import Handover
from omnigrid.api.runtime.router import Router
from omnigrid.persistence.cluster_state import ClusterState
from omnigrid.persistence.db import Database
from omnigrid.persistence.file_journal import FileJournal
from omnigrid.persistence.store import SqliteStore
from omnigrid.persistence.writebehind import WriteBehind


def source(tmp_path: Path) -> tuple[Handover, ClusterState, Shard]:
    store = SqliteStore(str(tmp_path / "store.sqlite3"))
    state = ClusterState(Database(sqlite_path=str(tmp_path / "store.sqlite3")), "lease")
    slot_map = SlotMap.even(2)
    state.save_slot_map(slot_map.to_wire())
    journal = FileJournal(str(tmp_path / "journal0"), "normal")
    shard = Shard(0, slot_map, journal, loader=store.load)
    writebehind = WriteBehind(shard, store, 0.2, 100)
    return Handover(shard, writebehind, store, Router(shard, {}), state), state, shard


def adjust(shard: Shard, delta: int) -> int:
    return shard.apply(Command("stock.adjust", "stock:a", {"delta": delta}, "pos")).status


@pytest.fixture(autouse=True)
def short_lease(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rebalance, "FREEZE_LEASE_S", 0.3)


def test_a_lease_run_out_before_the_map_moved_serves_the_slots_again(tmp_path: Path) -> None:
    handover, _, shard = source(tmp_path)
    assert shard.apply(Command("stock.set", "stock:a", {"on_hand": 5}, "pos")).ok
    slots = [slot_of("stock:a")]

    async def run() -> None:
        assert await handover.prepare(slots) == 1
        assert adjust(shard, 1) == 503
        await asyncio.sleep(0.6)  # no word from the coordinator
        assert adjust(shard, 1) == 200  # the stored map kept them here
        assert not await handover.confirm(slots)  # a late coordinator learns it

    asyncio.run(run())


def test_a_lease_run_out_after_the_map_moved_lets_the_slots_go(tmp_path: Path) -> None:
    handover, state, shard = source(tmp_path)
    assert shard.apply(Command("stock.set", "stock:a", {"on_hand": 5}, "pos")).ok
    slots = [slot_of("stock:a")]

    async def run() -> None:
        await handover.prepare(slots)
        assert await handover.confirm(slots)  # the coordinator stored the map, then left
        state.save_slot_map(shard.slot_map.moved(dict.fromkeys(slots, 1)).to_wire())
        await asyncio.sleep(0.6)
        assert adjust(shard, 1) == MOVED  # never served here again
        assert "stock:a" not in shard.entities

    asyncio.run(run())
