"""The write-behind: dirty entities' snapshots and the event log, to the store in batches.

Every ``interval_s`` the shard's loop takes a drain (snapshots of the entities
changed since their last one, and the journaled events not yet stored), a
worker thread writes it to the store in one transaction, and only then does
the shard trim its journal and are the snapshots offered to the hot copy
(persistence/hot_copy.py), which writes them on its own. The journal is
what makes a change durable; the store is where it lives for good and where
passivated entities come back from.

When the store is down, drains fail and are retried: entities stay dirty,
events stay unstored, the journal keeps everything. The unstored events are
bounded by the shard (``max_queue``): past it, writes answer 503 until the
store catches up. A log line says when the store starts failing, every
ten seconds while it does, and when it has caught up (persistence/outage.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from omnigrid.persistence.events import Event
from omnigrid.persistence.outage import Outage
from omnigrid.persistence.store import Snapshot, Store, StoreUnavailable
from omnigrid.persistence.webhooks import Webhook, deliveries_for

log = logging.getLogger("omnigrid.writebehind")


@dataclass(slots=True)
class Drain:
    """One write-behind batch: snapshots of the dirty entities and the events behind them."""

    keys: set[str]
    snapshots: list[Snapshot]
    events: list[Event]
    upto: int  # the journal number of the last event
    # key -> its first journal number this drain's snapshot covers (restored on failure)
    since: dict[str, int] = field(default_factory=dict)


class DrainSource(Protocol):
    """The shard's side of the write-behind (actors.shard.Shard)."""

    def unstored_count(self) -> int: ...

    def take_drain(self, force: bool = False) -> Drain | None: ...

    def drain_done(self, drain: Drain) -> None: ...

    def drain_failed(self, drain: Drain) -> None: ...

    def backlog_empty(self) -> bool: ...


class WriteBehind:
    def __init__(
        self,
        shard: DrainSource,
        store: Store,
        interval_s: float,
        batch: int,
        observe_lag: Callable[[list[float]], None] = lambda lags: None,
        shard_id: int = 0,
        webhooks: Callable[[], Sequence[Webhook]] = lambda: (),
    ) -> None:
        self.shard = shard
        self.store = store
        # Told of every drain's snapshots once the store has them (the hot copy).
        self.on_stored: Callable[[Sequence[Snapshot]], None] = lambda snapshots: None
        self.interval_s = interval_s
        self.batch = batch
        self.observe_lag = observe_lag
        self.shard_id = shard_id
        self.webhooks = webhooks  # the registrations whose deliveries each drain queues
        # bookkeeping changes (Op.quiet): in the journal only, no event log, no webhook
        self.quiet_ops: frozenset[str] = frozenset()
        self.drains = 0
        self.outage = Outage(log, "write-behind: the store")
        self._lock = asyncio.Lock()

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.drain()
            except Exception:
                log.exception("write-behind drain crashed")

    async def drain(self, force: bool = False) -> bool:
        """Store one drain; True when it worked (or there was nothing to store).

        ``force`` snapshots big entities too, even if not due (audit, stop).
        """
        async with self._lock:  # one drain at a time: the unstored events go in order
            drain = self.shard.take_drain(force)
            if drain is None:
                return True
            try:
                await asyncio.to_thread(self._write, drain)
            except StoreUnavailable as e:
                self.shard.drain_failed(drain)
                self.outage.failed(e, f"{self.shard.unstored_count()} changes queued")
                return False
            self.shard.drain_done(drain)
            self.on_stored(drain.snapshots)
            self.drains += 1
            self.outage.worked()
            return True

    async def drain_all(self, force: bool = False, rounds: int = 1_000) -> bool:
        """Drain until nothing is left (audit, a clean stop); False if the store refused.

        At most ``rounds`` drains: under a steady write load the backlog never
        quite empties, and the audit counts what is left as pending.
        """
        for _ in range(rounds):
            if not await self.drain(force):
                return False
            if self.shard.backlog_empty():
                return True
        return False

    def _write(self, drain: Drain) -> None:
        now = time.time()
        # a saga's bookkeeping is journaled (replay needs it), not logged nor delivered
        events = [e for e in drain.events if e.op not in self.quiet_ops]
        deliveries = deliveries_for(self.shard_id, self.webhooks(), events, now)
        self.store.write(drain.snapshots, events, self.batch, deliveries)
        now = time.time()
        self.observe_lag([now - event.at for event in drain.events])

    @property
    def failures(self) -> int:
        return self.outage.failures

    @property
    def failing_since(self) -> float | None:
        return self.outage.failing_since
