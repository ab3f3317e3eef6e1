"""A shard: the host of many entities (virtual actors) for the slots it owns.

A shard is a plain object, not a Ray actor: api/ wraps it in one. Commands run
synchronously, one at a time, in the order they are handed in, so every
entity sees one command at a time in arrival order without locks. A batch of
commands is one turn: its events go to the journal as one group
(actors/commit.py), before the caller releases any of the batch's answers.
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import msgspec

from omnigrid.actors.backlog import Backlog
from omnigrid.actors.commit import Commit, refused
from omnigrid.actors.entity import Entity
from omnigrid.actors.errors import GridError
from omnigrid.actors.kinds import kinds, split_key
from omnigrid.actors.protocol import MOVED, Command, Result
from omnigrid.actors.residency import Loader, Residency
from omnigrid.actors.slots import SlotMap
from omnigrid.persistence.events import Event
from omnigrid.persistence.journal import Journal, JournalUnavailable, NullJournal
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
        # Timed work: a heap of (when, key) with at most one live entry per
        # entity (``_scheduled``); a flash sale's 100,000 reservations of one
        # SKU are one entry, not 100,000 to pop and push again on every tick.
        self._deadlines: list[tuple[float, str]] = []
        self._scheduled: dict[str, float] = {}
        # The write-behind's side (actors/backlog.py): journaled events not yet
        # in the store, and the entities changed since their last snapshot.
        self.backlog = Backlog()
        self.outbox = self.backlog.events
        self.dirty = self.backlog.dirty
        self.draining = self.backlog.draining
        self.max_queue = max_queue  # outbox events before writes are refused (0: no limit)
        self.drain_keys = drain_keys  # snapshots per drain (events: ten times as many)
        # Entities whose memory held a change the journal refused: reloaded from
        # the store plus the outbox on their next use.
        self.tainted: set[str] = set()
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
        return True

    def _moved(self) -> Result:
        return Result(MOVED, self.slot_map.to_wire(), "moved", "slot owned by another shard")

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
            return [self._apply(c) if self._is_read(c) else refusal for c in commands]
        results = [self._apply(cmd) for cmd in commands]
        if self.durability == "sync" and not self.commit.flush():
            # The refused changes are gone from memory; a read that may have
            # seen one runs again on what the journal holds.
            answer = refused()
            return [self._apply(c) if self._is_read(c) else answer for c in commands]
        return results

    def apply(self, cmd: Command) -> Result:
        """Run one command as a turn of its own."""
        return self.apply_batch([cmd])[0]

    def _refusal(self) -> Result | None:
        refusal = self.commit.refusal()
        if refusal is not None:
            return refusal
        if self.max_queue and len(self.outbox) >= self.max_queue:
            return Result(
                503,
                None,
                "unavailable",
                f"the write-behind queue is full ({len(self.outbox)} changes wait for the store)",
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
            self._scheduled.pop(key, None)
        self.tainted |= keys

    def _entity(self, key: str) -> Entity | None:
        """The entity from memory, the store, or (after a refused batch) both plus the outbox."""
        if key not in self.tainted:
            return self.residency.get(key)
        entity = self.residency.load(key)
        self.tainted.discard(key)
        if entity is None:
            kind, ident = split_key(key)
            assert kind is not None
            entity = kind.entity(key, ident)
        self.residency.put(key, entity)
        self._replay(event for _, event in self.outbox if event.key == key)
        if not entity.exists:
            self.residency.drop(key)
            return None
        self._schedule(entity)
        return entity

    def recover(
        self,
        events: Iterable[tuple[int, Event]],
        snapshots: Iterable[tuple[str, bytes]] = (),
    ) -> int:
        """Rebuild state: the store's snapshots, then the journal after them.

        A snapshot stands for every change up to its version; a journaled change
        beyond it runs again at its own recorded time. Every change's command
        carries the decisions it made (reservation ids, the availability a cart
        line was checked against), so the same commands at the same clock reach
        the same state, versions and idempotency records. Journaled changes
        go back into the outbox: the store may not have them yet. Returns the
        number of journaled events.
        """
        for key, data in snapshots:
            if self.owns(key):
                entity = self.residency.restore(key, data)
                if entity is not None:
                    self._schedule(entity)
        count = 0
        for seq, event in events:
            if not self.owns(event.key):
                # The journal is per shard: a grid restarted after a crash with
                # another shard count would drop these changes. Refuse instead.
                raise RuntimeError(
                    f"shard {self.shard_id}'s journal holds a change to {event.key!r}, which "
                    "another shard owns now: restart with the shard count it had, and stop "
                    "it cleanly (that drains the journal) before changing it"
                )
            if self._replay((event,)):
                self.backlog.since.setdefault(event.key, seq)  # not in the store yet
            self.outbox.append((seq, event))
            self.commit.seq = max(self.commit.seq, seq)
            count += 1
        return count

    def _replay(self, events: Iterable[Event]) -> int:
        """Run journaled changes again on the entities (skipping what they already hold).

        Returns how many ran.
        """
        clock, pending = self.clock, self.commit.pending
        self.commit.pending = []
        ran = 0
        try:
            for event in events:
                entity = self.residency.get(event.key)
                if entity is not None and event.version <= entity.version:
                    continue  # the snapshot has it
                ran += 1
                self.clock = lambda at=event.at: at  # type: ignore[misc]
                if event.op.endswith(".expire"):
                    if entity is not None:
                        self._expire(entity, event.at)
                else:
                    self._apply(
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
            self.clock, self.commit.pending = clock, pending
        return ran

    def _apply(self, cmd: Command) -> Result:
        self.commands[cmd.op] += 1
        if cmd.op == QUERY:
            return self._query(cmd.args.get("asks"))
        if not self.owns(cmd.key):
            return self._moved()
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
            self._expire(entity, now)
        if op.read:
            try:
                outcome = op.handler(entity, inp, cmd.channel, now)
            except GridError as e:
                return Result(e.status, None, e.code, e.detail)
            return Result(outcome.status, outcome.body)

        idem = cmd.idempotency_key
        if idem is not None:
            record = entity.idempotency.get(idem)
            if record is not None:
                if record.fingerprint != (cmd.fingerprint or ""):
                    return Result(
                        422,
                        None,
                        "idempotency_key_reused",
                        "this Idempotency-Key was used with a different request",
                    )
                return Result(record.status, record.body, replayed=True)
        if cmd.if_match is not None and cmd.if_match != entity.version:
            return Result(
                412,
                None,
                "version_conflict",
                f"If-Match {cmd.if_match} but the current version is {entity.version}",
            )
        try:
            outcome = op.handler(entity, inp, cmd.channel, now)
        except GridError as e:
            return Result(e.status, None, e.code, e.detail)
        view: dict[str, Any] | None = None
        if outcome.changed:
            # The input as the handler left it: with its decisions (Op.decided).
            args = msgspec.structs.asdict(inp) if inp is not None else {}
            view = self._changed(entity, cmd.channel, cmd.op, now, cmd, args)
        body = outcome.body if outcome.body is not None else (view or entity.view())
        if idem is not None:
            entity.remember(idem, cmd.fingerprint or "", outcome.status, body, now)
        if not stored and (outcome.changed or idem is not None):
            self.residency.put(cmd.key, entity)
        if idem is not None and not outcome.changed:
            self.dirty.add(entity.key)  # the new idempotency record goes to the store
        return Result(outcome.status, body)

    def _changed(
        self,
        entity: Entity,
        channel: str,
        op: str,
        now: float,
        cmd: Command | None = None,
        args: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
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
            args or {},
            cmd.idempotency_key if cmd is not None else None,
            cmd.fingerprint if cmd is not None else None,
        )
        self.commit.pending.append(event)
        self.dirty.add(entity.key)
        self._schedule(entity)
        return view

    def _schedule(self, entity: Entity) -> None:
        deadline = entity.next_deadline()
        if deadline is None:
            return
        scheduled = self._scheduled.get(entity.key)
        if scheduled is None or deadline < scheduled:
            self._scheduled[entity.key] = deadline
            heapq.heappush(self._deadlines, (deadline, entity.key))

    def _expire(self, entity: Entity, now: float) -> None:
        if entity.expire(now):
            self._changed(entity, SYSTEM_CHANNEL, f"{entity.kind}.expire", now)

    def _query(self, asks: Any) -> Result:
        """Declared queries, key -> query name: key -> answer (``None``: never seen)."""
        if not isinstance(asks, dict):
            return Result(422, None, "invalid_request", "a query asks {key: query name}")
        out: dict[str, Any] = {}
        now = self.clock()
        for key, name in asks.items():
            if not self.owns(key):
                return self._moved()
            kind, _ = split_key(key)
            query = kind.queries.get(name) if kind is not None and isinstance(name, str) else None
            if query is None:
                return Result(422, None, "invalid_request", f"{name!r} is not a query of {key!r}")
            try:
                entity = self._entity(key)
            except StoreUnavailable as e:
                return self._store_unavailable(e)
            if entity is None:
                out[key] = None
            else:
                self._expire(entity, now)
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
        heap = self._deadlines
        while heap and heap[0][0] <= now and budget > 0:
            when, key = heapq.heappop(heap)
            if self._scheduled.get(key) != when:
                continue  # superseded by an earlier deadline for the same entity
            del self._scheduled[key]
            entity = self.entities.get(key)
            if entity is None:
                continue
            budget -= 1
            before = entity.version
            self._expire(entity, now)
            touched += entity.version != before
            self._schedule(entity)
        if self.commit.pending:
            self.commit.flush()  # expiries; async durability's changes
        over = self.residency.over_budget()
        if over:
            self.residency.passivate(over, self.pinned, PASSIVATE_SCAN)
        return touched

    # -- write-behind and passivation -------------------------------------------

    def pinned(self, key: str) -> bool:
        """Whether an entity must stay in memory: its latest state is not in the store
        yet, or it has timed work due (a reservation that expires by itself)."""
        return self.pinned_by_writes(key) or key in self._scheduled

    def pinned_by_writes(self, key: str) -> bool:
        """Whether an entity has changes the store does not have yet."""
        return self.backlog.pending(key) or key in self.tainted

    def take_drain(self, force: bool = False) -> Drain | None:
        """Snapshot the dirty entities and take the outbox, for the write-behind to store.

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
        # If the journal cannot trim now, the next drain trims further; replaying
        # events the store already has is harmless.
        if upto > 0 and self.commit.ok():  # never beside a settle on another thread
            with contextlib.suppress(JournalUnavailable):
                self.journal.trim(upto)

    def backlog_empty(self) -> bool:
        """Whether the store has everything (big entities not yet due count as waiting)."""
        return self.backlog.empty() and not self.tainted

    def drain_failed(self, drain: Drain) -> None:
        """The store refused the drain: its entities are dirty again, its events wait."""
        self.backlog.failed(drain, self.entities)

    def due(self) -> bool:
        """Whether timed work is due now (``tick`` left some for the next slice)."""
        return bool(self._deadlines) and self._deadlines[0][0] <= self.clock()

    # -- introspection ------------------------------------------------------------

    def journal_ok(self) -> bool:
        return self.commit.ok()

    def entity_counts(self) -> dict[str, int]:
        counts = {kind.name: 0 for kind in kinds()}
        for key in self.entities:
            counts[key.partition(":")[0]] += 1
        return counts
