"""The ASGI application every grid process serves: a lean dispatcher.

The hot path is pure ASGI: match the route from a table, read headers and
body once, check size, channel and versions, run the handler, write orjson.
No per-request model building and no middleware stack. ``/docs`` and
``/openapi.json`` are served by a FastAPI app that documents the same table
(api/openapi.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Protocol

import orjson

from omnigrid.actors.errors import GridError, MalformedRequest, Overloaded
from omnigrid.api import validation as v
from omnigrid.api.handlers import Call
from omnigrid.api.metrics import GridMetrics
from omnigrid.api.problems import (
    PROBLEM_CONTENT_TYPE,
    RETRY_AFTER_S,
    from_error,
    problem_bytes,
    retry_after,
)
from omnigrid.api.router import Router
from omnigrid.api.routes import Route, RouteTable
from omnigrid.api.streams import StreamServer

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
# status, body, content type, extra headers, channel label, problem code (None: success)
Answer = tuple[int, bytes, bytes, list[tuple[bytes, bytes]], str, str | None]

log = logging.getLogger("omnigrid.api")

JSON = b"application/json"
TEXT = b"text/plain; version=0.0.4; charset=utf-8"
DOCS_PATHS = ("/docs", "/openapi.json", "/docs/oauth2-redirect", "/redoc")


class Operations(Protocol):
    """What the process hosting the app answers for the operations routes."""

    async def ready(self) -> tuple[bool, dict[str, Any]]: ...

    async def exposition(self) -> str: ...

    async def cluster(self) -> dict[str, Any]: ...

    async def audit_all(self) -> dict[str, Any]: ...


class _Disconnected(Exception):
    pass


class GridApp:
    def __init__(
        self,
        router: Router,
        operations: Operations,
        metrics: GridMetrics,
        channels: frozenset[str],
        docs: ASGIApp,
        max_inflight: int = 4096,
        streams: StreamServer | None = None,
    ) -> None:
        if not channels:
            raise ValueError("the channel registry must name at least one channel")
        if max_inflight < 1:
            raise ValueError("max_inflight must be at least 1")
        self.router = router
        self.operations = operations
        self.metrics = metrics
        self.channels = channels
        self.docs = docs
        self.max_inflight = max_inflight
        self.inflight = 0
        self.table = RouteTable()
        self.streams = streams  # long-lived: counted apart from max_inflight

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        if path.startswith(DOCS_PATHS):
            await self.docs(scope, receive, send)
            return
        started = time.perf_counter()
        method: str = scope["method"]
        route, params, path_known = self.table.match(method, path)
        name = route.name if route is not None else "unmatched"
        if route is not None and route.stream is not None and self.streams is not None:
            await self.streams.serve(scope, receive, send, route.stream, params)
            return
        self.inflight += 1
        try:
            status, body, content_type, headers, channel, error_code = await self._dispatch(
                route, params, path_known, scope, receive
            )
        except _Disconnected:
            return
        finally:
            self.inflight -= 1
        if error_code is not None:
            self.metrics.error(channel, name, error_code)
        headers.append((b"content-type", content_type))
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        self.metrics.observe(channel, name, method, status, time.perf_counter() - started)

    async def _dispatch(
        self,
        route: Route | None,
        params: dict[str, str],
        path_known: bool,
        scope: Scope,
        receive: Receive,
    ) -> Answer:
        channel_raw: bytes | None = None
        idem_raw: bytes | None = None
        if_match_raw: bytes | None = None
        length_raw: bytes | None = None
        for name, value in scope["headers"]:
            if name == b"x-channel":
                channel_raw = value
            elif name == b"idempotency-key":
                idem_raw = value
            elif name == b"if-match":
                if_match_raw = value
            elif name == b"content-length":
                length_raw = value
        channel_text = channel_raw.decode("latin-1") if channel_raw is not None else ""
        channel = channel_text if channel_text in self.channels else "none"
        instance: str = scope["path"]
        try:
            if route is None:
                if path_known:
                    raise GridError("method_not_allowed", f"{scope['method']} is not allowed here")
                raise GridError("not_found", f"no such endpoint: {instance}")
            if length_raw is not None and (
                not length_raw.isdigit() or int(length_raw) > v.MAX_BODY_BYTES
            ):
                raise (
                    v.too_large()
                    if length_raw.isdigit()
                    else MalformedRequest("Content-Length must be a number")
                )
            if self.inflight > self.max_inflight:
                raise Overloaded(f"{self.inflight - 1} requests are already in progress here")
            body = await _read_body(receive) if route.is_write else b""
            if route.handler is None:
                return await self._operations(route)
            if route.is_write and channel_text not in self.channels:
                raise GridError(
                    "unknown_channel",
                    "every write must name a known channel in X-Channel: "
                    + ", ".join(sorted(self.channels)),
                )
            call = Call(
                params,
                body,
                channel,
                v.idempotency_key(idem_raw),
                v.if_match(if_match_raw),
                scope.get("query_string", b""),
            )
            status, answer = await route.handler(self.router, call)
            headers: list[tuple[bytes, bytes]] = []
            if route.etag:
                headers.append((b"etag", b'"%d"' % answer["version"]))
            return status, orjson.dumps(answer), JSON, headers, channel, None
        except GridError as err:
            code = err.code
            status, doc = from_error(err, instance)
        except _Disconnected:
            raise
        except Exception:  # a bug, never the client's fault: log it, show no trace
            log.exception("unhandled error on %s %s", scope["method"], instance)
            code = "internal_error"
            status, doc = 500, problem_bytes(500, code, "an internal error", instance)
        headers = [(b"retry-after", b"%d" % RETRY_AFTER_S)] if retry_after(status) else []
        return status, doc, PROBLEM_CONTENT_TYPE, headers, channel, code

    async def _operations(self, route: Route) -> Answer:
        if route.name == "healthz":
            return 200, b'{"status":"ok"}', JSON, [], "none", None
        if route.name == "readyz":
            ok, details = await self.operations.ready()
            if ok:
                return 200, orjson.dumps({"status": "ready", **details}), JSON, [], "none", None
            doc = orjson.loads(problem_bytes(503, "unavailable", "the grid is not ready"))
            headers = [(b"retry-after", b"%d" % RETRY_AFTER_S)]
            body = orjson.dumps({**doc, **details})
            return 503, body, PROBLEM_CONTENT_TYPE, headers, "none", "unavailable"
        if route.name == "metrics":
            return 200, (await self.operations.exposition()).encode(), TEXT, [], "none", None
        if route.name == "audit":
            return 200, orjson.dumps(await self.operations.audit_all()), JSON, [], "none", None
        return 200, orjson.dumps(await self.operations.cluster()), JSON, [], "none", None


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > v.MAX_BODY_BYTES:
            raise v.too_large()
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)
