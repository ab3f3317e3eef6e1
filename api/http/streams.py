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
import urllib.parse
from collections.abc import MutableMapping
from typing import Any, Protocol

import orjson

from omnigrid.actors.declaration import Kind
from omnigrid.actors.errors import GridError, MalformedRequest, Overloaded, Unavailable
from omnigrid.api.http import validation as v
from omnigrid.api.http.problems import error_response
from omnigrid.persistence.events import Event, rfc3339

Scope = MutableMapping[str, Any]


class Subscription:
    """One stream's inbox for one key."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.queue: asyncio.Queue[Event] = asyncio.Queue()
        self.last = -1  # the last version this stream has sent (-1: none yet)
        self.overflowed = False


class Source(Protocol):
    """Where a stream's events come from (api/runtime/hub.py: the owner's, across processes)."""

    async def subscribe(self, key: str) -> Subscription: ...

    def unsubscribe(self, sub: Subscription) -> None: ...

    async def since(self, key: str, after: int) -> list[Event]: ...


def parse_cursor(raw: str, kind: str) -> int:
    """``cart:17`` or ``17`` -> 17; anything else is a 400."""
    text = raw.strip()
    prefix, sep, number = text.rpartition(":")
    if sep and prefix != kind:
        raise MalformedRequest(f"Last-Event-ID {raw!r} is not a {kind} cursor")
    if not number.isdigit() or len(number) > 18:
        raise MalformedRequest(f"Last-Event-ID must be '{kind}:<version>', not {raw!r}")
    return int(number)


def encode(event: Event) -> bytes:
    data = {
        **event.view,
        "channel": event.channel,
        "op": event.op,
        "version": event.version,
        "at": rfc3339(event.at),
    }
    return b"id: %s:%d\nevent: %s\ndata: %s\n\n" % (
        event.kind.encode(),
        event.version,
        event.kind.encode(),
        orjson.dumps(data),
    )


class StreamServer:
    def __init__(self, hub: Source, max_streams: int, heartbeat_s: float) -> None:
        self.hub = hub
        self.max_streams = max_streams
        self.heartbeat_s = heartbeat_s
        self.open = 0
        self.sent = 0

    async def serve(
        self, scope: Scope, receive: Any, send: Any, kind: Kind, params: dict[str, str]
    ) -> None:
        try:
            ident = v.identifier(params[kind.ident], kind.ident)
            last = self._cursor(scope, kind.name)
            if self.open >= self.max_streams:
                raise Overloaded(f"{self.open} streams are already open on this process")
            sub = await self._subscribe(kind.key(ident))
        except GridError as err:
            await self._refuse(send, err, scope["path"])
            return
        self.open += 1
        try:
            await self._stream(sub, last, receive, send)
        finally:
            self.open -= 1
            self.hub.unsubscribe(sub)

    def _cursor(self, scope: Scope, kind: str) -> int:
        for name, value in scope["headers"]:
            if name == b"last-event-id":
                return parse_cursor(value.decode("latin-1"), kind)
        query = urllib.parse.parse_qs(scope.get("query_string", b"").decode("latin-1"))
        if "last_event_id" in query:
            return parse_cursor(query["last_event_id"][0], kind)
        return -1

    async def _subscribe(self, key: str) -> Subscription:
        try:
            return await self.hub.subscribe(key)
        except GridError:
            raise
        except Exception as e:
            raise Unavailable(f"the owner of {key} cannot be reached ({type(e).__name__})") from e

    async def _refuse(self, send: Any, err: GridError, instance: str) -> None:
        status, body, headers = error_response(err, instance)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _stream(self, sub: Subscription, last: int, receive: Any, send: Any) -> None:
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
        sub.last = last
        if last >= 0:
            await self._catch_up(sub, send, None)
        gone = asyncio.ensure_future(_disconnected(receive))
        try:
            while not gone.done() and not sub.overflowed:
                getter = asyncio.ensure_future(sub.queue.get())
                done, _ = await asyncio.wait(
                    {getter, gone}, timeout=self.heartbeat_s, return_when=asyncio.FIRST_COMPLETED
                )
                if getter not in done:
                    getter.cancel()
                    if not gone.done():
                        await send({"type": "http.response.body", "body": b": heartbeat\n\n",
                                    "more_body": True})  # fmt: skip
                    continue
                event = getter.result()
                if event.version <= sub.last:
                    continue  # already sent (history and live overlap)
                if sub.last >= 0 and event.version > sub.last + 1:
                    await self._catch_up(sub, send, event.version)
                await self._send_event(sub, send, event)
            if sub.overflowed:  # end the response cleanly: the client resumes from its cursor
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            gone.cancel()

    async def _catch_up(self, sub: Subscription, send: Any, before: int | None) -> None:
        """Send what the owner has after ``sub.last`` (and before ``before``, if given)."""
        try:
            history = await self.hub.since(sub.key, sub.last)
        except Exception:
            return  # the owner is away: the next event or the renewal tries again
        for event in history:
            if before is not None and event.version >= before:
                break
            if event.version > sub.last:
                await self._send_event(sub, send, event)

    async def _send_event(self, sub: Subscription, send: Any, event: Event) -> None:
        await send({"type": "http.response.body", "body": encode(event), "more_body": True})
        sub.last = event.version
        self.sent += 1


async def _disconnected(receive: Any) -> None:
    with contextlib.suppress(Exception):
        while (await receive())["type"] != "http.disconnect":
            pass
