"""A grid process's part in sync monitoring: its deliveries' lag, every process's
seconds merged for a reader, and the alert rules evaluated every few seconds
(api/http/ops.py); the process of shard 0 alone notifies the alert webhooks."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from omnigrid.api.http.metrics import GridMetrics
from omnigrid.api.http.ops import EVAL_EVERY_S, OpsEndpoints
from omnigrid.api.http.sync_stats import KEEP_S, SyncStats
from omnigrid.persistence.db import Database
from omnigrid.persistence.ops_store import OpsStore
from omnigrid.persistence.store import StoreUnavailable

log = logging.getLogger("omnigrid.node")

RECENT_S = 60  # what a process sends for short windows (alerts look at 10 s)


class NodeWatch:
    def __init__(
        self,
        database: Database,
        shard_id: int,
        metrics: GridMetrics,
        ask_all: Callable[[str], Awaitable[dict[int, Any]]],
    ) -> None:
        self.shard_id = shard_id
        self.metrics = metrics
        self.ask_all = ask_all
        self.stats = SyncStats()  # the app counts requests into it (GridApp.sync_stats)
        self.store = OpsStore(database)
        self.endpoints = OpsEndpoints(self.windows, save_rules=self.save_rules)
        with contextlib.suppress(StoreUnavailable):  # the defaults until they can be read
            self.endpoints.load_rules(self.store.rules())

    def delivered(self, channel: str, lag_s: float) -> None:
        """A change reached a stream or a webhook: its sync lag, by its channel."""
        self.stats.delivered(channel, lag_s)
        self.metrics.delivered(channel, lag_s)

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
                await self.endpoints.evaluate(notify)
            except Exception as e:
                log.warning("the alert rules cannot be evaluated: %r", e)

    async def notify(self, alert: dict[str, Any]) -> None:
        await asyncio.to_thread(self.store.queue_alert, self.shard_id, alert)
