"""Rebuilding a shard's entities: the store's snapshots, then the journal after them.

A snapshot stands for every change up to its version; a journaled change
beyond it runs again at its own recorded time. Every change's command carries
the decisions it made (reservation ids, the availability a cart line was
checked against), so the same commands at the same clock reach the same state,
versions and idempotency records. The same replay rebuilds an entity whose
memory held a change the journal refused (``Shard._entity``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from omnigrid.actors.protocol import Command
from omnigrid.actors.residency import unpack_entity
from omnigrid.persistence.events import Event

if TYPE_CHECKING:
    from omnigrid.actors.shard import Shard


def recover(
    shard: Shard, events: Iterable[tuple[int, Event]], snapshots: Iterable[tuple[str, bytes]]
) -> int:
    """Restore the snapshots, then replay the journal; returns the journaled events.

    Journaled changes join the unstored events: the store may not have them yet.
    """
    for key, data in snapshots:
        if shard.owns(key):
            entity = shard.residency.restore(key, data)
            if entity is not None:
                shard.timers.schedule(entity)
    count = 0
    stored: dict[str, int] = {}  # key of another shard -> the version the store has
    for seq, event in events:
        if not shard.owns(event.key):
            # A slot handed over (actors/handover.py) was stored whole first: its
            # changes still in this journal (not trimmed yet) are the store's.
            if event.key not in stored:
                stored[event.key] = _stored_version(shard, event.key)
            if event.version <= stored[event.key]:
                continue
            # Anything else would be dropped: refuse to start instead.
            raise RuntimeError(
                f"shard {shard.shard_id}'s journal holds a change to {event.key!r} that "
                "the store does not have, and another shard owns it now: restart with "
                "the slot map it had"
            )
        if replay(shard, (event,)):
            shard.backlog.since.setdefault(event.key, seq)  # not in the store yet
        shard.backlog.unstored.append((seq, event))
        shard.commit.seq = max(shard.commit.seq, seq)
        count += 1
    return count


def _stored_version(shard: Shard, key: str) -> int:
    data = shard.residency.loader(key) if shard.residency.loader is not None else None
    entity = unpack_entity(key, data) if data is not None else None
    return entity.version if entity is not None else 0


def replay(shard: Shard, events: Iterable[Event]) -> int:
    """Run journaled changes again on the entities (skipping what they already hold).

    Returns how many ran. Nothing they do goes to the journal again.
    """
    clock, unjournaled = shard.clock, shard.commit.unjournaled
    shard.commit.unjournaled = []
    ran = 0
    try:
        for event in events:
            entity = shard.residency.get(event.key)
            if entity is not None and event.version <= entity.version:
                continue  # the snapshot has it
            ran += 1
            shard.clock = lambda at=event.at: at  # type: ignore[misc]
            if event.op.endswith(".expire"):
                if entity is not None:
                    shard.expire(entity, event.at)
            else:
                shard.apply_one(
                    Command(
                        event.op,
                        event.key,
                        dict(event.args),
                        event.channel,
                        event.idempotency_key,
                        event.fingerprint,
                    )
                )
    finally:
        shard.clock, shard.commit.unjournaled = clock, unjournaled
    return ran
