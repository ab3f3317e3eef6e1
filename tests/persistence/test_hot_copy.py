"""The hot copy against a Redis of the test's own: it waits while Redis is away,
never lets an older view replace a newer one, and catches up by itself."""

from __future__ import annotations

import asyncio

import orjson
import redis

from omnigrid.persistence.hot_copy import HotCopy
from omnigrid.persistence.store import Snapshot
from tests.conftest import OwnRedis


def snapshot(key: str, version: int) -> Snapshot:
    return Snapshot(key, "cart", 0, version, 0.0, b"", {"key": key, "version": version})


def test_views_wait_while_redis_is_away_and_the_newest_is_written(own_redis: OwnRedis) -> None:
    copy = HotCopy(own_redis.url, "hc", interval_s=0.1, batch=10)
    copy.offer([snapshot("cart:a", 1), snapshot("cart:b", 1)])
    assert asyncio.run(copy.copy())
    r = redis.Redis.from_url(own_redis.url)
    assert orjson.loads(r.get("og:hc:view:cart:a") or b"null")["version"] == 1

    own_redis.stop()
    copy.offer([snapshot("cart:a", 3)])
    assert not asyncio.run(copy.copy())  # refused: the view waits, nothing raised
    assert copy.waiting == 1 and copy.outage.failing_since is not None
    copy.offer([snapshot("cart:a", 2)])  # an older view never replaces a newer one
    own_redis.start()
    assert asyncio.run(copy.copy())
    assert copy.waiting == 0 and copy.outage.failing_since is None
    r = redis.Redis.from_url(own_redis.url)
    assert orjson.loads(r.get("og:hc:view:cart:a") or b"null")["version"] == 3
    copy.close()
