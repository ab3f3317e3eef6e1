"""The ASGI application every grid process serves: a lean dispatcher.

The hot path is pure ASGI: match the route from a table, read headers and
body once, check size, channel and versions, run the handler, write orjson.
No per-request model building and no middleware stack. ``/docs`` and
``/openapi.json`` are served by a FastAPI app that documents the same table
(api/http/openapi.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Protocol
from urllib.parse import unquote

import orjson

from omnigrid.actors.declaration import ID_RE, Grid
from omnigrid.actors.errors import GridError, MalformedRequest, Overloaded
from omnigrid.api.http import validation as v
from omnigrid.api.http.auth import Principal
from omnigrid.api.http.dashboard import PAGE
from omnigrid.api.http.guard import UNMASK, Guard
from omnigrid.api.http.handlers import Call
from omnigrid.api.http.metrics import GridMetrics
from omnigrid.api.http.personal import mask
from omnigrid.api.http.problems import error_response, problem_response
from omnigrid.api.http.routes import Route, RouteTable
from omnigrid.api.http.streams import StreamServer
from omnigrid.api.http.sync_stats import SyncStats

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
# status, body, headers (the content type among them), channel label, problem code
# (None: success)
Answer = tuple[int, bytes, list[tuple[bytes, bytes]], str, str | None]

log = logging.getLogger("omnigrid.api")

JSON = [(b"content-type", b"application/json")]
TEXT = [(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")]
DASHBOARD = PAGE.encode()
DOCS_PATHS = ("/docs", "/openapi.json", "/docs/oauth2-redirect", "/redoc")
# path parameters that carry personal data (an identifier's value: a phone, an email,
# an ID number): never shown back in a problem document, even when malformed
PERSONAL_PARAMS = ("value",)


class Operations(Protocol):
    """What the process hosting the app answers for the operations routes."""

    async def ready(self) -> tuple[bool, dict[str, Any]]: ...

    async def exposition(self) -> str: ...

    async def cluster(self) -> dict[str, Any]: ...

    async def audit_all(self) -> dict[str, Any]: ...


class _Disconnected(Exception):
    pass


# operators' calls (the dashboard's polls, key admin) are no channel's sync health
OPERATOR_SCOPES = frozenset({"ops", "admin"})


class GridApp:
    def __init__(
        self,
        grid: Grid,
        routes: tuple[Route, ...],
        operations: Operations,
        metrics: GridMetrics,
        channels: frozenset[str],
        docs: ASGIApp,
        max_inflight: int = 4096,
        streams: StreamServer | None = None,
        guard: Guard | None = None,
    ) -> None:
        if not channels:
            raise ValueError("the channel registry must name at least one channel")
        if max_inflight < 1:
            raise ValueError("max_inflight must be at least 1")
        self.grid = grid
        self.operations = operations
        self.metrics = metrics
        self.channels = channels
        self.docs = docs
        self.max_inflight = max_inflight
        self.inflight = 0
        self.table = RouteTable(routes)
        self.streams = streams  # long-lived: counted apart from max_inflight
        self.guard = guard  # signatures, scopes, channels and stores (None: an open grid)
        self.sync_stats = SyncStats()  # each channel's requests per second (/v1/ops/sync)

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
        if route is not None and route.stream and self.streams is not None:
            try:
                await self._admit(scope, route, params, b"", "")
            except GridError as err:
                status, body, headers = error_response(err, path)
                await send({"type": "http.response.start", "status": status, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
            await self.streams.serve(scope, receive, send, route.stream, params)
            return
        self.inflight += 1
        try:
            status, body, headers, channel, error_code = await self._dispatch(
                route, params, path_known, scope, receive
            )
        except _Disconnected:
            return
        finally:
            self.inflight -= 1
        if error_code is not None:
            self.metrics.error(channel, name, error_code)
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        elapsed = time.perf_counter() - started
        self.metrics.observe(channel, name, method, status, elapsed)
        if route is None or route.scope not in OPERATOR_SCOPES:  # a channel's traffic
            self.sync_stats.request(channel, status, elapsed, error_code)

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
        clerk_raw: bytes | None = None
        unmask = False
        for name, value in scope["headers"]:
            if name == b"x-channel":
                channel_raw = value
            elif name == b"idempotency-key":
                idem_raw = value
            elif name == b"if-match":
                if_match_raw = value
            elif name == b"content-length":
                length_raw = value
            elif name == b"x-clerk":
                clerk_raw = value
            elif name == UNMASK:
                unmask = value.lower() == b"true"
        channel_text = channel_raw.decode("latin-1") if channel_raw is not None else ""
        channel = channel_text if channel_text in self.channels else "none"
        try:
            if route is None:
                if path_known:
                    raise GridError("method_not_allowed", f"{scope['method']} is not allowed here")
                where = _public_path(scope["path"], params)
                raise GridError("not_found", f"no such endpoint: {where}")
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
            principal = await self._admit(scope, route, params, body, channel_text)
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
                v.clerk(clerk_raw, channel) if route.is_write else None,
                self.channels,
            )
            status, answer = await route.handler(self.grid, call)
            if self.guard is not None:
                await self.guard.settle_nonce()
            if self.guard is not None and unmask:
                answer = await self.guard.unmask(principal, self.grid, route.name, answer)
            headers = list(JSON)
            if route.etag:
                headers.append((b"etag", b'"%d"' % answer["version"]))
            return status, orjson.dumps(answer), headers, channel, None
        except GridError as err:
            refusal = await self._unless_replayed(err)
            # the masked path is built only for a refusal: its four regexes took
            # ~12 µs, about 3 % of a shard's CPU, when every answer paid for them
            instance = _public_path(scope["path"], params)
            return (*error_response(refusal, instance), channel, refusal.code)
        except _Disconnected:
            raise
        except Exception:  # a bug, never the client's fault: log it, show no trace
            instance = _public_path(scope["path"], params)
            log.exception("unhandled error on %s %s", scope["method"], instance)
            code = "internal_error"
            return (*problem_response(500, code, "an internal error", instance), channel, code)

    async def _unless_replayed(self, err: GridError) -> GridError:
        """A refused request's nonce no command took is checked now: a replay's
        refusal says so (401), whatever else it would have said."""
        if self.guard is None:
            return err
        try:
            await self.guard.settle_nonce()
        except GridError as replay:
            return replay
        return err

    async def _admit(
        self, scope: Scope, route: Route, params: dict[str, str], body: bytes, channel: str
    ) -> Principal | None:
        """The caller's signature, scope, channel and store (an open grid: nothing)."""
        if self.guard is None or not self.guard.enabled:
            return None
        entity = None  # an entity route: its owner checks the nonce with the first command
        kind = route.kind
        if kind is not None and route.handler is not None:
            ident = params.get(kind.ident)
            if ident is not None and ID_RE.fullmatch(ident) is not None:
                entity = kind.key(ident)
        principal = await self.guard.admit(scope, route.scope, body, entity)
        await self.guard.check_place(principal, self.grid, params, channel, route.is_write, body)
        return principal

    async def _operations(self, route: Route) -> Answer:
        if route.name == "ops_dashboard":
            headers = [(b"content-type", b"text/html; charset=utf-8"),
                       (b"cache-control", b"no-store")]  # fmt: skip
            return 200, DASHBOARD, headers, "none", None
        if route.name == "healthz":
            return 200, b'{"status":"ok"}', list(JSON), "none", None
        if route.name == "readyz":
            ok, details = await self.operations.ready()
            if ok:
                return 200, orjson.dumps({"status": "ready", **details}), list(JSON), "none", None
            refusal = problem_response(503, "unavailable", "the grid is not ready", None, details)
            return (*refusal, "none", "unavailable")
        if route.name == "metrics":
            return 200, (await self.operations.exposition()).encode(), list(TEXT), "none", None
        if route.name == "audit":
            return 200, orjson.dumps(await self.operations.audit_all()), list(JSON), "none", None
        return 200, orjson.dumps(await self.operations.cluster()), list(JSON), "none", None


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


def _public_path(path: str, params: dict[str, str]) -> str:
    """The path as a problem document shows it: a personal path parameter's segment
    hidden, and anything else that looks like a phone, email or ID number masked."""
    hidden = {params[name] for name in PERSONAL_PARAMS if name in params}
    if hidden:
        path = "/".join("***" if unquote(seg) in hidden else seg for seg in path.split("/"))
    return mask(path)
