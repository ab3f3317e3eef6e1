"""Every endpoint as one table: method, path template, handler, and its document.

The entity kinds' routes are derived from their declarations (actors/kinds.py);
the rest (offline sync, behaviour, webhooks, operations) are listed here. The
same table drives the dispatcher (api/http/app.py) and the OpenAPI document
(api/http/openapi.py); tests/api/test_openapi.py has schemathesis check the app's
answers against that document.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

from omnigrid.actors.declaration import Kind, Op
from omnigrid.actors.declaration import Route as KindRoute
from omnigrid.actors.kinds import kinds
from omnigrid.api.http import behaviour as b
from omnigrid.api.http import handlers as h
from omnigrid.api.http import sync as sd
from omnigrid.api.http import webhooks as w
from omnigrid.api.http.behaviour import BehaviourEndpoints
from omnigrid.api.http.suggestions import Suggestions
from omnigrid.api.http.sync import sync as offline_sync
from omnigrid.api.http.webhooks import WebhookEndpoints


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str  # template, e.g. "/v1/carts/{uid}/lines/{sku}"
    name: str
    handler: h.Handler | None  # None: a route the app answers itself (operations, streams)
    summary: str
    status: int = 200  # the success status
    body: Any = None  # the request body's type, for the document
    answer: Any = None  # the success answer's type, for the document
    refusals: tuple[str, ...] = ()  # problem codes beyond those every route can answer
    media_type: str = "application/json"  # of the success answer
    etag: bool = False  # answers an entity's view: ETag is its version
    stream: tuple[Kind, ...] = ()  # Server-Sent Events of these kinds' entities
    query: tuple[tuple[str, dict[str, Any]], ...] = ()  # query parameters and their schemas
    kind: Kind | None = None

    @property
    def segments(self) -> tuple[str, ...]:
        return tuple(self.path.strip("/").split("/"))

    @property
    def is_write(self) -> bool:
        return self.method not in ("GET", "HEAD")


EVENT_STREAM = "text/event-stream"
PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"


def _query_schemas(op: Op, route: KindRoute) -> tuple[tuple[str, dict[str, Any]], ...]:
    if op.input is None or not route.query_fields:
        return ()
    fields = {f.name: f.type for f in msgspec.structs.fields(op.input)}
    return tuple((name, msgspec.json.schema(fields[name])) for name in route.query_fields)


def kind_routes(kind: Kind) -> list[Route]:
    routes = []
    for r in kind.routes:
        op = kind.ops_by_name[r.op]
        routes.append(
            Route(
                r.method,
                r.path,
                r.name,
                h.route_handler(kind, r),
                r.summary,
                r.status,
                h.body_type(op, r) if r.is_write else None,
                r.answer,
                r.refusals,
                etag=r.answer is kind.view,
                kind=kind,
                query=_query_schemas(op, r),
            )
        )
    return routes


def own_routes(webhooks: WebhookEndpoints, behaviour: BehaviourEndpoints) -> tuple[Route, ...]:
    """The grid's routes beside the kinds': offline sync, behaviour, webhooks, operations."""
    return (
        Route(
            "POST",
            "/v1/sync",
            "sync",
            offline_sync,
            "Replay a device's offline cart work once",
            body=sd.SyncBatch,
            answer=sd.SyncAnswer,
        ),
        Route(
            "POST",
            "/v1/events",
            "post_events",
            behaviour.post_events,
            "Log channel behaviour for a uid",
            status=202,
            body=b.BehaviourBatch,
            answer=dict[str, Any],
        ),
        Route(
            "POST",
            "/v1/webhooks",
            "register_webhook",
            webhooks.register,
            "Register a webhook",
            status=201,
            body=w.WebhookCreate,
            answer=dict[str, Any],
        ),
        Route(
            "GET",
            "/v1/webhooks",
            "list_webhooks",
            webhooks.list_webhooks,
            "List the webhooks",
            answer=dict[str, Any],
        ),
        Route(
            "DELETE",
            "/v1/webhooks/{webhook_id}",
            "delete_webhook",
            webhooks.delete,
            "Delete a webhook",
            answer=dict[str, Any],
            refusals=("not_found",),
        ),
        Route(
            "GET",
            "/v1/webhooks/{webhook_id}/dead-letters",
            "dead_letters",
            webhooks.dead_letters,
            "Deliveries given up on after the last retry",
            answer=dict[str, Any],
        ),
        Route(
            "GET",
            "/v1/users/{uid}/merge-suggestions",
            "merge_suggestions",
            behaviour.merge_suggestions,
            "Users who share a device, address or payment account (never merged by itself)",
            answer=Suggestions,
        ),
        Route(
            "GET",
            "/v1/users/{uid}/timeline",
            "timeline",
            behaviour.timeline,
            "A user's behaviour and cart changes across channels, in time order",
            answer=dict[str, Any],
        ),
        Route(
            "GET", "/healthz", "healthz", None, "200 while the process lives", answer=dict[str, str]
        ),
        Route(
            "GET",
            "/readyz",
            "readyz",
            None,
            "200 when every shard answers, else 503",
            answer=dict[str, Any],
        ),
        Route(
            "GET",
            "/metrics",
            "metrics",
            None,
            "Prometheus metrics of every grid process",
            answer=str,
            media_type=PROMETHEUS,
        ),
        Route(
            "GET",
            "/v1/cluster",
            "cluster",
            None,
            "Shards, their processes and slot ranges",
            answer=dict[str, Any],
        ),
        Route(
            "POST",
            "/v1/cluster/audit",
            "audit",
            None,
            "Drain the write-behind, then compare live entities with the store",
            answer=dict[str, Any],
        ),
    )


def all_routes(
    webhooks: WebhookEndpoints | None = None, behaviour: BehaviourEndpoints | None = None
) -> tuple[Route, ...]:
    """The registered kinds' routes, then the grid's own (over these stores; without
    them, those routes answer 503: enough for the document)."""
    webhooks = webhooks or WebhookEndpoints(None)
    behaviour = behaviour or BehaviourEndpoints(None, frozenset())
    own = own_routes(webhooks, behaviour)
    return tuple(r for kind in kinds() for r in kind_routes(kind)) + stream_routes() + own


def stream_routes() -> tuple[Route, ...]:
    """One route per stream path; kinds that declare the same path share its stream
    (the cart and the member on ``/v1/streams/users/{uid}``)."""
    by_path: dict[str, list[Kind]] = {}
    for kind in kinds():
        if kind.stream is not None:
            by_path.setdefault(kind.stream.path, []).append(kind)
    routes = []
    for path, sharing in by_path.items():
        declared = sharing[0].stream
        assert declared is not None
        summary = (
            declared.summary
            if len(sharing) == 1
            else (
                "Server-Sent Events: every change to the "
                + ", ".join(k.name for k in sharing)
                + " (resumable with Last-Event-ID)"
            )
        )
        routes.append(Route("GET", path, declared.name, None, summary, answer=str,
                            media_type=EVENT_STREAM, stream=tuple(sharing)))  # fmt: skip
    return tuple(routes)


class RouteTable:
    """Matches a request path to a route and its parameters by segments."""

    def __init__(self, routes: tuple[Route, ...] | None = None) -> None:
        routes = all_routes() if routes is None else routes
        self._by_length: dict[int, list[Route]] = {}
        for route in routes:
            self._by_length.setdefault(len(route.segments), []).append(route)

    def match(self, method: str, path: str) -> tuple[Route | None, dict[str, str], bool]:
        """(route, params, path_known): path_known without a route means 405."""
        parts = path.strip("/").split("/")
        path_known = False
        for route in self._by_length.get(len(parts), ()):
            params: dict[str, str] = {}
            for pattern, part in zip(route.segments, parts, strict=True):
                if pattern[0] == "{":
                    params[pattern[1:-1]] = part
                elif pattern != part:
                    break
            else:
                if route.method == method:
                    return route, params, True
                path_known = True
        return None, {}, path_known
