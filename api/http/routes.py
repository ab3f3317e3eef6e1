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
from omnigrid.api.http.admin import KeyCreate, KeyEndpoints, KeyRotate
from omnigrid.api.http.batch_keys import keyed
from omnigrid.api.http.behaviour import BehaviourEndpoints
from omnigrid.api.http.cluster_jobs import BUSY, ClusterEndpoints, Drain, Scale
from omnigrid.api.http.ops import OpsEndpoints
from omnigrid.api.http.suggestions import Suggestions
from omnigrid.api.http.sync import sync as offline_sync
from omnigrid.api.http.webhooks import WebhookEndpoints
from omnigrid.persistence.request_keys import RequestKeys

UNSET = "unset"  # a route nobody gave a scope: refused to every key (a test finds it)


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
    # the key scope it needs (api/http/auth.py): "" any valid key, None public
    scope: str | None = UNSET

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


def kind_scope(kind: Kind, route: KindRoute) -> str:
    """The route's own scope, else its kind's: ``<scope>:read`` or ``<scope>:write``."""
    if route.scope is not None:
        return route.scope
    if not kind.scope:
        return UNSET
    return f"{kind.scope}:{'write' if route.is_write else 'read'}"


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
                scope=kind_scope(kind, r),
            )
        )
    return routes


