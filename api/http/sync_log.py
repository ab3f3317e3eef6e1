"""``GET /v1/ops/sync-log``: every change, and where and how late it was delivered.

The changes come from the store's event log (persistence/sync_log.py), so the
log is as durable as the changes and kept for the retention period
(``OMNIGRID_SYNC_LOG_RETENTION_S``); a change is in it once written behind,
normally within a second. Deliveries are counted where they happen, in memory:
each process's ``DeliveryBook`` holds, per change, how many live streams and
webhook receivers got it and the latest delivery's lag; a reader adds every
process's figures. A process keeps the figures of its last ``BOOK_SIZE``
changes delivered, so a change older than that (or from before a restart)
shows ``lag_ms: null`` and zero deliveries: known not, rather than measured.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import orjson

from omnigrid.actors import kinds
from omnigrid.actors.declaration import Grid
from omnigrid.actors.errors import InvalidRequest, Unavailable
from omnigrid.api.http import validation as v
from omnigrid.api.http.handlers import Call
from omnigrid.persistence.events import parse_rfc3339, rfc3339
from omnigrid.persistence.store import StoreUnavailable
from omnigrid.persistence.sync_log import Change, SyncLogStore

BOOK_SIZE = 200_000  # changes whose deliveries a process remembers (~30 MB at most)
DEFAULT_SPAN_S = 3600  # without ``since``: the last hour
MAX_LIMIT = 1000

# (key, version) -> [streams, webhooks, latest lag in seconds]
Figures = dict[tuple[str, int], list[float]]
# a change reached a live stream (False) or a webhook receiver (True):
# (its channel, seconds since it was acknowledged, its key, its version, webhook?)
OnDelivered = Callable[[str, float, str, int, bool], None]
# every process's figures for these changes, added up
AskDeliveries = Callable[[list[tuple[str, int]]], Awaitable[Figures]]


class DeliveryBook:
    """This process's deliveries per change: a dict lookup and two stores per
    delivery, the oldest change forgotten past ``size``."""

    def __init__(self, size: int = BOOK_SIZE) -> None:
        self.size = size
        self._by_change: Figures = {}

    def delivered(self, key: str, version: int, webhook: bool, lag_s: float) -> None:
        change = (key, version)
        figures = self._by_change.get(change)
        if figures is None:
            figures = self._by_change[change] = [0, 0, 0.0]
            if len(self._by_change) > self.size:  # dicts keep insertion order: the oldest
                del self._by_change[next(iter(self._by_change))]
        figures[1 if webhook else 0] += 1
        figures[2] = max(figures[2], lag_s)

    def figures(self, changes: Sequence[tuple[str, int]]) -> Figures:
        book = self._by_change
        return {c: book[c] for c in changes if c in book}


def add_figures(every: Sequence[Figures]) -> Figures:
    total: Figures = {}
    for figures in every:
        for change, (streams, webhooks, lag) in figures.items():
            mine = total.setdefault(change, [0, 0, 0.0])
            mine[0] += streams
            mine[1] += webhooks
            mine[2] = max(mine[2], lag)
    return total


def _time(raw: str | None, name: str, default: float) -> float:
    """RFC 3339 with a zone, or epoch seconds."""
    if raw is None:
        return default
    try:
        return float(raw) if raw.replace(".", "", 1).isdigit() else parse_rfc3339(raw, name)
    except ValueError as e:
        raise InvalidRequest(str(e)) from None


def _cursor(change: Change) -> str:
    raw = orjson.dumps([change.at, change.key, change.version])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _after(raw: str | None) -> tuple[float, str, int] | None:
    if raw is None:
        return None
    try:
        at, key, version = orjson.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
        if isinstance(at, bool) or not isinstance(at, int | float):
            raise ValueError
        return float(at), str(key), int(version)
    except (ValueError, TypeError):
        raise InvalidRequest("cursor is not one this grid gave") from None


def keys_of(ident: str, value: str) -> list[str]:
    """Every entity key a uid (or a SKU) names: its cart, member, identity, …"""
    return [kind.key(value) for kind in kinds.kinds() if kind.ident == ident]


class SyncLogEndpoints:
    def __init__(self, store: SyncLogStore | None, deliveries: AskDeliveries) -> None:
        self.store = store
        self.deliveries = deliveries

    async def get(self, grid: Grid, call: Call) -> tuple[int, Any]:
        if self.store is None:
            raise Unavailable("this process has no store")
        keys: list[str] = []
        for ident, name in (("uid", "uid"), ("sku", "sku")):
            raw = call.query_value(name)
            if raw is not None:
                keys += keys_of(ident, v.identifier(raw, name))
        channel = call.query_value("channel")
        if channel is not None:
            channel = v.identifier(channel, "channel")
        now = time.time()
        until = _time(call.query_value("until"), "until", now + 1)
        since = _time(call.query_value("since"), "since", until - DEFAULT_SPAN_S)
        limit = call.query_int("limit", 100, 1, MAX_LIMIT)
        before = _after(call.query_value("cursor"))
        try:
            changes = await asyncio.to_thread(
                self.store.changes, keys, channel, since, until, before, limit
            )
        except StoreUnavailable as e:
            raise Unavailable("the sync log cannot be read right now; retry later") from e
        figures = await self.deliveries([(c.key, c.version) for c in changes])
        shown = []
        for c in changes:
            streams, webhooks, lag = figures.get((c.key, c.version), (0, 0, 0.0))
            shown.append(
                {
                    "key": c.key,
                    "op": c.op,
                    "channel": c.channel,
                    "version": c.version,
                    "at": rfc3339(c.at),
                    "lag_ms": round(lag * 1000, 1) if streams or webhooks else None,
                    "delivered": {"streams": int(streams), "webhooks": int(webhooks)},
                }
            )
        more = len(changes) == limit
        return 200, {"changes": shown, "next_cursor": _cursor(changes[-1]) if more else None}
