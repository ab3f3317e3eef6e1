"""Server-Sent Events: one entity's changes, live, resumable, on any grid process.

Each entity kind may declare a stream route (``GET /v1/streams/users/{uid}``
streams the user's cart as ``event: cart``, ``GET /v1/streams/skus/{sku}``
the SKU's stock as ``event: stock``). Each event's ``id`` is the stream's
position in every kind it watches, ``cart:3,member:7`` (a kind still at version
0 is left out), its ``data`` the entity's new view plus ``channel``, ``op``,
``version`` and ``at``; a kind that declares ``live_views`` (a cart: its lines'
availability and prices, and the subtotal) has them read as the events are
sent, for the reading channel (``X-Channel``), one read per batch of events.

A stream learns where each of its keys stands as it opens, so its first
event's id already names the versions of the kinds that have not changed
since. A client that comes back with ``Last-Event-ID`` (the header browsers
send, or the query parameter ``last_event_id``) first gets every change after
that position, from the owner's history (the store's event log and the journal
not yet stored), then the live ones: no gap, no duplicate. A kind the cursor
does not name is taken from version 0 (its whole history, up to the owner's
limit): a cursor of an older stream names only the kinds it had sent. Versions
grow by one per change, so a stream that sees a jump asks the owner for what is
between before it goes on.

A comment line every ``heartbeat_s`` keeps idle streams open through proxies.
A stream whose reader falls 10,000 events behind is ended; its client resumes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import urllib.parse
from collections.abc import Awaitable, Callable, MutableMapping
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
LiveViews = Callable[[Grid, list[dict[str, Any]], str], Awaitable[list[dict[str, Any]]]]
log = logging.getLogger("omnigrid.streams")
BATCH = 256  # queued events a stream takes at once (one live read for all of them)


class Subscription:
    """One stream's interest in one key; a stream of several kinds shares one inbox."""

    def __init__(self, key: str, queue: asyncio.Queue[Event] | None = None) -> None:
        self.key = key
        self.queue: asyncio.Queue[Event] = queue if queue is not None else asyncio.Queue()
        self.last = -1  # the last version this stream has sent (-1: none yet)
        # the version the key stood at when the stream opened (its owner's
        # hub says; -1: not known): every later one reaches the queue
        self.base = -1
        self.overflowed = False

    @property
    def position(self) -> int:
        """Where the stream stands in this key: sent, else where it opened (-1: unknown)."""
        return self.last if self.last >= 0 else self.base


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


def encode(event: Event, cursor: str, view: dict[str, Any] | None = None) -> bytes:
    """One SSE event; ``view`` is what to show of the change if not ``event.view``."""
    kind = kind_named(event.kind)
    data = {
        **(event.view if view is None else view),
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
            channel = _channel(scope)
            if self.closing.is_set():
                raise Unavailable("this grid process is stopping; reconnect")
            if self.open >= self.max_streams:
                raise Overloaded(f"{self.open} streams are already open on this process")
            inbox: asyncio.Queue[Event] = asyncio.Queue()
            for kind in kinds:
                sub = await self._subscribe(kind.key(ident), inbox)
                if cursor:  # a resume: a kind it does not name has sent nothing yet
                    sub.last = cursor.get(kind.name, 0)
                subs.append(sub)
        except GridError as err:
            for sub in subs:
                self.hub.unsubscribe(sub)
            await self._refuse(send, err, scope["path"])
            return
        self.open += 1
        try:
            await self._stream(subs, inbox, receive, send, channel)
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
        self,
        subs: list[Subscription],
        inbox: asyncio.Queue[Event],
        receive: Any,
        send: Any,
        channel: str,
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
                await self._catch_up(subs, sub, send, None, channel)
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
                batch = [getter.result()]
                while len(batch) < BATCH and not inbox.empty():
                    batch.append(inbox.get_nowait())
                # not sent already (history and live overlap), nor from before it opened
                batch = [e for e in batch if e.version > by_key[e.key].position]
                views = await self._views(batch, channel)
                for event, view in zip(batch, views, strict=True):
                    sub = by_key[event.key]
                    if event.version <= sub.position:
                        continue  # sent by a catch-up since
                    if sub.position >= 0 and event.version > sub.position + 1:
                        await self._catch_up(subs, sub, send, event.version, channel)
                    await self._send_event(subs, sub, send, event, view)
                    if self.on_delivered is not None:  # live, not history caught up on
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
        self,
        subs: list[Subscription],
        sub: Subscription,
        send: Any,
        before: int | None,
        channel: str,
    ) -> None:
        """Send what the owner has after the stream's position in ``sub``'s key (and
        before ``before``, if given)."""
        after = sub.position
        try:
            history = await self.hub.since(sub.key, after)
        except Exception:
            return  # the owner is away: the next event or the renewal tries again
        history = [
            e for e in history if e.version > after and (before is None or e.version < before)
        ]
        views = await self._views(history, channel)
        for event, view in zip(history, views, strict=True):
            if event.version > sub.position:
                await self._send_event(subs, sub, send, event, view)

    async def _views(self, events: list[Event], channel: str) -> list[dict[str, Any] | None]:
        """What to show of each event when its kind reads more live (``Kind.live_views``):
        one read per kind for all of them. ``None``: the event's own view."""
        out: list[dict[str, Any] | None] = [None] * len(events)
        if self.grid is None:
            return out
        per_kind: dict[str, tuple[LiveViews, list[int]]] = {}
        for i, event in enumerate(events):
            kind = kind_named(event.kind)
            if kind is not None and kind.live_views is not None:
                per_kind.setdefault(event.kind, (kind.live_views, []))[1].append(i)
        for name, (live_views, at) in per_kind.items():
            try:
                views = await live_views(self.grid, [events[i].view for i in at], channel)
            except Exception as e:  # their owners are away: the change itself, still
                log.debug("live views of %s events cannot be read: %r", name, e)
                continue
            for i, view in zip(at, views, strict=True):
                out[i] = view
        return out

    async def _send_event(
        self,
        subs: list[Subscription],
        sub: Subscription,
        send: Any,
        event: Event,
        view: dict[str, Any] | None = None,
    ) -> None:
        sub.last = event.version
        # The id is the whole stream's position in every kind, the ones it has not
        # sent at the version they opened at: a resume from it misses nothing.
        cursor = ",".join(f"{s.key.partition(':')[0]}:{s.position}" for s in subs if s.position > 0)
        body = encode(event, cursor, view)
        await send({"type": "http.response.body", "body": body, "more_body": True})
        self.sent += 1


def _channel(scope: Scope) -> str:
    """The reading channel (``X-Channel``): the prices a live view shows are its."""
    for name, value in scope["headers"]:
        if name == b"x-channel":
            return str(value.decode("latin-1"))[:64]
    return "none"


async def _disconnected(receive: Any) -> None:
    with contextlib.suppress(Exception):
        while (await receive())["type"] != "http.disconnect":
            pass
