"""Every committed change, to every open stream on every grid process.

Each process has one ``EventHub``. Its streams subscribe to entity keys. The
owner of a key publishes that key's events once they are journaled:

- to its own streams directly (a queue per stream, in-process fan-out);
- to each other process that has a stream on the key: one ``hub.publish``
  command per process per batch, over the peer link the grid already keeps
  between processes (Unix socket or TCP). Ten thousand streams on a process
  cost the owner one message per batch, not one per stream per event.

A process tells an owner what it watches with ``hub.watch`` (keys and the last
version it has seen of each), renewed every ``WATCH_REFRESH_S``; the owner
forgets interest not renewed within ``WATCH_TTL_S``. The renewal answers with
any events the watcher missed (say the owner restarted and lost its interest
table), so a stream has no gap, only a delay. History (``since``) comes from
the owner: the store's event log plus the journaled events not stored yet.

A new subscription also learns where its key stands (``Subscription.base``):
the last version the owner has published, read in the same turn the interest
is noted, so every later version reaches the stream. A stream's cursor names
it from the first event on, so a resume misses nothing of a kind that has not
changed since the stream opened.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from omnigrid.actors.protocol import Command, Result
from omnigrid.actors.shard import Shard
from omnigrid.actors.slots import SlotMap
from omnigrid.api.http.streams import Subscription
from omnigrid.api.runtime.peers import PeerLink
from omnigrid.persistence.events import Event
from omnigrid.persistence.store import Store

log = logging.getLogger("omnigrid.hub")

WATCH_REFRESH_S = 5.0
WATCH_TTL_S = 20.0
HISTORY_LIMIT = 10_000  # events a resume replays at most in one go
HUB_OPS = frozenset({"hub.watch", "hub.publish", "hub.since"})
# Events waiting for one slow stream before it is cut: the client comes back
# with Last-Event-ID and catches up from history, instead of this process
# holding an unbounded queue for a reader that does not read.
MAX_QUEUED = 10_000


def stream_wire(event: Event) -> list[Any]:
    return [event.kind, event.key, event.version, event.channel, event.op, event.at, event.view]


def from_stream_wire(wire: list[Any]) -> Event:
    return Event(*wire[:7])


class EventHub:
    def __init__(
        self,
        shard: Shard,
        store: Store,
        links: dict[int, PeerLink],
        slot_map: Callable[[], SlotMap],
    ) -> None:
        self.shard = shard
        self.store = store
        self.links = links
        self.slot_map = slot_map
        self.local: dict[str, set[Subscription]] = {}
        self.remote: dict[str, dict[int, float]] = {}  # key -> {process: interest expiry}
        self.published = 0
        self.delivered = 0

    # -- the owner's side --------------------------------------------------------

    def on_journaled(self, events: list[Event]) -> None:
        """The shard journaled these: hand them to every stream that watches their keys."""
        self.deliver(events)
        if not self.remote:
            return
        now = time.monotonic()
        per_peer: dict[int, list[list[Any]]] = {}
        for event in events:
            peers = self.remote.get(event.key)
            if not peers:
                continue
            wire = stream_wire(event)  # once, however many processes watch the key
            for peer, expires in list(peers.items()):
                if expires < now:
                    del peers[peer]
                    continue
                per_peer.setdefault(peer, []).append(wire)
            if not peers:
                del self.remote[event.key]
        for peer, wires in per_peer.items():
            link = self.links.get(peer)
            if link is None:
                continue
            self.published += 1
            with contextlib.suppress(Exception):  # a full or dead link: resumes fill the gap
                fut = link.call(Command("hub.publish", "", {"events": wires}))
                fut.add_done_callback(_ignore)

    def watched_by(self, peer: int, keys: dict[str, int]) -> list[list[Any]]:
        """``hub.watch``: note a process's interest; answer what it has not seen."""
        expires = time.monotonic() + WATCH_TTL_S
        missed: list[list[Any]] = []
        for key, last in keys.items():
            self.remote.setdefault(key, {})[peer] = expires
            if last >= 0:
                missed += [stream_wire(e) for e in self.history(key, last)]
        return missed

    def opened_at(self, key: str) -> int:
        """The last version of ``key`` its streams have been told of (0: none yet; -1:
        not known here). Every later version is published after this call: the
        changes of the current turn are not journaled yet and are not counted."""
        if not self.shard.owns(key):
            return -1
        try:
            entity = self.shard._entity(key)  # from memory, or the store once passivated
        except Exception as e:  # the store may be down: the stream opens all the same
            log.debug("the version of %s cannot be read: %r", key, e)
            return -1
        if entity is None:
            return 0
        waiting = sum(1 for e in self.shard.commit.unjournaled if e.key == key)
        return max(entity.version - waiting, 0)

    def history(self, key: str, after: int) -> list[Event]:
        """Events of ``key`` after version ``after``: the event log, then the unstored events."""
        events = self.store.events_since(key, after, HISTORY_LIMIT)
        last = events[-1].version if events else after
        pending = [e for _, e in self.shard.backlog.unstored if e.key == key and e.version > last]
        return events + pending

    def serve(self, cmd: Command) -> Result:
        """A hub command from another process."""
        try:
            if cmd.op == "hub.publish":
                self.deliver([from_stream_wire(w) for w in cmd.args["events"]])
                return Result(200, None)
            if cmd.op == "hub.watch":
                missed = self.watched_by(cmd.args["peer"], cmd.args["keys"])
                if cmd.args.get("opened"):  # a new stream: where each key stands, too
                    versions = {key: self.opened_at(key) for key in cmd.args["keys"]}
                    return Result(200, {"missed": missed, "versions": versions})
                return Result(200, missed)
            if cmd.op == "hub.since":
                events = self.history(cmd.key, cmd.args["after"])
                return Result(200, [stream_wire(e) for e in events])
        except Exception as e:  # the store may be down: the watcher retries
            log.warning("a stream's history cannot be read: %r", e)
            return Result(503, None, "unavailable", "the history cannot be read right now")
        return Result(422, None, "invalid_request", f"{cmd.op!r} is not a hub operation")

    # -- the watcher's side --------------------------------------------------------

    def deliver(self, events: list[Event]) -> None:
        for event in events:
            subs = self.local.get(event.key)
            if subs:
                for sub in subs:
                    if sub.queue.qsize() >= MAX_QUEUED:
                        sub.overflowed = True
                        continue
                    sub.queue.put_nowait(event)
                    self.delivered += 1

    async def subscribe(self, key: str, queue: asyncio.Queue[Event] | None = None) -> Subscription:
        """A stream's interest in ``key``; its events go to ``queue`` (a stream of
        several kinds gives each of its keys the same one)."""
        sub = Subscription(key, queue)
        self.local.setdefault(key, set()).add(sub)
        owner = self.slot_map().owner(key)
        if owner != self.shard.shard_id:
            versions = await self._watch(owner, {key: -1}, opened=True)
            sub.base = versions.get(key, -1)
        else:  # noted above in this same turn: every later version reaches the queue
            sub.base = self.opened_at(key)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        subs = self.local.get(sub.key)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self.local[sub.key]

    async def since(self, key: str, after: int) -> list[Event]:
        """History of a key from its owner (raises Unavailable if the owner cannot answer)."""
        owner = self.slot_map().owner(key)
        if owner == self.shard.shard_id:
            return await asyncio.to_thread(self.history, key, after)
        result = await self.links[owner].call(Command("hub.since", key, {"after": after}))
        if result.status != 200:
            raise RuntimeError(result.detail or "history is unavailable")
        return [from_stream_wire(w) for w in result.body]

    async def _watch(
        self, owner: int, keys: dict[str, int], opened: bool = False
    ) -> dict[str, int]:
        """Note interest in ``keys`` with their owner and take what was missed; with
        ``opened``, also where each key stands (an owner that cannot say: none)."""
        link = self.links.get(owner)
        if link is None:
            return {}
        args: dict[str, Any] = {"peer": self.shard.shard_id, "keys": keys}
        if opened:
            args["opened"] = True
        result = await link.call(Command("hub.watch", "", args))
        if result.status != 200 or not result.body:
            return {}
        body = result.body
        versions: dict[str, int] = {}
        if isinstance(body, dict):
            versions = {k: v for k, v in body.get("versions", {}).items() if isinstance(v, int)}
            body = body.get("missed") or []
        if body:
            self.deliver([from_stream_wire(w) for w in body])
        return versions

    async def refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(WATCH_REFRESH_S)
            await self.refresh()

    async def refresh(self) -> None:
        """Renew this process's interest with every owner, and pick up what was missed
        (also at once when slots moved: their streams go on from their new owner)."""
        per_owner: dict[int, dict[str, int]] = {}
        slot_map = self.slot_map()
        for key, subs in self.local.items():
            owner = slot_map.owner(key)
            if owner != self.shard.shard_id:
                seen = [sub.last for sub in subs if sub.last >= 0]
                per_owner.setdefault(owner, {})[key] = min(seen, default=-1)
        for owner, keys in per_owner.items():
            try:
                await self._watch(owner, keys)
            except Exception as e:
                log.debug("renewing stream interest with shard %d: %r", owner, e)


def _ignore(fut: asyncio.Future[Result]) -> None:
    if not fut.cancelled():
        fut.exception()  # retrieved, so asyncio does not log it
