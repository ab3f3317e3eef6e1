"""Server-Sent Events: one entity's changes, live, resumable, on any grid process.

Each entity kind may declare a stream route (``GET /v1/streams/users/{uid}``
streams the user's cart as ``event: cart``, ``GET /v1/streams/skus/{sku}``
the SKU's stock as ``event: stock``). Each event's ``id`` is
``<kind>:<version>``, its ``data`` the entity's new view plus ``channel``,
``op``, ``version`` and ``at``. A client that comes
back with ``Last-Event-ID`` (the header browsers send, or the query parameter
``last_event_id``) first gets every change after that version, from the
owner's history (the store's event log and the journal not yet stored), then
the live ones: no gap, no duplicate. Versions grow by one per change, so a
stream that sees a jump asks the owner for what is between before it goes on.

A comment line every ``heartbeat_s`` keeps idle streams open through proxies.
A stream whose reader falls 10,000 events behind is ended; its client resumes.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import urllib.parse
from collections.abc import MutableMapping
from typing import Any, Protocol

import orjson

from omnigrid.actors.declaration import ALIAS_QUERY, Grid, Kind
from omnigrid.actors.errors import GridError, MalformedRequest, Overloaded, Unavailable
from omnigrid.actors.kinds import kind_named
from omnigrid.api.http import validation as v
from omnigrid.api.http.problems import error_response
from omnigrid.api.http.sync_log import OnDelivered
from omnigrid.persistence.events import Event, rfc3339

Scope = MutableMapping[str, Any]


class Subscription:
    """One stream's interest in one key; a stream of several kinds shares one inbox."""

    def __init__(self, key: str, queue: asyncio.Queue[Event] | None = None) -> None:
        self.key = key
        self.queue: asyncio.Queue[Event] = queue if queue is not None else asyncio.Queue()
        self.last = -1  # the last version this stream has sent (-1: none yet)
        self.overflowed = False


class Source(Protocol):
    """Where a stream's events come from (api/runtime/hub.py: the owner's, across processes)."""

    async def subscribe(
        self, key: str, queue: asyncio.Queue[Event] | None = None
    ) -> Subscription: ...

    def unsubscribe(self, sub: Subscription) -> None: ...

    async def since(self, key: str, after: int) -> list[Event]: ...


def parse_cursor(raw: str, kinds: tuple[str, ...]) -> dict[str, int]:
    """A stream's cursor, kind -> last version: ``cart:17,member:4``; ``cart:17`` and a
    bare ``17`` (the first kind's) from v1 clients. Anything else is a 400."""
    cursor: dict[str, int] = {}
    for part in raw.strip().split(","):
        prefix, sep, number = part.strip().rpartition(":")
        kind = prefix if sep else kinds[0]
        if kind not in kinds:
            raise MalformedRequest(f"Last-Event-ID {raw!r} names {kind!r}, not one of {kinds}")
        if not number.isdigit() or len(number) > 18:
            raise MalformedRequest(
                f"Last-Event-ID must be '{kinds[0]}:<version>[,<kind>:<version>...]', not {raw!r}"
            )
        cursor[kind] = int(number)
    return cursor


def encode(event: Event, cursor: str) -> bytes:
    kind = kind_named(event.kind)
    data = {
        **event.view,
        "channel": event.channel,
        "op": event.op,
        "version": event.version,
        "at": rfc3339(event.at),
    }
    if kind is not None and kind.event_view is not None:  # it carries another view, whole
        data = {
            **kind.event_view(event.view),
            "channel": event.channel,
            "op": event.op,
            "at": rfc3339(event.at),
        }
    name = kind.stream_events.get(event.op, event.kind) if kind is not None else event.kind
    return b"id: %s\nevent: %s\ndata: %s\n\n" % (
        cursor.encode(),
        name.encode(),
        orjson.dumps(data),
    )


# A stream's last words when its process stops: reconnect in half a second (with
# Last-Event-ID, to any process: nothing is missed)
CLOSING = b"retry: 500\n: this grid process is stopping; reconnect\n\n"