def own_routes(
    webhooks: WebhookEndpoints,
    behaviour: BehaviourEndpoints,
    keys: KeyEndpoints,
    ops: OpsEndpoints,
    cluster: ClusterEndpoints,
    request_keys: RequestKeys | None = None,
) -> tuple[Route, ...]:
    """The grid's routes beside the kinds': offline sync, behaviour, webhooks, keys,
    operations."""
    return (
        Route(
            "POST",
            "/v1/admin/keys",
            "create_key",
            keys.create,
            "Create an API key: its secret is shown once",
            status=201,
            body=KeyCreate,
            answer=dict[str, Any],
            scope="admin",
        ),
        Route(
            "GET",
            "/v1/admin/keys",
            "list_keys",
            keys.list_keys,
            "The API keys, no secrets",
            answer=dict[str, Any],
            scope="admin",
        ),
        Route(
            "POST",
            "/v1/admin/keys/{key_id}/rotate",
            "rotate_key",
            keys.rotate,
            "A new secret; the old one works for overlap_s more",
            body=KeyRotate,
            answer=dict[str, Any],
            refusals=("not_found",),
            scope="admin",
        ),
        Route(
            "DELETE",
            "/v1/admin/keys/{key_id}",
            "revoke_key",
            keys.revoke,
            "Revoke a key: refused on every process from now on",
            answer=dict[str, Any],
            refusals=("not_found",),
            scope="admin",
        ),
        Route(
            "GET",
            "/v1/ops/sync",
            "ops_sync",
            ops.sync,
            "Each channel's requests, success, latency and sync lag over window_s, and "
            "the alerts firing",
            answer=dict[str, Any],
            scope="ops",
            query=(("window_s", {"type": "integer", "minimum": 1, "maximum": 900}),),
        ),
        Route(
            "GET",
            "/v1/ops/series",
            "ops_series",
            ops.series,
            "Per second and channel over window_s: the dashboard's points",
            answer=dict[str, Any],
            scope="ops",
            query=(("window_s", {"type": "integer", "minimum": 1, "maximum": 900}),),
        ),
        Route(
            "GET",
            "/v1/ops/alert-rules",
            "get_alert_rules",
            ops.get_rules,
            "The alert rules",
            answer=dict[str, Any],
            scope="ops",
        ),
        Route(
            "PUT",
            "/v1/ops/alert-rules",
            "put_alert_rules",
            ops.put_rules,
            "Replace the alert rules (every process)",
            body=dict[str, Any],
            answer=dict[str, Any],
            scope="ops",
        ),
        Route(
            "GET",
            "/v1/ops/alerts",
            "ops_alerts",
            ops.get_alerts,
            "Alerts, newest first (?state=firing|resolved)",
            answer=dict[str, Any],
            scope="ops",
            query=(("state", {"type": "string", "enum": ["firing", "resolved"]}),),
        ),
        Route(
            "GET",
            "/v1/ops/sync-log",
            "ops_sync_log",
            ops.log.get,
            "Every change, newest first: its key, op, channel, version and time, and how "
            "many streams and webhooks got it how late (?uid= ?sku= ?channel= ?since= "
            "?until= ?limit= ?cursor=)",
            answer=dict[str, Any],
            scope="ops",
            query=(
                ("uid", {"type": "string"}),
                ("sku", {"type": "string"}),
                ("channel", {"type": "string"}),
                ("since", {"type": "string"}),
                ("until", {"type": "string"}),
                ("limit", {"type": "integer", "minimum": 1, "maximum": 1000}),
                ("cursor", {"type": "string"}),
            ),
        ),
        Route(
            "GET",
            "/ops",
            "ops_dashboard",
            None,
            "The sync dashboard: a page that signs its own requests with an ops key",
            answer=str,
            media_type="text/html",
            scope=None,
        ),
        Route(
            "GET",
            "/v1/admin/pii-access",
            "pii_access",
            keys.pii_access,
            "Every unmasked read: key, route, uid, at",
            answer=dict[str, Any],
            scope="admin",
        ),
        Route(
            "POST",
            "/v1/sync",
            "sync",
            keyed(request_keys, "sync", offline_sync),
            "Replay a device's offline cart work once",
            body=sd.SyncBatch,
            answer=sd.SyncAnswer,
            scope="carts:write",
        ),
        Route(
            "POST",
            "/v1/events",
            "post_events",
            keyed(request_keys, "post_events", behaviour.post_events),
            "Log channel behaviour for a uid",
            status=202,
            body=b.BehaviourBatch,
            answer=dict[str, Any],
            scope="members:write",
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
            scope="admin",
        ),
        Route(
            "GET",
            "/v1/webhooks",
            "list_webhooks",
            webhooks.list_webhooks,
            "List the webhooks",
            answer=dict[str, Any],
            scope="admin",
        ),
        Route(
            "DELETE",
            "/v1/webhooks/{webhook_id}",
            "delete_webhook",
            webhooks.delete,
            "Delete a webhook",
            answer=dict[str, Any],
            refusals=("not_found",),
            scope="admin",
        ),
        Route(
            "GET",
            "/v1/webhooks/{webhook_id}/dead-letters",
            "dead_letters",
            webhooks.dead_letters,
            "Deliveries given up on after the last retry",
            answer=dict[str, Any],
            scope="admin",
        ),
        Route(
            "GET",
            "/v1/users/{uid}/merge-suggestions",
            "merge_suggestions",
            behaviour.merge_suggestions,
            "Users who share a device, address or payment account (never merged by itself)",
            answer=Suggestions,
            scope="members:read",
        ),
        Route(
            "GET",
            "/v1/users/{uid}/timeline",
            "timeline",
            behaviour.timeline,
            "A user's behaviour and cart changes across channels, in time order",
            answer=dict[str, Any],
            scope="members:read",
        ),
        Route(
            "GET",
            "/healthz",
            "healthz",
            None,
            "200 while the process lives",
            answer=dict[str, str],
            scope=None,
        ),
        Route(
            "GET",
            "/readyz",
            "readyz",
            None,
            "200 when every shard answers, else 503",
            answer=dict[str, Any],
            scope=None,
        ),
        Route(
            "GET",
            "/metrics",
            "metrics",
            None,
            "Prometheus metrics of every grid process",
            answer=str,
            media_type=PROMETHEUS,
            scope="ops",
        ),
        Route(
            "GET",
            "/v1/cluster",
            "cluster",
            None,
            "Shards, their processes and slot ranges",
            answer=dict[str, Any],
            scope="ops",
        ),
        Route(
            "POST",
            "/v1/cluster/scale",
            "cluster_scale",
            cluster.scale,
            "Scale to this many shards: slots move online; a job to follow",
            status=202,
            body=Scale,
            answer=dict[str, str],
            refusals=(BUSY,),
            scope="ops",
        ),
        Route(
            "POST",
            "/v1/cluster/rebalance",
            "cluster_rebalance",
            cluster.rebalance,
            "Even the shards over the nodes and the slots over the shards, online: a job",
            status=202,
            answer=dict[str, str],
            refusals=(BUSY,),
            scope="ops",
        ),
        Route(
            "POST",
            "/v1/cluster/drain",
            "cluster_drain",
            cluster.drain,
            "Move every shard off a Ray node, online, before it leaves: a job to follow",
            status=202,
            body=Drain,
            answer=dict[str, str],
            refusals=(BUSY, "not_found"),
            scope="ops",
        ),
        Route(
            "GET",
            "/v1/cluster/jobs/{job_id}",
            "cluster_job",
            cluster.job,
            "A scale, rebalance or drain job: its state and slots moved so far",
            answer=dict[str, Any],
            refusals=("not_found",),
            scope="ops",
        ),
        Route(
            "POST",
            "/v1/cluster/audit",
            "audit",
            None,
            "Drain the write-behind, then compare live entities with the store",
            answer=dict[str, Any],
            scope="admin",
        ),
    )


def all_routes(
    webhooks: WebhookEndpoints | None = None,
    behaviour: BehaviourEndpoints | None = None,
    keys: KeyEndpoints | None = None,
    ops: OpsEndpoints | None = None,
    cluster: ClusterEndpoints | None = None,
    request_keys: RequestKeys | None = None,
) -> tuple[Route, ...]:
    """The registered kinds' routes, then the grid's own (over these stores; without
    them, those routes answer 503: enough for the document)."""
    webhooks = webhooks or WebhookEndpoints(None)
    behaviour = behaviour or BehaviourEndpoints(None, frozenset())
    own = own_routes(
        webhooks,
        behaviour,
        keys or KeyEndpoints(None, None),
        ops or OpsEndpoints(None),
        cluster or ClusterEndpoints(None, None),
        request_keys,
    )
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
        read = f"{sharing[0].scope}:read" if sharing[0].scope else UNSET
        routes.append(
            Route("GET", path, declared.name, None, summary, answer=str,
                  media_type=EVENT_STREAM, stream=tuple(sharing), scope=read)
        )  # fmt: skip
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
