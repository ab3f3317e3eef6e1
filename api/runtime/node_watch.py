"""A grid process's part in sync monitoring: its deliveries' lag and counts per
change, every process's seconds and deliveries merged for a reader, and the alert
rules evaluated every few seconds (api/http/ops.py); the process of shard 0 alone
notifies the alert webhooks and prunes the sync log past its retention."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from omnigrid.actors.protocol import Command, Result
from omnigrid.api.http.metrics import GridMetrics
from omnigrid.api.http.ops import EVAL_EVERY_S, KEPT_ALERTS, OpsEndpoints
from omnigrid.api.http.sync_log import DeliveryBook, Figures, SyncLogEndpoints, add_figures
from omnigrid.api.http.sync_stats import KEEP_S, SyncStats
from omnigrid.api.runtime.peers import PeerLink
from omnigrid.persistence.db import Database
from omnigrid.persistence.ops_store import OpsStore
from omnigrid.persistence.store import StoreUnavailable
from omnigrid.persistence.sync_log import SyncLogStore

log = logging.getLogger("omnigrid.node")

RECENT_S = 60  # what a process sends for short windows (alerts look at 10 s)
DELIVERIES_OP = "ops.deliveries"  # "what do you know of these changes' deliveries?"
PRUNE_EVERY_S = 300.0


class NodeWatch:
    def __init__(
        self,
        database: Database,
        shard_id: int,
        metrics: GridMetrics,
        ask_all: Callable[[str], Awaitable[dict[int, Any]]],
        links: dict[int, PeerLink],
        retention_s: float,
        channels: frozenset[str] = frozenset(),
    ) -> None:
        self.shard_id = shard_id
        self.metrics = metrics
        self.ask_all = ask_all
        self.links = links
        self.retention_s = retention_s
        self.stats = SyncStats()  # the app counts requests into it (GridApp.sync_stats)
        self.book = DeliveryBook()
        self.store = OpsStore(database)
        self.log_store = SyncLogStore(database)
        self.endpoints = OpsEndpoints(
            self.windows,
            save_rules=self.save_rules,
            log=SyncLogEndpoints(self.log_store, self.deliveries),
            channels=channels,
        )
        with contextlib.suppress(StoreUnavailable):  # the defaults until they can be read
            self.endpoints.load_rules(self.store.rules())
        # Alerts fired or resolved whose deliveries the store has not taken yet: an
        # alert firing because the disk is full must still reach its webhooks after.
        self.unqueued: list[dict[str, Any]] = []

    def delivered(self, channel: str, lag_s: float, key: str, version: int, webhook: bool) -> None:
        """A change reached a stream or a webhook: its sync lag, by its channel, and
        its deliveries, by change."""
        self.stats.delivered(channel, lag_s)
        self.metrics.delivered(channel, lag_s)
        self.book.delivered(key, version, webhook, lag_s)

    async def deliveries(self, changes: list[tuple[str, int]]) -> Figures:
        """Every process's deliveries of these changes, added up (a process that does
        not answer in time counts none)."""

        async def ask(link: PeerLink) -> Figures:
            try:
                result = await asyncio.wait_for(
                    link.call(Command(DELIVERIES_OP, "", {"changes": changes})), 5.0
                )
            except Exception:
                return {}
            return {(k, int(ver)): list(f) for k, ver, *f in result.body or ()}

        every = await asyncio.gather(*(ask(link) for link in self.links.values()))
        return add_figures([self.book.figures(changes), *every])

    def serve_deliveries(self, cmd: Command) -> Result:
        figures = self.book.figures([(k, int(ver)) for k, ver in cmd.args["changes"]])
        return Result(200, [[k, ver, *f] for (k, ver), f in figures.items()])

    def window(self, window_s: int) -> dict[str, Any]:
        return self.stats.window(window_s)

    async def windows(self, window_s: int) -> list[dict[str, Any]]:
        """Every process's seconds of sync statistics (the last minute, or all kept)."""
        recent = window_s <= RECENT_S
        answers = await self.ask_all("sync_recent" if recent else "sync_all")
        start = int(time.time()) - window_s
        every = [self.window(RECENT_S if recent else KEEP_S)]
        every += [a for a in answers.values() if isinstance(a, dict)]
        return [{s: row for s, row in w.items() if int(s) > start} for w in every]

    async def save_rules(self, rules: list[dict[str, Any]]) -> None:
        await asyncio.to_thread(self.store.put_rules, rules)

    async def evaluate_forever(self) -> None:
        """Every process evaluates (any answers /v1/ops/alerts); shard 0 notifies."""
        notify = self.notify if self.shard_id == 0 else None
        while True:
            await asyncio.sleep(EVAL_EVERY_S)
            try:
                self.endpoints.load_rules(await asyncio.to_thread(self.store.rules))
            except Exception as e:  # the rules last read (or the defaults) are evaluated
                log.warning("the alert rules cannot be read: %r", e)
            try:
                await self.endpoints.evaluate(notify)
                if notify is not None:
                    await self.queue_unqueued()
            except Exception as e:
                log.warning("the alert rules cannot be evaluated: %r", e)

    async def prune_forever(self) -> None:
        """Shard 0 deletes the changes older than the retention period."""
        while True:
            await asyncio.sleep(PRUNE_EVERY_S)
            try:
                gone = await asyncio.to_thread(self.log_store.prune, time.time() - self.retention_s)
                if gone:
                    log.info("sync log: %d changes past the retention period deleted", gone)
            except StoreUnavailable as e:
                log.warning("the sync log cannot be pruned: %s", e)

    async def notify(self, alert: dict[str, Any]) -> None:
        self.unqueued.append(alert)
        del self.unqueued[:-KEPT_ALERTS]
        await self.queue_unqueued()

    async def queue_unqueued(self) -> None:
        """Queue the alerts' deliveries in order; what the store refuses waits for the next
        evaluation (a delivery queued twice is one: its id is the alert's and state's)."""
        while self.unqueued:
            try:
                await asyncio.to_thread(self.store.queue_alert, self.shard_id, self.unqueued[0])
            except StoreUnavailable as e:
                log.warning("%d alert deliveries wait for the store: %s", len(self.unqueued), e)
                return
            self.unqueued.pop(0)