class StreamServer:
    def __init__(
        self, hub: Source, max_streams: int, heartbeat_s: float, grid: Grid | None = None
    ) -> None:
        self.hub = hub
        self.grid = grid  # to follow a merged user to its survivor
        self.max_streams = max_streams
        self.heartbeat_s = heartbeat_s
        self.open = 0
        self.sent = 0
        self.on_delivered: OnDelivered | None = None
        self.closing = asyncio.Event()  # set: every stream ends (close_all)

    async def serve(
        self, scope: Scope, receive: Any, send: Any, kinds: tuple[Kind, ...], params: dict[str, str]
    ) -> None:
        """One stream: the changes of the entities of ``kinds`` the path's ident names."""
        names = tuple(kind.name for kind in kinds)
        subs: list[Subscription] = []
        try:
            ident = v.identifier(params[kinds[0].ident], kinds[0].ident)
            if self.grid is not None:  # a merged user's stream is its survivor's
                first = kinds[0].key(ident)
                ident = (await self.grid.query({first: ALIAS_QUERY}))[first] or ident
            cursor = self._cursor(scope, names)
            if self.closing.is_set():
                raise Unavailable("this grid process is stopping; reconnect")
            if self.open >= self.max_streams:
                raise Overloaded(f"{self.open} streams are already open on this process")
            inbox: asyncio.Queue[Event] = asyncio.Queue()
            for kind in kinds:
                sub = await self._subscribe(kind.key(ident), inbox)
                sub.last = cursor.get(kind.name, -1)
                subs.append(sub)
        except GridError as err:
            for sub in subs:
                self.hub.unsubscribe(sub)
            await self._refuse(send, err, scope["path"])
            return
        self.open += 1
        try:
            await self._stream(subs, inbox, receive, send)
        finally:
            self.open -= 1
            for sub in subs:
                self.hub.unsubscribe(sub)

    def _cursor(self, scope: Scope, kinds: tuple[str, ...]) -> dict[str, int]:
        for name, value in scope["headers"]:
            if name == b"last-event-id":
                return parse_cursor(value.decode("latin-1"), kinds)
        query = urllib.parse.parse_qs(scope.get("query_string", b"").decode("latin-1"))
        if "last_event_id" in query:
            return parse_cursor(query["last_event_id"][0], kinds)
        return {}

    async def _subscribe(self, key: str, inbox: asyncio.Queue[Event]) -> Subscription:
        try:
            return await self.hub.subscribe(key, inbox)
        except GridError:
            raise
        except Exception as e:
            raise Unavailable(f"the owner of {key} cannot be reached ({type(e).__name__})") from e

    async def _refuse(self, send: Any, err: GridError, instance: str) -> None:
        status, body, headers = error_response(err, instance)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _stream(
        self, subs: list[Subscription], inbox: asyncio.Queue[Event], receive: Any, send: Any
    ) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream"),
                    (b"cache-control", b"no-cache"),
                    (b"x-accel-buffering", b"no"),  # nginx: do not buffer the stream
                ],
            }
        )
        await send({"type": "http.response.body", "body": b"retry: 1000\n\n", "more_body": True})
        by_key = {sub.key: sub for sub in subs}
        for sub in subs:
            if sub.last >= 0:
                await self._catch_up(subs, sub, send, None)
        gone = asyncio.ensure_future(_disconnected(receive))
        closing = asyncio.ensure_future(self.closing.wait())
        try:
            while not gone.done() and not any(sub.overflowed for sub in subs):
                getter = asyncio.ensure_future(inbox.get())
                done, _ = await asyncio.wait(
                    {getter, gone, closing},
                    timeout=self.heartbeat_s,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if closing in done:  # this process stops: the client comes back elsewhere
                    getter.cancel()
                    await send({"type": "http.response.body", "body": CLOSING, "more_body": False})
                    return
                if getter not in done:
                    getter.cancel()
                    if not gone.done():
                        await send(
                            {
                                "type": "http.response.body",
                                "body": b": heartbeat\n\n",
                                "more_body": True,
                            }
                        )
                    continue
                event = getter.result()
                sub = by_key[event.key]
                if event.version <= sub.last:
                    continue  # already sent (history and live overlap)
                if sub.last >= 0 and event.version > sub.last + 1:
                    await self._catch_up(subs, sub, send, event.version)
                await self._send_event(subs, sub, send, event)
                if self.on_delivered is not None:  # live, not history a client caught up on
                    lag = time.time() - event.at
                    self.on_delivered(event.channel, lag, event.key, event.version, False)
            if any(sub.overflowed for sub in subs):  # end cleanly: the client resumes
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            gone.cancel()
            closing.cancel()

    def close_all(self) -> int:
        """End every open stream with a retry hint (the process is stopping); how many."""
        self.closing.set()
        return self.open

    async def _catch_up(
        self, subs: list[Subscription], sub: Subscription, send: Any, before: int | None
    ) -> None:
        """Send what the owner has after ``sub.last`` (and before ``before``, if given)."""
        try:
            history = await self.hub.since(sub.key, sub.last)
        except Exception:
            return  # the owner is away: the next event or the renewal tries again
        for event in history:
            if before is not None and event.version >= before:
                break
            if event.version > sub.last:
                await self._send_event(subs, sub, send, event)

    async def _send_event(
        self, subs: list[Subscription], sub: Subscription, send: Any, event: Event
    ) -> None:
        sub.last = event.version
        # The id is the whole stream's position: every kind it has sent, so a
        # resume from it misses nothing of any kind.
        cursor = ",".join(f"{s.key.partition(':')[0]}:{s.last}" for s in subs if s.last >= 0)
        await send({"type": "http.response.body", "body": encode(event, cursor), "more_body": True})
        self.sent += 1


async def _disconnected(receive: Any) -> None:
    with contextlib.suppress(Exception):
        while (await receive())["type"] != "http.disconnect":
            pass
