"""The contract's endpoints as one table: method, path template, handler.

The same table drives the fast dispatcher (api/app.py) and the OpenAPI
document (api/openapi.py); the bodies and answers the document shows are
declared there, and tests/api/test_openapi.py checks every answer the app
gives against the document, so the two cannot drift apart unseen.
"""

from __future__ import annotations

from dataclasses import dataclass

from omnigrid.api import behaviour as b
from omnigrid.api import handlers as h
from omnigrid.api import webhooks as w
from omnigrid.api.sync import sync as offline_sync


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str  # template, e.g. "/v1/carts/{uid}/lines/{sku}"
    name: str
    handler: h.Handler | None  # None: an operations route the app answers itself
    summary: str

    @property
    def segments(self) -> tuple[str, ...]:
        return tuple(self.path.strip("/").split("/"))

    @property
    def is_write(self) -> bool:
        return self.method not in ("GET", "HEAD")


ROUTES: tuple[Route, ...] = (
    Route("PUT", "/v1/skus/{sku}/stock", "put_stock", h.put_stock, "Set a SKU's on-hand stock"),
    Route("GET", "/v1/skus/{sku}/stock", "get_stock", h.get_stock, "Read a SKU's stock"),
    Route(
        "POST",
        "/v1/skus/{sku}/stock/adjustments",
        "adjust_stock",
        h.adjust_stock,
        "Add to or take from a SKU's on-hand stock",
    ),
    Route("POST", "/v1/skus/{sku}/reservations", "reserve", h.reserve, "Hold stock for a checkout"),
    Route(
        "GET",
        "/v1/skus/{sku}/reservations/{rid}",
        "get_reservation",
        h.get_reservation,
        "Read a reservation",
    ),
    Route(
        "POST",
        "/v1/skus/{sku}/reservations/{rid}/commit",
        "commit_reservation",
        h.commit_reservation,
        "Commit a held reservation (on_hand drops by its qty)",
    ),
    Route(
        "DELETE",
        "/v1/skus/{sku}/reservations/{rid}",
        "release_reservation",
        h.release_reservation,
        "Release a held reservation",
    ),
    Route("GET", "/v1/carts/{uid}", "get_cart", h.get_cart, "Read a cart with live availability"),
    Route("DELETE", "/v1/carts/{uid}", "clear_cart", h.clear_cart, "Empty a cart"),
    Route("POST", "/v1/carts/{uid}/lines", "add_line", h.add_line, "Add to a cart line"),
    Route("PUT", "/v1/carts/{uid}/lines/{sku}", "set_line", h.set_line, "Set a line's quantity"),
    Route("DELETE", "/v1/carts/{uid}/lines/{sku}", "remove_line", h.remove_line, "Remove a line"),
    Route("POST", "/v1/sync", "sync", offline_sync, "Replay a device's offline cart work once"),
    Route("POST", "/v1/events", "post_events", b.post_events, "Log channel behaviour for a uid"),
    Route("POST", "/v1/webhooks", "register_webhook", w.register, "Register a webhook"),
    Route("GET", "/v1/webhooks", "list_webhooks", w.list_webhooks, "List the webhooks"),
    Route("DELETE", "/v1/webhooks/{webhook_id}", "delete_webhook", w.delete, "Delete a webhook"),
    Route(
        "GET",
        "/v1/webhooks/{webhook_id}/dead-letters",
        "dead_letters",
        w.dead_letters,
        "Deliveries given up on after the last retry",
    ),
    Route(
        "GET",
        "/v1/users/{uid}/timeline",
        "timeline",
        b.timeline,
        "A user's behaviour and cart changes across channels, in time order",
    ),
    Route(
        "GET",
        "/v1/streams/users/{uid}",
        "user_stream",
        None,
        "Server-Sent Events: every change to the user's cart (resumable with Last-Event-ID)",
    ),
    Route(
        "GET",
        "/v1/streams/skus/{sku}",
        "sku_stream",
        None,
        "Server-Sent Events: every change to the SKU's stock (resumable with Last-Event-ID)",
    ),
    Route("GET", "/healthz", "healthz", None, "200 while the process lives"),
    Route("GET", "/readyz", "readyz", None, "200 when every shard answers, else 503"),
    Route("GET", "/metrics", "metrics", None, "Prometheus metrics of every grid process"),
    Route("GET", "/v1/cluster", "cluster", None, "Shards, their processes and slot ranges"),
    Route(
        "POST",
        "/v1/cluster/audit",
        "audit",
        None,
        "Drain the write-behind, then compare live entities with the store",
    ),
)


class RouteTable:
    """Matches a request path to a route and its parameters by segments."""

    def __init__(self, routes: tuple[Route, ...] = ROUTES) -> None:
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
