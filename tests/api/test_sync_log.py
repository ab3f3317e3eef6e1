"""The sync log (``GET /v1/ops/sync-log``): every change by uid, SKU, channel and
time, with its live-stream and webhook deliveries counted on every process, paged
by cursor; refusals of bad queries; pruning past the retention period on the
real stores (SQLite and PostgreSQL)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from omnigrid.persistence.db import Database
from omnigrid.persistence.events import Event
from omnigrid.persistence.store import PostgresStore, SqliteStore, Store
from omnigrid.persistence.sync_log import SyncLogStore
from tests.api.test_live import Stream
from tests.api.test_webhooks import Receiver, register
from tests.conftest import Grid, PostgresDatabase, new_id, write_headers
from tests.inprocess import in_process_client


@pytest.fixture()
def local() -> Iterator[httpx.Client]:
    with in_process_client() as client:
        yield client


def sync_log(c: httpx.Client, **query: Any) -> dict[str, Any]:
    r = c.get("/v1/ops/sync-log", params=query)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def test_each_change_shows_its_stream_and_webhook_deliveries_on_a_real_grid(
    grid: Grid,
) -> None:
    uid, sku = new_id("u"), new_id("sku")
    receiver = Receiver()
    with httpx.Client(base_url=grid.url, timeout=10) as c:
        hook = register(c, receiver.url, ["cart"])
        stream = Stream(f"{grid.url}/v1/streams/users/{uid}")
        try:
            c.put(f"/v1/skus/{sku}/stock", json={"on_hand": 9}, headers=write_headers("pos"))
            for channel in ("app", "pos", "app"):
                r = c.post(f"/v1/carts/{uid}/lines", json={"sku": sku, "qty": 1},
                           headers=write_headers(channel))  # fmt: skip
                assert r.status_code == 200, r.text
            assert [stream.next()["data"]["version"] for _ in range(3)] == [1, 2, 3]
            receiver.wait_for(3)
            deadline = time.monotonic() + 15  # written behind, then counted
            while True:
                changes = sync_log(c, uid=uid)["changes"]
                if len(changes) == 3 and all(ch["delivered"]["webhooks"] for ch in changes):
                    break
                assert time.monotonic() < deadline, changes
                time.sleep(0.2)
        finally:
            stream.close()
            receiver.stop()
            c.delete(f"/v1/webhooks/{hook['id']}", headers=write_headers())
        # newest first; each reached the one stream and the one receiver
        assert [(ch["key"], ch["version"], ch["channel"], ch["op"]) for ch in changes] == [
            (f"cart:{uid}", 3, "app", "cart.add"),
            (f"cart:{uid}", 2, "pos", "cart.add"),
            (f"cart:{uid}", 1, "app", "cart.add"),
        ]
        for ch in changes:
            assert ch["delivered"] == {"streams": 1, "webhooks": 1}, ch
            assert ch["lag_ms"] is not None and 0 <= ch["lag_ms"] < 10_000
            assert ch["at"].endswith("Z")
        pos = sync_log(c, uid=uid, channel="pos")["changes"]
        assert [ch["version"] for ch in pos] == [2]
        stock = sync_log(c, sku=sku)["changes"]
        assert [(ch["key"], ch["op"]) for ch in stock][-1] == (f"stock:{sku}", "stock.set")
        # paging: one at a time, by cursor, the same three and then no cursor
        seen, cursor = [], None
        for _ in range(3):
            page = sync_log(c, uid=uid, limit=1, **({"cursor": cursor} if cursor else {}))
            seen += [ch["version"] for ch in page["changes"]]
            cursor = page["next_cursor"]
        assert seen == [3, 2, 1]
        assert sync_log(c, uid=uid, limit=1, cursor=cursor)["changes"] == []
        # a time window: nothing before the first change, nothing after now
        first = changes[-1]["at"]
        assert sync_log(c, uid=uid, until=first)["changes"] == []
        assert len(sync_log(c, uid=uid, since=first)["changes"]) == 3
        assert sync_log(c, uid=uid, since=time.time() + 5)["changes"] == []


@pytest.mark.parametrize(
    "query",
    [
        {"cursor": "not-a-cursor"},
        {"since": "yesterday"},
        {"until": "2026-01-01T00:00:00"},  # no zone
        {"limit": "0"},
        {"limit": "5000"},
        {"uid": "x" * 500},
        {"channel": "a b"},
    ],
)
def test_a_bad_query_is_refused_with_a_clear_error(
    local: httpx.Client, query: dict[str, str]
) -> None:
    r = local.get("/v1/ops/sync-log", params=query)
    assert r.status_code in (400, 422), r.text  # malformed, or well-formed but wrong
    assert r.json()["code"] == "invalid_request"


def _events(at: float, count: int) -> list[Event]:
    return [
        Event("cart", f"cart:old-{i}", 1, "app", "cart.add", at, {"n": i}) for i in range(count)
    ]


@pytest.mark.parametrize("dialect", ["sqlite", "postgres"])
def test_changes_past_the_retention_period_are_pruned(
    dialect: str, tmp_path: Any, request: pytest.FixtureRequest
) -> None:
    store: Store
    if dialect == "postgres":
        postgres: PostgresDatabase = request.getfixturevalue("postgres")
        store, db = PostgresStore(postgres.dsn), Database(postgres_dsn=postgres.dsn)
    else:
        path = str(tmp_path / "store.sqlite3")
        store, db = SqliteStore(path), Database(sqlite_path=path)
    now = time.time()
    old, new = _events(now - 3 * 86400, 3), _events(now - 60, 2)
    new = [Event(e.kind, e.key, 2, e.channel, e.op, e.at, e.view) for e in new]
    store.write([], old + new, 100)
    log = SyncLogStore(db)
    assert len(log.changes([], None, 0, now + 1, None, 100)) == 5
    assert log.prune(now - 86400) == 3
    kept = log.changes([], "app", 0, now + 1, None, 100)
    assert [(c.key, c.version) for c in kept] == [("cart:old-1", 2), ("cart:old-0", 2)]
    assert abs(kept[0].at - (now - 60)) < 0.001
    assert log.prune(now - 86400) == 0
