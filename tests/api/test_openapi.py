"""The OpenAPI document is exact: schemathesis drives every documented route of the
ASGI app in-process (no Ray) and checks each answer's status code, content type
and body against ``/openapi.json``; a route whose document drifts from its
behaviour fails here. The event streams never end, so their documents are
checked as documents, and their refusals over HTTP.
"""

from __future__ import annotations

import asyncio
import tempfile
from typing import Any

import httpx
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from omnigrid.actors.shard import Shard
from omnigrid.actors.slots import SlotMap
from omnigrid.api.app import GridApp
from omnigrid.api.hub import EventHub
from omnigrid.api.metrics import GridMetrics
from omnigrid.api.openapi import docs_app
from omnigrid.api.router import Router
from omnigrid.api.services import Services
from omnigrid.api.settings import DEFAULT_CHANNELS
from omnigrid.api.streams import StreamServer
from omnigrid.persistence.behaviour import BehaviourLog
from omnigrid.persistence.db import Database
from omnigrid.persistence.store import SqliteStore
from omnigrid.persistence.webhooks import WebhookStore

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


class Operations:
    async def ready(self) -> tuple[bool, dict[str, Any]]:
        return True, {"shards": 1, "missing": []}

    async def exposition(self) -> str:
        return "# one process, nothing measured yet\n"

    async def cluster(self) -> dict[str, Any]:
        return {"slot_map_version": 1, "shards": []}

    async def audit_all(self) -> dict[str, Any]:
        return {"checked": 0, "mismatched": 0}


def in_process_app() -> GridApp:
    """One shard owning every slot, its store in a temporary SQLite file."""
    path = tempfile.mkdtemp(prefix="omnigrid-openapi-") + "/store.sqlite3"
    store = SqliteStore(path)  # makes the tables
    db = Database(sqlite_path=path)
    channels = frozenset(DEFAULT_CHANNELS)
    shard = Shard(0, SlotMap.even(1))
    router = Router(shard, {}, Services(db, BehaviourLog(db), WebhookStore(db), channels))
    hub = EventHub(shard, store, {}, lambda: router.slot_map)
    streams = StreamServer(hub, max_streams=100, heartbeat_s=15)
    return GridApp(router, Operations(), GridMetrics(0), channels, docs_app(), streams=streams)


APP = in_process_app()
SCHEMA = schemathesis.openapi.from_asgi("/openapi.json", APP).exclude(path_regex="^/v1/streams/")


@SCHEMA.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_answer_matches_the_document(case: Any) -> None:
    case.call_and_validate(checks=CHECKS)


def test_streams_are_documented_as_event_streams_with_their_refusals() -> None:
    async def scenario() -> None:
        transport = httpx.ASGITransport(app=APP)  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="http://grid") as c:
            doc = (await c.get("/openapi.json")).json()
            for path in ("/v1/streams/users/{uid}", "/v1/streams/skus/{sku}"):
                answers = doc["paths"][path]["get"]["responses"]
                assert list(answers["200"]["content"]) == ["text/event-stream"]
                assert list(answers["400"]["content"]) == ["application/problem+json"]
            metrics = doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
            assert list(metrics) == ["text/plain; version=0.0.4; charset=utf-8"]
            # what the document says a malformed id gets, it gets
            bad = await c.get("/v1/streams/users/not%20an%20id")
            assert bad.status_code == 400
            assert bad.headers["content-type"] == "application/problem+json"
            assert bad.json()["code"] == "invalid_request"

    asyncio.run(scenario())
