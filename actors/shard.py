"""A shard: the host of many entities (virtual actors) for the slots it owns.

A shard is a plain object, not a Ray actor: api/ wraps it in one. Commands run
synchronously, one at a time, in the order they are handed in, so every
entity sees one command at a time in arrival order without locks. A batch of
commands is one turn: its events go to the journal as one group
(actors/commit.py), before the caller releases any of the batch's answers.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import msgspec

from omnigrid.actors.backlog import Backlog
from omnigrid.actors.commit import Commit, refused
from omnigrid.actors.declaration import ALIAS_QUERY
from omnigrid.actors.entity import Entity
from omnigrid.actors.kinds import kinds, split_key
from omnigrid.actors.protocol import MOVED, Command, Result
from omnigrid.actors.recovery import recover, replay
from omnigrid.actors.residency import Loader, Residency
from omnigrid.actors.runner import run_command
from omnigrid.actors.slots import SlotMap, slot_of
from omnigrid.actors.timers import Timers
from omnigrid.persistence.events import Event
from omnigrid.persistence.journal import Journal, NullJournal
from omnigrid.persistence.store import StoreUnavailable
from omnigrid.persistence.writebehind import Drain

# Declared queries (Kind.queries) of many entities at once: one command per
# owner shard, so a cart view costs one message per shard, not one per line.
QUERY = "query"
SYSTEM_CHANNEL = "system"
# What a client is told; the cause goes to the log (it can carry driver text).
STORE_REFUSED = "the store cannot be read right now; retry later"
STORE_LOG_EVERY_S = 10.0  # a store outage is one log line per shard this often, not one a read
log = logging.getLogger("omnigrid.shard")
PASSIVATE_SCAN = 2_000  # entities looked at per tick when over the memory budget
RESUME_AGAIN_S = 5.0  # a woken entity whose resumed work did not move it is woken again
# A command to a slot being handed to another shard (actors/handover.py): refused,
# nothing applied; the client retries after the hand-over.
MOVING = Result(503, None, "unavailable", "this key's slot is moving to another shard; retry")


def _alias(entity: Entity) -> str | None:
    # A function, not Entity.alias: that unbound base method would skip the kinds'
    # own alias() (a merged cart's survivor).
    return entity.alias()


class Shard:
    def __init__(
        self,
        shard_id: int,
        slot_map: SlotMap,
        journal: Journal | None = None,
        clock: Callable[[], float] = time.time,
        loader: Loader | None = None,
        max_resident: int = 0,
        max_queue: int = 0,
        durability: str = "sync",
        drain_keys: int = 5_000,
    ) -> None:
        if durability not in ("sync", "async"):
            raise ValueError("durability must be 'sync' or 'async'")
        self.shard_id = shard_id
        self.slot_map = slot_map
        self.journal: Journal = journal if journal is not None else NullJournal()
        self.clock = clock
        self.residency = Residency(loader, max_resident)
        self.entities = self.residency.entities  # the ones in memory
        self.durability = durability
        self.commands = Counter[str]()
        self.timers = Timers()  # when each entity next has timed work (actors/timers.py)
        # Entities whose due work is the grid's to do (Kind.resume): the process
        # owning the shard takes them from here and runs it.
        self.woken: list[str] = []
        # The write-behind's side (actors/backlog.py): journaled events not yet
        # in the store, and the entities changed since their last snapshot.
        self.backlog = Backlog()
        self.max_queue = max_queue  # unstored events before writes are refused (0: no limit)
        self.drain_keys = drain_keys  # snapshots per drain (events: ten times as many)
        # Entities whose memory held a change the journal refused: reloaded from
        # the store plus the unstored events on their next use.
        self.tainted: set[str] = set()
        # Slots being handed over (actors/handover.py): their commands and timed work wait.
        self.frozen: set[int] = set()
        self._moved_answer: Result | None = None
        self._store_logged = -STORE_LOG_EVERY_S
        # The turn's changes to the journal (actors/commit.py).
        self.commit = Commit(
            shard_id, self.journal, self.backlog, durability == "async", self._taint
        )

    # -- slot ownership -------------------------------------------------------

    def owns(self, key: str) -> bool:
        return self.slot_map.owner(key) == self.shard_id

    def assign(self, slot_map: SlotMap) -> bool:
        """Take a newer slot map; an older or equal one is ignored."""
        if slot_map.version <= self.slot_map.version:
            return False
        self.slot_map = slot_map
        self._moved_answer = None
        return True

    def _moved(self) -> Result:
        # one answer per map: right after slots move, stale routers ask many times
        if self._moved_answer is None:
            wire = self.slot_map.to_wire()
            self._moved_answer = Result(MOVED, wire, "moved", "slot owned by another shard")
        return self._moved_answer

    # -- commands ---------------------------------------------------------------

    def apply_batch(self, commands: Sequence[Command]) -> list[Result]:
        """Run a batch in order as one turn; its answers count only once journaled.

        If the journal refuses the batch, every answer of the batch is 503 and
        the entities it touched are dropped from memory, to be rebuilt from
        the store and the journaled events on their next use: the refused
        changes leave no trace. While the journal is down (or the
        write-behind queue is full), writes answer 503 and reads are served
        from memory.
        """
        refusal = self._refusal()
        if refusal is not None:
            return [self.apply_one(c) if self._is_read(c) else refusal for c in commands]
        results = [self.apply_one(cmd) for cmd in commands]
        if self.durability == "sync" and not self.commit.flush():
            # The refused changes are gone from memory; a read that may have
            # seen one runs again on what the journal holds.
            answer = refused()
            return [self.apply_one(c) if self._is_read(c) else answer for c in commands]
        return results

    def apply(self, cmd: Command) -> Result:
        """Run one command as a turn of its own."""
        return self.apply_batch([cmd])[0]

    def _refusal(self) -> Result | None:
        refusal = self.commit.refusal()
        if refusal is not None:
            return refusal
        if self.max_queue and len(self.backlog.unstored) >= self.max_queue:
            return Result(
                503,
                None,
                "unavailable",
                f"the write-behind queue is full ({self.unstored_count()} changes to store)",
            )
        return None

    @staticmethod
    def _is_read(cmd: Command) -> bool:
        if cmd.op == QUERY:
            return True
        kind, _ = split_key(cmd.key)
        op = kind.ops_by_name.get(cmd.op) if kind is not None else None
        return op is not None and op.read

    def _store_unavailable(self, error: StoreUnavailable) -> Result:
        now = time.monotonic()
        if now - self._store_logged >= STORE_LOG_EVERY_S:
            self._store_logged = now
            log.warning("shard %d: the store cannot be read (%s)", self.shard_id, error)
        return Result(503, None, "unavailable", STORE_REFUSED)

    def _taint(self, keys: set[str]) -> None:
        for key in keys:
            self.residency.drop(key)
            self.backlog.forget(key)
            self.timers.forget(key)
        self.tainted |= keys

    def _entity(self, key: str) -> Entity | None:
        """The entity from memory or the store; after a refused batch, the store's
        snapshot plus its unstored (journaled) events."""
        if key not in self.tainted:
            return self.residency.get(key)
        entity = self.residency.load(key)
        self.tainted.discard(key)
        if entity is None:
            kind, ident = split_key(key)
            assert kind is not None
            entity = kind.entity(key, ident)
        self.residency.put(key, entity)
        replay(self, (event for _, event in self.backlog.unstored if event.key == key))
        if not entity.exists:
            self.residency.drop(key)
            return None
        self.timers.schedule(entity)
        return entity

    def recover(
        self,
        events: Iterable[tuple[int, Event]],
        snapshots: Iterable[tuple[str, bytes]] = (),
    ) -> int:
        """Rebuild state from the store's snapshots and the journal (actors/recovery.py)."""
        return recover(self, events, snapshots)

    def apply_one(self, cmd: Command) -> Result:
        """Run one command within the current turn (recovery replays through here)."""
        self.commands[cmd.op] += 1
        if cmd.op == QUERY:
            return self._query(cmd.args.get("asks"))
        if not self.owns(cmd.key):
            return self._moved()
        if self.frozen and slot_of(cmd.key) in self.frozen:
            return MOVING
        kind, ident = split_key(cmd.key)
        op = kind.ops_by_name.get(cmd.op) if kind is not None else None
        if kind is None or op is None:
            return Result(422, None, "invalid_request", f"{cmd.op!r} is not an operation")
        try:
            # Checked again here, not only at the gateway: a peer or an old journal
            # may send anything, and a handler must only ever see a valid input.
            inp = msgspec.convert(cmd.args, op.input) if op.input is not None else None
        except msgspec.ValidationError as e:
            return Result(422, None, "invalid_request", str(e))
        now = self.clock()
        try:
            entity = self._entity(cmd.key)
        except StoreUnavailable as e:
            return self._store_unavailable(e)
        stored = entity is not None
        if entity is None:
            entity = kind.entity(cmd.key, ident)
        else:
            self.expire(entity, now)
        ran = run_command(op, entity, cmd, inp, now, self._record)
        if not stored and (ran.changed or ran.remembered):
            self.residency.put(cmd.key, entity)
        if ran.remembered and not ran.changed:
            self.backlog.dirty.add(entity.key)  # the new idempotency record goes to the store
        return ran.result

    def _record(
        self, entity: Entity, cmd: Command, args: dict[str, Any], now: float
    ) -> dict[str, Any]:
        return self._changed(entity, cmd.channel, cmd.op, now, args, cmd)

    def _changed(
        self,
        entity: Entity,
        channel: str,
        op: str,
        now: float,
        args: dict[str, Any],
        cmd: Command | None = None,
    ) -> dict[str, Any]:
        """A new version of the entity: its event joins the turn's unjournaled ones."""
        entity.version += 1
        entity.updated_at = now
        view = entity.view()
        event = Event(
            entity.kind,
            entity.key,
            entity.version,
            channel,
            op,
            now,
            view,
            args,
            cmd.idempotency_key if cmd is not None else None,
            cmd.fingerprint if cmd is not None else None,
        )
        self.commit.unjournaled.append(event)
        self.backlog.dirty.add(entity.key)
        self.timers.schedule(entity)
        return view

    def expire(self, entity: Entity, now: float) -> None:
        """The entity's timed work due by ``now`` (reservations expiring), as a change."""
        if entity.expire(now):
            self._changed(entity, SYSTEM_CHANNEL, f"{entity.kind}.expire", now, {})

    def _query(self, asks: Any) -> Result:
        """Declared queries, key -> query name: key -> answer (``None``: never seen)."""
        if not isinstance(asks, dict):
            return Result(422, None, "invalid_request", "a query asks {key: query name}")
        out: dict[str, Any] = {}
        now = self.clock()
        for key, name in asks.items():
            if not self.owns(key):
                return self._moved()
            if self.frozen and slot_of(key) in self.frozen:
                return MOVING
            kind, _ = split_key(key)
            query: Callable[[Any], Any] | None
            if name == ALIAS_QUERY and kind is not None:
                query = _alias
            else:
                query = (
                    kind.queries.get(name) if kind is not None and isinstance(name, str) else None
                )
            if query is None:
                return Result(422, None, "invalid_request", f"{name!r} is not a query of {key!r}")
            try:
                entity = self._entity(key)
            except StoreUnavailable as e:
                return self._store_unavailable(e)
            if entity is None:
                out[key] = None
            else:
                self.expire(entity, now)
                out[key] = query(entity)
        return Result(200, out)

    # -- timed work ---------------------------------------------------------------

    def tick(self, budget: int = 200) -> int:
        """Run up to ``budget`` entities' due timed work (reservation expiry).

        Returns how many entities changed. ``due()`` tells whether more is
        waiting, so the caller can yield to its event loop between slices: an
        expiry wave of a million reservations then costs requests a few
        milliseconds at a time, never one long stall.
        """
        now = self.clock()
        touched = 0
        for key in self.timers.pop_due(now):
            entity = self.entities.get(key)
            if entity is None:
                continue
            if self.frozen and slot_of(key) in self.frozen:  # its new owner does it
                self.timers.schedule_at(key, now + 1.0)
                continue
            before = entity.version
            self.expire(entity, now)
            touched += entity.version != before
            kind, _ = split_key(key)
            due = entity.next_deadline()
            if kind is not None and kind.resume is not None and due is not None and due <= now:
                self.woken.append(key)  # again in a while, unless the resumed work moves it
                self.timers.schedule_at(key, now + RESUME_AGAIN_S)
            else:
                self.timers.schedule(entity)
            budget -= 1
            if budget <= 0:
                break
        if self.commit.unjournaled:
            self.commit.flush()  # expiries; async durability's changes
        over = self.residency.over_budget()
        if over:
            self.residency.passivate(over, self.pinned, PASSIVATE_SCAN)
        return touched

    # -- write-behind and passivation -------------------------------------------

    def pinned(self, key: str) -> bool:
        """Whether an entity must stay in memory: its latest state is not in the store
        yet, or it has timed work due (a reservation that expires by itself)."""
        return self.pinned_by_writes(key) or key in self.timers

    def pinned_by_writes(self, key: str) -> bool:
        """Whether an entity has changes the store does not have yet."""
        return self.backlog.pending(key) or key in self.tainted

    def take_drain(self, force: bool = False) -> Drain | None:
        """Snapshot the dirty entities and take the unstored events, for the write-behind to store.

        Only journaled state goes: pending changes are flushed first (async
        durability), so a stored snapshot never holds a change the journal
        does not. Entities dropped after a refused batch are rebuilt first, so
        their acknowledged changes are snapshotted before the journal is trimmed.
        """
        if not self.commit.flush():
            return None
        try:
            for key in list(self.tainted):
                self._entity(key)
        except StoreUnavailable:
            return None
        return self.backlog.take(
            self.entities, self.commit.seq, force, self.drain_keys, 10 * self.drain_keys
        )

    def drain_done(self, drain: Drain) -> None:
        """The drain is durable in the store: forget its events and trim the journal."""
        upto = self.backlog.done(drain)
        # A trim never waits nor fails here (the journals do it on a thread of their
        # own; one that fails is made good by the next); a broken journal is settled
        # before it is trimmed again.
        if upto > 0 and self.commit.ok():
            self.journal.trim(upto)

    def unstored_count(self) -> int:
        """Journaled events the store does not have yet."""
        return len(self.backlog.unstored)

    def backlog_empty(self) -> bool:
        """Whether the store has everything (big entities not yet due count as waiting)."""
        return self.backlog.empty() and not self.tainted

    def drain_failed(self, drain: Drain) -> None:
        """The store refused the drain: its entities are dirty again, its events wait."""
        self.backlog.failed(drain, self.entities)

    def due(self) -> bool:
        """Whether timed work is due now (``tick`` left some for the next slice)."""
        return self.timers.due(self.clock())

    # -- introspection ------------------------------------------------------------

    def journal_ok(self) -> bool:
        return self.commit.ok()

    def entity_counts(self) -> dict[str, int]:
        counts = {kind.name: 0 for kind in kinds()}
        for key in self.entities:
            counts[key.partition(":")[0]] += 1
        return counts
