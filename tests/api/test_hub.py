"""The event hub in-process, with a real shard and store: slow readers are bounded."""

from __future__ import annotations

import asyncio
from pathlib import Path

from omnigrid.actors.shard import Shard
from omnigrid.actors.slots import SlotMap
from omnigrid.api.runtime.hub import MAX_QUEUED, EventHub
from omnigrid.persistence.events import Event
from omnigrid.persistence.store import SqliteStore


def test_a_reader_that_falls_too_far_behind_is_cut_not_buffered(tmp_path: Path) -> None:
    slot_map = SlotMap.even(1)
    hub = EventHub(
        Shard(0, slot_map), SqliteStore(str(tmp_path / "store.sqlite3")), {}, lambda: slot_map
    )

    async def scenario() -> None:
        slow = await hub.subscribe("cart:u")
        other = await hub.subscribe("cart:v")
        events = [
            Event("cart", "cart:u", v, "app", "cart.add", 1.0, {"version": v})
            for v in range(1, MAX_QUEUED + 6)
        ]
        hub.deliver(events)
        assert slow.overflowed and slow.queue.qsize() == MAX_QUEUED
        assert not other.overflowed and other.queue.qsize() == 0
        hub.unsubscribe(slow)
        hub.unsubscribe(other)
        assert hub.local == {}

    asyncio.run(scenario())
