"""A shard's side of moving slots to another shard while the grid keeps serving.

The store is the hand-over's medium: the source freezes the slots (their
commands answer 503 "moving", their timed work waits), stores every change of
their entities that the store does not have yet, and only then does the slot
map give them to the target, which loads them from the store (their timers
with them) before it takes the new map. The source then takes the map too and
forgets the slots' entities; commands still sent to it answer "moved" and
routers follow. So no change is lost (all were stored before the target
loaded), none is applied twice (the frozen source applied none meanwhile, and
idempotency records travel in the entities' state), and versions go on from
where the source left them. api/runtime/rebalance.py drives the steps.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from omnigrid.actors.slots import SlotMap, slot_of

if TYPE_CHECKING:
    from omnigrid.actors.shard import Shard


def freeze(shard: Shard, slots: Iterable[int]) -> list[str]:
    """Stop the slots' commands and timed work; their entities' keys (in memory or
    passivated), snapshotted first by the write-behind from now on."""
    frozen = set(slots)
    shard.frozen |= frozen
    keys = [k for k in (*shard.entities, *shard.residency.cold) if slot_of(k) in frozen]
    shard.backlog.urgent.update(keys)
    return keys


def thaw(shard: Shard, slots: Iterable[int]) -> None:
    """The hand-over did not happen: the slots serve again, here."""
    shard.frozen -= set(slots)
    shard.backlog.urgent.clear()


def unstored(shard: Shard, slots: Iterable[int]) -> int:
    """How many of the slots' changes the store does not have yet (snapshots and
    events): the hand-over waits for zero."""
    inside = set(slots)
    backlog = shard.backlog
    keys = backlog.dirty | backlog.draining | set(backlog.since) | shard.tainted
    waiting = sum(1 for k in keys if slot_of(k) in inside)
    return waiting + sum(1 for _, e in backlog.unstored if slot_of(e.key) in inside)


def take_in(shard: Shard, slot_map: SlotMap, snapshots: Iterable[tuple[str, bytes]]) -> int:
    """The target's step: the slots' stored entities (and their timers), then the map
    that gives it the slots. Returns how many entities it holds now from them."""
    before = len(shard.entities) + len(shard.residency.cold)
    for key, data in snapshots:
        if slot_map.owner(key) == shard.shard_id and key not in shard.entities:
            entity = shard.residency.restore(key, data)
            if entity is not None:
                shard.timers.schedule(entity)
    shard.assign(slot_map)
    return len(shard.entities) + len(shard.residency.cold) - before


def release(shard: Shard, slot_map: SlotMap) -> int:
    """The source's last step: the new map, and the entities of the slots it gave
    away forgotten (the target has them). Returns how many it forgot."""
    shard.assign(slot_map)
    gone = [
        k for k in (*shard.entities, *shard.residency.cold) if slot_map.owner(k) != shard.shard_id
    ]
    for key in gone:
        shard.residency.drop(key)
        shard.timers.forget(key)
        shard.backlog.big.pop(key, None)
    shard.frozen = {s for s in shard.frozen if slot_map.owners[s] == shard.shard_id}
    shard.backlog.urgent.clear()
    return len(gone)
