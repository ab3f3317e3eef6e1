"""What the store does not have yet: a shard's side of the write-behind.

Journaled events wait here (with their journal numbers) until the store has
logged them, and so do the keys of entities changed since their last stored
snapshot. A drain takes both; once the store has it, the journal is trimmed
up to the last event every stored snapshot covers.

Big entities are snapshotted at most every ``BIG_SNAPSHOT_EVERY_S``: a flash
sale's SKU with 100,000 reservations packs to megabytes, and doing that five
times a second would cost a core. Their events still reach the event log at
every drain; the journal keeps the changes since their last snapshot (the trim
stops before the first of them), so recovery replays those instead.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping

from omnigrid.actors.entity import Entity
from omnigrid.actors.residency import pack_state
from omnigrid.actors.slots import slot_of
from omnigrid.persistence.events import Event
from omnigrid.persistence.store import Snapshot
from omnigrid.persistence.writebehind import Drain

BIG_STATE_BYTES = 64 * 1024
BIG_SNAPSHOT_EVERY_S = 10.0


class Backlog:
    def __init__(self) -> None:
        self.unstored: deque[tuple[int, Event]] = deque()  # journaled, not yet logged
        self.dirty: set[str] = set()  # changed since their last stored snapshot
        self.draining: set[str] = set()  # their snapshot is being stored right now
        # key -> journal number of its first change no stored snapshot holds:
        # the journal may be trimmed only below the smallest of them.
        self.since: dict[str, int] = {}
        self.big: dict[str, float] = {}  # big entities -> when last snapshotted
        # entities whose slot is being handed over (actors/handover.py): snapshotted
        # first, big or not
        self.urgent: set[str] = set()

    def journaled(self, seq: int, event: Event) -> None:
        self.unstored.append((seq, event))
        self.since.setdefault(event.key, seq)

    def pending(self, key: str) -> bool:
        return key in self.dirty or key in self.draining

    def take(
        self,
        entities: Mapping[str, Entity],
        last_seq: int,
        force: bool,
        max_keys: int = 5_000,
        max_events: int = 50_000,
    ) -> Drain | None:
        """Snapshot dirty entities (big ones only when due, or ``force``) and take events.

        At most ``max_keys`` snapshots and ``max_events`` events a drain: the
        snapshots are packed on the shard's event loop, and a backlog of
        250,000 (a restart after a store outage) packed at once stalled it for
        seconds. The rest goes with the next drains.
        """
        if not self.dirty and not self.unstored:
            return None
        # Every change not in the store must be snapshotted some day: a key
        # with one and not dirty (never expected) is made dirty, never left
        # to hold the journal's trim back for good.
        for key in self.since:
            if key not in self.draining and key in entities:
                self.dirty.add(key)
        now = time.monotonic()
        keys = self.urgent & self.dirty
        for key in self.dirty:
            if len(keys) >= max_keys:
                break
            last = self.big.get(key)
            if force or last is None or now - last >= BIG_SNAPSHOT_EVERY_S:
                keys.add(key)
        self.dirty -= keys
        self.draining |= keys
        taken = (
            self.unstored if len(self.unstored) <= max_events else list(self.unstored)[:max_events]
        )
        events = [event for _, event in taken]
        views = {event.key: event for event in events}  # latest event per key: its view
        snapshots = []
        since: dict[str, int] = {}
        for key in keys:
            entity = entities.get(key)
            if entity is None or not entity.exists:
                continue
            state = pack_state(entity)
            if len(state) > BIG_STATE_BYTES:
                self.big[key] = now
            else:
                self.big.pop(key, None)
            latest = views.get(key)
            view = latest.view if latest and latest.version == entity.version else entity.view()
            snapshots.append(
                Snapshot(
                    key,
                    entity.kind,
                    slot_of(key),
                    entity.version,
                    entity.updated_at,
                    state,
                    view,
                )
            )
            if key in self.since:
                since[key] = self.since.pop(key)
        upto = taken[-1][0] if taken else last_seq
        return Drain(keys, snapshots, events, upto, since)

    def empty(self) -> bool:
        return not self.dirty and not self.unstored

    def done(self, drain: Drain) -> int:
        """The store has the drain: forget its events; returns how far the journal may go."""
        events = self.unstored
        while events and events[0][0] <= drain.upto:
            events.popleft()
        self.draining -= drain.keys
        oldest_unstored = min(self.since.values(), default=drain.upto + 1)
        return min(drain.upto, oldest_unstored - 1)

    def failed(self, drain: Drain, resident: Mapping[str, Entity]) -> None:
        """The store refused the drain: its entities are dirty again, its events wait."""
        self.draining -= drain.keys
        self.dirty |= {k for k in drain.keys if k in resident}
        for key, seq in drain.since.items():
            self.since[key] = min(seq, self.since.get(key, seq))

    def forget(self, key: str) -> None:
        """An entity dropped from memory (see Shard taint): it will be rebuilt and re-dirtied."""
        self.dirty.discard(key)
