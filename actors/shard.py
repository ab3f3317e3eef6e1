"""A shard: the host of many entities (virtual actors) for the slots it owns.

A shard is a plain object, not a Ray actor: api/ wraps it in one. Commands run
synchronously, one at a time, in the order they are handed in, so every
entity sees one command at a time in arrival order without locks. A batch of
commands is one turn: its events go to the journal as one group, before the
caller releases any of the batch's answers.
"""

from __future__ import annotations

import heapq
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from omnigrid.actors.entity import Entity
from omnigrid.actors.errors import GridError
from omnigrid.actors.kinds import ENTITY_KINDS, split_key
from omnigrid.actors.protocol import MOVED, Command, Result
from omnigrid.actors.slots import SlotMap
from omnigrid.persistence.events import Event
from omnigrid.persistence.journal import Journal, JournalUnavailable, NullJournal

# A read of many SKUs' availability at once: one command per owner shard, so a
# cart view costs one message per shard, not one per line.
PEEK = "stock.peek"
SYSTEM_CHANNEL = "system"
REBUILD_PAUSE_S = 1.0


class Shard:
    def __init__(
        self,
        shard_id: int,
        slot_map: SlotMap,
        journal: Journal | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.shard_id = shard_id
        self.slot_map = slot_map
        self.journal: Journal = journal if journal is not None else NullJournal()
        self.clock = clock
        self.entities: dict[str, Entity] = {}
        self.commands = Counter[str]()
        # Timed work: a heap of (when, key) with at most one live entry per
        # entity (``_scheduled``); a flash sale's 100,000 reservations of one
        # SKU are one entry, not 100,000 to pop and push again on every tick.
        self._deadlines: list[tuple[float, str]] = []
        self._scheduled: dict[str, float] = {}
        self._broken: str | None = None  # why the journal failed, until a rebuild works
        self._next_rebuild = 0.0
        self._last_failure = ""
        self._pending: list[Event] = []

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

        If the journal cannot take the batch, every answer of the batch is 503
        and the shard rebuilds its state from the journal, so the refused
        changes are undone: nothing is acknowledged that is not durable, and a
        failed request changes nothing.
        """
        if self._broken is not None and not self._rebuild():
            return [self._unavailable(self._broken) for _ in commands]
        results = [self._apply(cmd) for cmd in commands]
        if not self.flush():
            return [self._unavailable(self._last_failure) for _ in commands]
        return results

    def apply(self, cmd: Command) -> Result:
        """Run one command as a turn of its own."""
        return self.apply_batch([cmd])[0]

    def flush(self) -> bool:
        """Hand pending events to the journal; False (and a rebuild due) if it failed."""
        if self._pending:
            events, self._pending = self._pending, []
            try:
                self.journal.append(events)
            except JournalUnavailable as e:
                self._broken = self._last_failure = str(e)
                self._next_rebuild = 0.0  # undo the refused batch now if the journal reads
                self._rebuild()
                return False
        return True

    @staticmethod
    def _unavailable(reason: str | None) -> Result:
        return Result(503, None, "unavailable", f"the journal is unavailable: {reason}")

    def _rebuild(self) -> bool:
        """Throw memory away and replay the journal; False while it cannot be read.

        Tried at most once per ``REBUILD_PAUSE_S`` while the journal is down, so
        a dead store costs callers an immediate 503, not a connect timeout each.
        """
        now = time.monotonic()
        if now < self._next_rebuild:
            return False
        self._next_rebuild = now + REBUILD_PAUSE_S
        self.entities.clear()
        self._deadlines.clear()
        self._scheduled.clear()
        self._pending.clear()
        try:
            self.recover(self.journal.replay())
        except JournalUnavailable as e:
            self._broken = str(e)
            return False
        self._broken = None
        return True

    def recover(self, events: Iterable[Event]) -> int:
        """Rebuild state by running journaled changes again, at their own times.

        Every change's command carries the decisions it made (reservation ids,
        the availability a cart line was checked against), so the same
        commands at the same clock reach the same state, versions and
        idempotency records. Returns the number of events replayed.
        """
        clock = self.clock
        count = 0
        try:
            for event in events:
                self.clock = lambda at=event.at: at  # type: ignore[misc]
                if event.op.endswith(".expire"):
                    entity = self.entities.get(event.key)
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
                count += 1
        finally:
            self.clock = clock
            self._pending.clear()  # what was replayed is in the journal already
        return count

    def _apply(self, cmd: Command) -> Result:
        self.commands[cmd.op] += 1
        if cmd.op == PEEK:
            return self._peek(cmd.args["skus"])
        if not self.owns(cmd.key):
            return self._moved()
        kind, ident = split_key(cmd.key)
        handler = kind.handlers.get(cmd.op) if kind is not None else None
        if kind is None or handler is None:
            return Result(422, None, "invalid_request", f"{cmd.op!r} is not an operation")
        now = self.clock()
        entity = self.entities.get(cmd.key)
        stored = entity is not None
        if entity is None:
            entity = kind(cmd.key, ident)
        else:
            self._expire(entity, now)
        if cmd.op in kind.reads:
            try:
                outcome = handler(entity, cmd.args, cmd.channel, now)
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
                return Result(record.status, record.body)
        if cmd.if_match is not None and cmd.if_match != entity.version:
            return Result(
                412,
                None,
                "version_conflict",
                f"If-Match {cmd.if_match} but the current version is {entity.version}",
            )
        try:
            outcome = handler(entity, cmd.args, cmd.channel, now)
        except GridError as e:
            return Result(e.status, None, e.code, e.detail)
        view: dict[str, Any] | None = None
        if outcome.changed:
            view = self._changed(entity, cmd.channel, cmd.op, now, cmd)
        body = outcome.body if outcome.body is not None else (view or entity.view())
        if idem is not None:
            entity.remember(idem, cmd.fingerprint or "", outcome.status, body, now)
        if not stored and (outcome.changed or idem is not None):
            self.entities[cmd.key] = entity
        return Result(outcome.status, body)

    def _changed(
        self, entity: Entity, channel: str, op: str, now: float, cmd: Command | None = None
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
            dict(cmd.args) if cmd is not None else {},
            cmd.idempotency_key if cmd is not None else None,
            cmd.fingerprint if cmd is not None else None,
        )
        self._pending.append(event)
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

    def _peek(self, skus: list[str]) -> Result:
        """Availability of many SKUs (``None`` for one never stocked)."""
        out: dict[str, int | None] = {}
        now = self.clock()
        for sku in skus:
            key = "stock:" + sku
            if not self.owns(key):
                return self._moved()
            stock = self.entities.get(key)
            if stock is None:
                out[sku] = None
            else:
                self._expire(stock, now)
                out[sku] = stock.available  # type: ignore[attr-defined]
        return Result(200, out)

    # -- timed work ---------------------------------------------------------------

    def tick(self, budget: int = 200) -> int:
        """Run up to ``budget`` entities' due timed work (reservation expiry).

        Returns how many entities changed. ``due()`` tells whether more is
        waiting, so the caller can yield to its event loop between slices: an
        expiry wave of a million reservations then costs requests a few
        milliseconds at a time, never one long stall.
        """
        if self._broken is not None and not self._rebuild():
            return 0
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
        self.flush()
        return touched

    def due(self) -> bool:
        """Whether timed work is due now (``tick`` left some for the next slice)."""
        return bool(self._deadlines) and self._deadlines[0][0] <= self.clock()

    # -- introspection ------------------------------------------------------------

    def entity_counts(self) -> dict[str, int]:
        counts = dict.fromkeys(ENTITY_KINDS, 0)
        for key in self.entities:
            counts[key.partition(":")[0]] += 1
        return counts
