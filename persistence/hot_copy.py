"""The hot copy: each entity's latest API view as JSON at ``og:<ns>:view:<key>``.

For readers that want a recent view without asking the grid (a product
page's stock badge, a BI job). Views are offered after the store has them, so
the copy is never ahead of the system of record, and they are written by a
loop of their own: a slow or absent Redis delays the copy, never the store.
While Redis is away, only the newest view of each entity waits (memory is
bounded by the entity count) and is written when Redis answers again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import orjson
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from omnigrid.persistence.outage import Outage
from omnigrid.persistence.store import Snapshot

log = logging.getLogger("omnigrid.hot_copy")
TIMEOUT_S = 1.0


class HotCopy:
    def __init__(self, url: str, namespace: str, interval_s: float, batch: int) -> None:
        self.prefix = f"og:{namespace}:view:"
        self.interval_s = interval_s
        self.batch = batch
        self._redis = redis.Redis.from_url(
            url,
            socket_timeout=TIMEOUT_S,
            socket_connect_timeout=TIMEOUT_S,
            retry=Retry(NoBackoff(), 0),
        )
        self._waiting: dict[str, tuple[int, dict[str, Any]]] = {}  # key -> newest (version, view)
        self.outage = Outage(log, "hot copy: Redis")
        self._lock = asyncio.Lock()  # one copy at a time: a newer view never lands first

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def offer(self, snapshots: Sequence[Snapshot]) -> None:
        """Views the store now has; an older one never replaces a newer one."""
        for s in snapshots:
            held = self._waiting.get(s.key)
            if held is None or s.version > held[0]:
                self._waiting[s.key] = (s.version, s.view)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self.copy()

    async def copy(self) -> bool:
        """Write what waits; True when it worked (or nothing waited)."""
        async with self._lock:
            if not self._waiting:
                return True
            taken, self._waiting = self._waiting, {}
            try:
                await asyncio.to_thread(self._write, taken)
            except redis.RedisError as e:
                for key, held in taken.items():  # back in line, unless a newer one came
                    if key not in self._waiting:
                        self._waiting[key] = held
                self.outage.failed(e, f"{self.waiting} views wait")
                return False
            self.outage.worked()
            return True

    def _write(self, views: dict[str, tuple[int, dict[str, Any]]]) -> None:
        items = list(views.items())
        for start in range(0, len(items), self.batch):
            pipe = self._redis.pipeline(transaction=False)
            for key, (_, view) in items[start : start + self.batch]:
                pipe.set(self.prefix + key, orjson.dumps(view))
            pipe.execute()

    def close(self) -> None:
        self._redis.close()
