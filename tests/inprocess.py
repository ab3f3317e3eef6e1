"""The ASGI app in-process, with no Ray grid: one shard owning every slot, in memory,
its store in a temporary SQLite file. For tests of the HTTP contract's shape that
need no second process, no journal and no restart (the document, the contract's
answers): they run in seconds where a grid takes ten to start.
"""

from __future__ import annotations

import asyncio
import tempfile
from typing import Any

import httpx

from omnigrid.actors import identifiers
from omnigrid.actors.errors import Unavailable
from omnigrid.actors.shard import Shard
from omnigrid.actors.slots import SlotMap
from omnigrid.api.http.admin import KeyEndpoints
from omnigrid.api.http.app import GridApp
from omnigrid.api.http.auth import Keyring
from omnigrid.api.http.behaviour import BehaviourEndpoints
from omnigrid.api.http.cluster_jobs import ClusterEndpoints
from omnigrid.api.http.guard import Guard
from omnigrid.api.http.metrics import GridMetrics
from omnigrid.api.http.openapi import docs_app
from omnigrid.api.http.ops import OpsEndpoints
from omnigrid.api.http.routes import all_routes
from omnigrid.api.http.streams import StreamServer
from omnigrid.api.http.sync_log import DeliveryBook, Figures, SyncLogEndpoints
from omnigrid.api.http.webhooks import WebhookEndpoints
from omnigrid.api.runtime.hub import EventHub
from omnigrid.api.runtime.rebalance import Handover, Rebalancer
from omnigrid.api.runtime.router import Router
from omnigrid.api.runtime.settings import DEFAULT_CHANNELS
from omnigrid.persistence.behaviour import BehaviourLog
from omnigrid.persistence.cluster_state import ClusterState
from omnigrid.persistence.db import Database
from omnigrid.persistence.keys import KeyStore
from omnigrid.persistence.request_keys import RequestKeys
from omnigrid.persistence.store import SqliteStore
from omnigrid.persistence.sync_log import SyncLogStore
from omnigrid.persistence.webhooks import WebhookStore
from omnigrid.persistence.writebehind import WriteBehind


class Operations:
    async def ready(self) -> tuple[bool, dict[str, Any]]:
        return True, {"shards": 1, "missing": []}

    async def exposition(self) -> str:
        return "# one process, nothing measured yet\n"

    async def cluster(self) -> dict[str, Any]:
        return {"slot_map_version": 1, "shards": []}

    async def audit_all(self) -> dict[str, Any]:
        return {"checked": 0, "mismatched": 0}


TEST_IDENTITY_SECRET = b"the tests' identity key, 32 bytes"


LOCAL_NODE = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"  # the one "node" of an in-process grid


class NoMoreProcesses:
    """One process and no Ray: a job that needs another shard process fails, saying so."""

    async def control(self, shard_id: int, method: str, *args: Any) -> Any:
        raise Unavailable("one process: there is no other shard")

    async def start_shard(self, shard_id: int, node: str | None = None) -> None:
        raise Unavailable("one process: it cannot start shard processes")

    async def stop_shard(self, shard_id: int, budget_s: float) -> None:
        raise Unavailable("one process: there is no other shard")

    async def nodes(self) -> list[str]:
        return [LOCAL_NODE]

    async def placement(self, shard_ids: range) -> dict[int, str | None]:
        return dict.fromkeys(shard_ids, LOCAL_NODE)


def in_process_app() -> GridApp:
    """One shard owning every slot, its store in a temporary SQLite file."""
    identifiers.configure(TEST_IDENTITY_SECRET)
    path = tempfile.mkdtemp(prefix="omnigrid-openapi-") + "/store.sqlite3"
    store = SqliteStore(path)  # makes the tables
    db = Database(sqlite_path=path)
    channels = frozenset(DEFAULT_CHANNELS)
    shard = Shard(0, SlotMap.even(1))
    router = Router(shard, {})
    hub = EventHub(shard, store, {}, lambda: router.slot_map)
    streams = StreamServer(hub, max_streams=100, heartbeat_s=15, grid=router)
    keys, keyring = KeyStore(db), Keyring(TEST_IDENTITY_SECRET)
    keyring.load(keys.all())

    async def reload() -> None:
        keyring.load(keys.all())

    async def log_unmask(key_id: str, route: str, uid: str | None) -> None:
        keys.log_pii_access(key_id, route, uid)

    made: list[GridApp] = []

    async def windows(window_s: int) -> list[dict[str, Any]]:
        return [made[0].sync_stats.window(window_s)]

    book = DeliveryBook()  # what this app's streams delivered (no webhook sender here)

    async def deliveries(changes: list[tuple[str, int]]) -> Figures:
        return book.figures(changes)

    def delivered(channel: str, lag: float, key: str, version: int, webhook: bool) -> None:
        made[0].sync_stats.delivered(channel, lag)
        book.delivered(key, version, webhook, lag)

    streams.on_delivered = delivered
    state = ClusterState(db, "inprocess")
    handover = Handover(shard, WriteBehind(shard, store, 0.2, 100), store, router, state)
    jobs = Rebalancer(0, handover, NoMoreProcesses(), state, stop_budget_s=1)

    async def read_job(job_id: str) -> dict[str, Any] | None:
        return state.job(job_id)

    routes = all_routes(
        WebhookEndpoints(WebhookStore(db)),
        BehaviourEndpoints(BehaviourLog(db), channels),
        KeyEndpoints(keys, keyring, reload),
        OpsEndpoints(
            windows, log=SyncLogEndpoints(SyncLogStore(db), deliveries), channels=channels
        ),
        ClusterEndpoints(jobs.start, read_job),
        RequestKeys(db),
    )
    metrics = GridMetrics(0)
    guard = Guard(keyring, unmask_log=log_unmask)
    router.first_use = guard.nonces.first_use_token  # one process: it owns every nonce
    app = GridApp(
        router,
        routes,
        Operations(),
        metrics,
        channels,
        docs_app(routes),
        streams=streams,
        guard=guard,
    )
    made.append(app)
    return app


class SyncASGITransport(httpx.BaseTransport):
    """httpx's ASGI transport is async only: each request runs it in a loop of its own."""

    def __init__(self, app: GridApp) -> None:
        self._transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        async def send() -> httpx.Response:
            response = await self._transport.handle_async_request(request)
            body = await response.aread()
            return httpx.Response(
                response.status_code, headers=response.headers, content=body, request=request
            )

        return asyncio.run(send())


def in_process_client() -> httpx.Client:
    """A plain httpx client whose requests go to a fresh in-process app."""
    return httpx.Client(transport=SyncASGITransport(in_process_app()), base_url="http://grid")
