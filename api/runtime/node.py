"""One grid process: a shard, its HTTP gateway and its peer listener.

Every process is both an owner of entities and a gateway (the shape Orleans
silos and Akka cluster members have): HTTP requests land on any process (one
port shared with SO_REUSEPORT), run in place when this process owns the key
and travel in micro-batches to the owner when it does not.

``ShardProcess`` (api/runtime/process.py) is the class Ray runs as an actor. Ray
re-runs its constructor when the process dies, so the constructor starts
everything: a thread with its own event loop that serves HTTP, the peer
stream and the shard's timed work. Ray's own calls (peer_address, info, metrics_text, audit, stop)
reach that loop through ``run_coroutine_threadsafe``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import tempfile
import time
from collections.abc import Coroutine
from typing import Any, Protocol, TypeVar

import uvicorn

from omnigrid.actors.errors import GridError
from omnigrid.actors.kinds import kinds, split_key
from omnigrid.actors.protocol import Command, Result
from omnigrid.actors.residency import pack_state
from omnigrid.actors.shard import Shard
from omnigrid.actors.slots import SlotMap
from omnigrid.api.http.app import GridApp
from omnigrid.api.http.behaviour import BehaviourEndpoints
from omnigrid.api.http.cluster_jobs import ClusterEndpoints
from omnigrid.api.http.metrics import GridMetrics, merge_expositions
from omnigrid.api.http.nonce_claim import REPLAYED
from omnigrid.api.http.openapi import docs_app
from omnigrid.api.http.routes import all_routes
from omnigrid.api.http.streams import StreamServer
from omnigrid.api.http.sync_stats import SilentSyncStats
from omnigrid.api.http.webhooks import WebhookEndpoints
from omnigrid.api.runtime.front import front_socket, front_socket_path
from omnigrid.api.runtime.guarded_http import Bounds
from omnigrid.api.runtime.hub import HUB_OPS, EventHub
from omnigrid.api.runtime.node_gauges import add_node_gauges
from omnigrid.api.runtime.node_keys import NONCE_OP, NodeKeys
from omnigrid.api.runtime.node_watch import DELIVERIES_OP, NodeWatch
from omnigrid.api.runtime.peers import PeerAddress, PeerLink, serve_connection
from omnigrid.api.runtime.rebalance import Handover, Rebalancer, Shards
from omnigrid.api.runtime.router import Router
from omnigrid.api.runtime.settings import Settings
from omnigrid.api.runtime.stall_watch import StallWatch
from omnigrid.api.runtime.webhook_sender import WebhookSender
from omnigrid.persistence.behaviour import BehaviourLog
from omnigrid.persistence.cluster_state import ClusterState
from omnigrid.persistence.db import Database
from omnigrid.persistence.hot_copy import HotCopy
from omnigrid.persistence.journal import Journal, JournalUnavailable
from omnigrid.persistence.request_keys import RequestKeys
from omnigrid.persistence.store import Store
from omnigrid.persistence.webhooks import WebhookStore
from omnigrid.persistence.writebehind import WriteBehind

log = logging.getLogger("omnigrid.node")
T = TypeVar("T")

TICK_S = 0.1  # how often due reservations are expired
ASYNC_FLUSH_S = 0.005  # async durability: how often acknowledged changes go to the journal
CONTROL_TIMEOUT_S = 3.0
# /readyz and /metrics ask every process; one that does not answer by then is
# reported missing, so health answers within a second during any outage.
HEALTH_TIMEOUT_S = 0.4
HEAL_EVERY_S = 0.1  # how often a broken journal's settle is looked at
REPLAYED_OP = "auth.replayed"  # a command whose nonce was seen: refused, not applied
NONCE_AT = 7  # the wire index of a command's nonce (actors/protocol.py)
SIDE_OPS = HUB_OPS | {NONCE_OP, DELIVERIES_OP, REPLAYED_OP}
# how often woken entities' work (unfinished sagas, an expired order's releases) is
# started: soon after it falls due, so an order shown expired has given back its holds
RESUME_EVERY_S = 0.05
AUDIT_TIMEOUT_S = 600.0
AUDIT_CHUNK = 2_000


class Directory(Shards, Protocol):
    """How a process finds, asks, starts and stops the other shards (Ray, in a real
    grid: api/runtime/cluster.py)."""

    async def address(self, shard_id: int) -> PeerAddress: ...


class GridNode:
    """One process's parts, wired; its constructor opens nothing (``open_node`` does)."""

    def __init__(
        self,
        settings: Settings,
        directory: Directory,
        node_id: str,
        journal: Journal,
        store: Store,
        shard: Shard,
        recovery_s: float,
        server_secret: bytes = b"",
    ) -> None:
        shard_id = shard.shard_id
        self.shard_id = shard_id
        self.settings = settings
        self.directory = directory
        self.node_id = node_id
        self.journal = journal
        self.store = store
        self.shard = shard
        self.shard.commit.heals_inline = False  # settled from a worker thread: see _heal_journal
        self.recovery_s = recovery_s
        self.metrics = GridMetrics(shard_id)
        self.writebehind = WriteBehind(
            self.shard,
            self.store,
            settings.writebehind_interval_s,
            settings.writebehind_batch,
            self.metrics.observe_writebehind_lag,
        )
        self.hot_copy = (
            HotCopy(
                settings.redis_url,
                settings.namespace,
                settings.writebehind_interval_s,
                settings.writebehind_batch,
            )
            if settings.redis_url
            else None
        )
        if self.hot_copy is not None:
            self.writebehind.on_stored = self.hot_copy.offer
        # every other shard of the map; grows and shrinks with it (_map_seen)
        self.links: dict[int, PeerLink] = {}
        self._link_to(shard.slot_map.shard_count)
        database = database_for(settings)
        webhooks = WebhookStore(database)
        self.webhook_sender = WebhookSender(
            shard_id,
            webhooks,
            settings.webhook_max_attempts,
            settings.webhook_backoff_s,
            settings.webhook_timeout_s,
        )
        self.writebehind.webhooks = self.webhook_sender.webhooks
        self.writebehind.quiet_ops = frozenset(
            op.name for kind in kinds() for op in kind.ops if op.quiet
        )
        self.writebehind.shard_id = shard_id
        self.router = Router(self.shard, self.links)
        self.router.on_new_map = self._map_seen
        self.cluster_state = ClusterState(database, settings.namespace)
        self.handover = Handover(shard, self.writebehind, store, self.router, self.cluster_state)
        self.rebalancer = (
            Rebalancer(
                shard_id,
                self.handover,
                directory,
                self.cluster_state,
                settings.stop_timeout_s,
                settings.migration_chunk_slots,
            )
            if shard_id == 0
            else None
        )
        self.hub = EventHub(self.shard, self.store, self.links, lambda: self.router.slot_map)
        self.shard.commit.on_journaled = self.hub.on_journaled
        self.streams = StreamServer(
            self.hub, settings.max_streams, settings.stream_heartbeat_s, self.router
        )
        # Keys: every process holds them all and checks signatures itself (api/http/auth.py).
        self.keys = NodeKeys(
            database,
            server_secret or os.urandom(32),
            settings.bootstrap_key,
            shard_id,
            lambda key: self.router.slot_map.owner(key),
            self.links,
            self._ask_all,
            # beyond loopback (and not --insecure) keys are never off, even with none left
            always_on=not settings.serves_only_loopback() and not settings.insecure,
        )
        self.router.first_use = self.keys.nonces.first_use_token
        self.router.nonce_check = self.keys.first_use
        channels = frozenset(settings.channels)
        self.watch = NodeWatch(
            database,
            shard_id,
            self.metrics,
            lambda m: self._ask_all(m, HEALTH_TIMEOUT_S),
            self.links,
            settings.sync_log_retention_s,
            channels,
        )
        routes = all_routes(
            WebhookEndpoints(webhooks),
            BehaviourEndpoints(BehaviourLog(database), channels),
            self.keys.endpoints,
            self.watch.endpoints,
            ClusterEndpoints(self.start_job, self.read_job),
            RequestKeys(database),
        )
        self.app = GridApp(
            self.router,
            routes,
            self,
            self.metrics,
            channels,
            docs_app(routes),
            settings.max_inflight,
            self.streams,
            self.keys.guard,
        )
        if settings.sync_monitoring:
            self.app.sync_stats = self.watch.stats
            self.streams.on_delivered = self.watch.delivered
            self.webhook_sender.on_delivered = self.watch.delivered
        else:
            self.app.sync_stats = SilentSyncStats()
        add_node_gauges(self)
        self.unix_path = os.path.join(
            tempfile.gettempdir(), f"omnigrid-{settings.port}-{os.getpid()}-shard{shard_id}.sock"
        )
        self.bounds = Bounds(
            settings.header_timeout_s, settings.max_client_connections, settings.trusted_clients
        )
        self.tcp_port = 0
        # where peers on other nodes dial this process (the node's address when the
        # listeners take every interface: api/runtime/process.py)
        self.peer_host = settings.host
        self._servers: list[asyncio.AbstractServer] = []
        self._http: uvicorn.Server | None = None
        self._http_task: asyncio.Task[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        # one-off tasks (a stream refresh, a link closing): held until done, since the
        # loop keeps only a weak reference
        self._background: set[asyncio.Task[None]] = set()

    # -- life cycle ----------------------------------------------------------

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.unix_path)
        self._servers.append(await asyncio.start_unix_server(self._serve_peer, self.unix_path))
        tcp = await asyncio.start_server(self._serve_peer, self.settings.host, 0)
        self.tcp_port = tcp.sockets[0].getsockname()[1]
        self._servers.append(tcp)
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._tick()))
        self._tasks.append(loop.create_task(self._heal_journal()))
        self._tasks.append(loop.create_task(self._resume_woken()))
        self._tasks.append(loop.create_task(self.writebehind.run()))
        if self.hot_copy is not None:
            self._tasks.append(loop.create_task(self.hot_copy.run()))
        self._tasks.append(loop.create_task(self.hub.refresh_forever()))
        self._tasks.append(loop.create_task(self.webhook_sender.run()))
        self._tasks.append(loop.create_task(self.keys.reload_forever()))
        if self.settings.sync_monitoring:
            self._tasks.append(loop.create_task(self.watch.evaluate_forever()))
        if self.shard_id == 0:
            self._tasks.append(loop.create_task(self.watch.prune_forever()))
        if self.rebalancer is not None:
            self._tasks.append(loop.create_task(self.rebalancer.fail_stale_jobs()))
        if self.settings.durability == "async":
            self._tasks.append(loop.create_task(self._flush_behind()))
        if self.settings.stall_watch_ms > 0:
            self.stall_watch = StallWatch(self.shard_id, self.settings.stall_watch_ms / 1000)
            self._tasks.append(loop.create_task(self.stall_watch.run()))
        config = uvicorn.Config(
            self.app,
            loop="none",
            http=self.bounds.protocol(),
            lifespan="off",
            access_log=False,
            log_level=self.settings.log_level,
            timeout_keep_alive=self.settings.keepalive_s,
            server_header=False,
            date_header=False,
            # nothing reads the client's address or scheme from the scope, so the
            # X-Forwarded-* rewrite would only be one more coroutine per request
            proxy_headers=False,
            ssl_certfile=self.settings.tls_certfile or None,
            ssl_keyfile=self.settings.tls_keyfile or None,
            # a stop lets the requests in flight finish, for half its time at most
            timeout_graceful_shutdown=max(1, round(self.settings.stop_timeout_s / 2)),
        )
        self._http = uvicorn.Server(config)
        # More ports than one let a single client machine open more than the
        # ~28,000 connections one source address can hold to one address and port.
        if self.settings.front:
            # the front holds the port and sends each request to its owner here
            socks = [front_socket(front_socket_path(self.settings.port, self.shard_id))]
        else:
            ports = [self.settings.port, *self.settings.extra_port_list()]
            socks = [http_socket(self.settings.host, port) for port in ports]
        self._http_task = asyncio.get_running_loop().create_task(self._http.serve(socks))
        self._tasks.append(self._http_task)
        while not self._http.started:
            await asyncio.sleep(0.01)

    async def stop(self, budget_s: float) -> dict[str, Any]:
        """Stop cleanly within ``budget_s``: end the streams (with a retry hint), take
        no new connection, let the requests in flight finish, store every journaled
        change, close what this process opened. What it did, for the operator."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + budget_s
        streams = self.streams.close_all()
        if self._http is not None and self._http_task is not None:
            self._http.should_exit = True
            with contextlib.suppress(Exception):  # in-flight requests finish first
                await asyncio.wait_for(
                    asyncio.shield(self._http_task), max(0.1, (deadline - loop.time()) / 2)
                )
        # A clean stop leaves the store complete and the journal trimmed.
        unstored = self.shard.unstored_count()
        stored = False
        with contextlib.suppress(Exception):
            stored = await asyncio.wait_for(
                self.writebehind.drain_all(force=True), max(0.1, deadline - loop.time() - 0.5)
            )
        report = {
            "shard": self.shard_id,
            "streams_closed": streams,
            "changes_stored": unstored - self.shard.unstored_count(),
            "left_in_journal": self.shard.unstored_count(),  # replayed on the next start
            "store_complete": stored,
        }
        if self.hot_copy is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.hot_copy.copy(), 1.0)
        for server in self._servers:
            server.close()
        for link in self.links.values():
            await link.close()
        for task in self._tasks:
            task.cancel()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.unix_path)
        if self.settings.front:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(front_socket_path(self.settings.port, self.shard_id))
        return report

    def address(self) -> PeerAddress:
        return PeerAddress(self.node_id, self.unix_path, self.peer_host, self.tcp_port)

    # -- the slot map: links to every shard it names (api/runtime/rebalance.py) --

    def _link_to(self, shard_count: int) -> None:
        """A link to each other shard below ``shard_count``; those past it closed."""
        for peer in range(shard_count):
            if peer != self.shard_id and peer not in self.links:
                self.links[peer] = PeerLink(
                    peer,
                    lambda peer=peer: self.directory.address(peer),  # type: ignore[misc]
                    self.node_id,
                    self.settings.max_pending,
                    self.settings.peer_timeout_s,
                    self.metrics.forwarded,
                )
        for peer in [p for p in self.links if p >= shard_count]:
            self._in_background(self.links.pop(peer).close())

    def _map_seen(self, slot_map: SlotMap) -> None:
        """The router adopted a newer map: link to its shards; the shard takes it too
        unless it gives the shard slots, which only a hand-over's take_in loads."""
        self._link_to(slot_map.shard_count)
        me, old = self.shard_id, self.shard.slot_map.owners
        if not any(o == me and old[s] != me for s, o in enumerate(slot_map.owners)):
            self.shard.assign(slot_map)
        self._in_background(self.hub.refresh())

    def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def start_job(
        self, what: str, shards: int | None, node: str | None = None
    ) -> dict[str, Any]:
        """A scale, rebalance or drain job, run by shard 0's process wherever it was asked."""
        if self.rebalancer is not None:
            return await self.rebalancer.start(what, shards, node)
        answer: dict[str, Any] = await self.directory.control(0, "start_job", what, shards, node)
        if "refused" in answer:
            raise GridError(answer["refused"], answer["detail"])
        return answer

    async def read_job(self, job_id: str) -> dict[str, Any] | None:
        return await asyncio.to_thread(self.cluster_state.job, job_id)

    async def _serve_peer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await serve_connection(reader, writer, self._apply_wire_batch)

    def _apply_wire_batch(self, batch: list[Any]) -> list[Any]:
        self.metrics.served_batch_size.labels(self.metrics.shard).observe(len(batch))
        commands = [Command.from_wire(w) for w in batch]
        if any(len(w) > NONCE_AT for w in batch):
            commands = self._check_nonces(commands)
        if not any(cmd.op in SIDE_OPS for cmd in commands):
            return [r.to_wire() for r in self.shard.apply_batch(commands)]
        # Stream traffic and nonce checks ride the same frames; the shard sees only its
        # commands.
        grid = [cmd for cmd in commands if cmd.op not in SIDE_OPS]
        answers = iter(self.shard.apply_batch(grid))
        return [
            (self._serve_side(cmd) if cmd.op in SIDE_OPS else next(answers)).to_wire()
            for cmd in commands
        ]

    def _check_nonces(self, commands: list[Command]) -> list[Command]:
        """A command carrying a signed request's nonce runs only if the nonce is new
        here (its entity's owner: api/http/nonce_claim.py); a replay's becomes a
        refusal, and no nonce goes on to the shard (nor its journal)."""
        checked = []
        for cmd in commands:
            if cmd.nonce is not None:  # just decoded: this process's own to change
                fresh = self.keys.nonces.first_use_token(cmd.nonce)
                cmd.nonce = None
                if not fresh:
                    cmd = Command(REPLAYED_OP, cmd.key)
            checked.append(cmd)
        return checked

    def _serve_side(self, cmd: Command) -> Result:
        if cmd.op == REPLAYED_OP:
            return Result(401, None, "unauthenticated", REPLAYED)
        if cmd.op == NONCE_OP:
            return self.keys.serve_nonce(cmd)
        if cmd.op == DELIVERIES_OP:
            return self.watch.serve_deliveries(cmd)
        return self.hub.serve(cmd)

    # -- keys and sync monitoring (api/runtime/node_keys.py, node_watch.py) --------

    async def reload_keys(self) -> None:
        await self.keys.reload()

    def sync_window(self, window_s: int) -> dict[str, Any]:
        return self.watch.window(window_s)

    async def _tick(self) -> None:
        while True:
            try:
                self.shard.tick()
                more = self.shard.due()
            except Exception:
                log.exception("timed work failed on shard %d", self.shard_id)
                more = False
            # With more due, only let waiting requests run first.
            await asyncio.sleep(0 if more else TICK_S)

    async def _heal_journal(self) -> None:
        """Settle a broken journal off the event loop, so a stalled Redis or a
        locked file never holds requests, reads and health checks up."""
        commit = self.shard.commit
        while True:
            await asyncio.sleep(HEAL_EVERY_S)
            if commit.ok() or time.monotonic() < commit.retry_at:
                continue
            try:
                head = await asyncio.to_thread(self.journal.settle, commit.doubtful)
            except JournalUnavailable as e:
                commit.heal_failed(e)
            except Exception:
                log.exception("settling the journal of shard %d failed", self.shard_id)
            else:
                commit.healed(head)

    async def _resume_woken(self) -> None:
        """Run the work entities of this shard asked for (Kind.resume: a saga to finish)."""
        running: set[str] = set()
        while True:
            await asyncio.sleep(RESUME_EVERY_S)
            woken, self.shard.woken = self.shard.woken, []
            for key in dict.fromkeys(woken):
                kind, ident = split_key(key)
                if kind is None or kind.resume is None or key in running:
                    continue
                running.add(key)
                task = asyncio.ensure_future(kind.resume(self.router, ident))
                task.add_done_callback(lambda t, key=key: self._resumed(running, key, t))  # type: ignore[misc]

    def _resumed(self, running: set[str], key: str, task: asyncio.Task[Any]) -> None:
        running.discard(key)
        if not task.cancelled() and task.exception() is not None:
            log.warning("resuming %s failed (tried again later): %r", key, task.exception())

    async def _flush_behind(self) -> None:
        """Async durability: acknowledged changes reach the journal within ASYNC_FLUSH_S."""
        while True:
            await asyncio.sleep(ASYNC_FLUSH_S)
            self.shard.commit.flush()

    # -- operations (what GridApp asks) ---------------------------------------

    def info(self) -> dict[str, Any]:
        return {
            "shard": self.shard_id,
            "pid": os.getpid(),
            "node_id": self.node_id,
            "slot_map_version": self.shard.slot_map.version,
            "slot_ranges": self.shard.slot_map.ranges(self.shard_id),
            "frozen_slots": len(self.shard.frozen),
            "entities": self.shard.entity_counts(),
            "passivated": len(self.shard.residency.cold),
            "inflight_requests": self.app.inflight,
            "journal_ok": self.shard.journal_ok(),
            "store_failing_s": (
                None
                if self.writebehind.failing_since is None
                else round(time.monotonic() - self.writebehind.failing_since, 1)
            ),
            "writebehind_queue": len(self.shard.backlog.unstored),
        }

    async def audit(self) -> dict[str, Any]:
        """Drain the write-behind, then compare every live entity with its stored snapshot.

        An entity matches when its state packs to the very bytes the store
        holds. Entities changed since the drain are counted as pending, not
        compared; passivated ones are the store's copy by construction.
        """
        drained = await self.writebehind.drain_all(force=True)
        if self.hot_copy is not None:
            await self.hot_copy.copy()  # what the store now has, in the hot copy too
        shard = self.shard
        keys = list(shard.entities)
        checked = mismatched = pending = 0
        examples: list[str] = []
        for start in range(0, len(keys), AUDIT_CHUNK):
            chunk = [k for k in keys[start : start + AUDIT_CHUNK] if k in shard.entities]
            live = {
                k: pack_state(shard.entities[k]) for k in chunk if not shard.pinned_by_writes(k)
            }
            pending += len(chunk) - len(live)
            stored = await asyncio.to_thread(self.store.load_many, list(live))
            for key, state in live.items():
                if shard.pinned_by_writes(key):
                    pending += 1  # changed while the store was read
                    continue
                checked += 1
                if stored.get(key) != state:
                    mismatched += 1
                    if len(examples) < 10:
                        examples.append(key)
        return {
            "shard": self.shard_id,
            "drained": drained,
            "checked": checked,
            "mismatched": mismatched,
            "pending": pending,
            "passivated": len(shard.residency.cold),
            "queued_events": len(shard.backlog.unstored),
            "examples": examples,
        }

    async def audit_all(self) -> dict[str, Any]:
        answers = await self._ask_all("audit", AUDIT_TIMEOUT_S)
        shards = [await self.audit()] + [
            a if not isinstance(a, Exception) else {"shard": p, "error": repr(a)}
            for p, a in answers.items()
        ]
        shards.sort(key=lambda s: s["shard"])
        checked = sum(s.get("checked", 0) for s in shards)
        mismatched = sum(s.get("mismatched", 0) for s in shards)
        return {
            "checked": checked,
            "mismatched": mismatched,
            "mismatch_rate": mismatched / checked if checked else 0.0,
            "pending": sum(s.get("pending", 0) for s in shards),
            "complete": all("error" not in s for s in shards),
            "shards": shards,
        }

    async def _ask_all(self, method: str, timeout_s: float = CONTROL_TIMEOUT_S) -> dict[int, Any]:
        async def ask(peer: int) -> Any:
            try:
                return await asyncio.wait_for(self.directory.control(peer, method), timeout_s)
            except Exception as e:
                return e

        peers = sorted(self.links)
        answers = await asyncio.gather(*(ask(p) for p in peers))
        return dict(zip(peers, answers, strict=True))

    async def ready(self) -> tuple[bool, dict[str, Any]]:
        """Every shard answers, its journal takes writes and its store takes drains."""
        answers = {self.shard_id: self.info(), **(await self._ask_all("info", HEALTH_TIMEOUT_S))}
        missing = []
        for shard, answer in sorted(answers.items()):
            if isinstance(answer, Exception):
                missing.append(f"shard {shard} does not answer")
                continue
            if not answer["journal_ok"]:
                missing.append(f"shard {shard}: the journal refuses writes")
            if answer["store_failing_s"] is not None:
                missing.append(
                    f"shard {shard}: the store has refused writes for "
                    f"{answer['store_failing_s']} s ({answer['writebehind_queue']} queued)"
                )
        return not missing, {"shards": self.router.slot_map.shard_count, "missing": missing}

    async def exposition(self) -> str:
        answers = await self._ask_all("metrics_text", HEALTH_TIMEOUT_S)
        texts = [self.metrics.exposition()]
        texts += [a for a in answers.values() if isinstance(a, str)]
        return merge_expositions(texts)

    async def cluster(self) -> dict[str, Any]:
        answers = await self._ask_all("info")
        shards = [self.info()] + [
            a if not isinstance(a, Exception) else {"shard": p, "error": type(a).__name__}
            for p, a in answers.items()
        ]
        shards.sort(key=lambda s: s["shard"])
        return {
            "slot_map_version": self.router.slot_map.version,
            "shards": shards,
            "nodes": await self._nodes(shards),
            # what holds the connections: the shards themselves, or an nginx front
            "front": (
                {"kind": self.settings.front, "workers": self.settings.front_workers}
                if self.settings.front
                else None
            ),
        }

    async def _nodes(self, shards: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Every live Ray node: drained or not, and the shards it runs."""
        try:
            alive = await self.directory.nodes()
            drained = set(await asyncio.to_thread(self.cluster_state.drained_nodes))
        except Exception as e:  # the view still shows the shards
            log.warning("cannot list the nodes: %r", e)
            return []
        return [
            {
                "node_id": node,
                "drained": node in drained,
                "shards": [s["shard"] for s in shards if s.get("node_id") == node],
            }
            for node in alive
        ]


def database_for(settings: Settings) -> Database:
    """The store's database, for the tables beside the entities."""
    if settings.postgres_dsn:
        return Database(postgres_dsn=settings.postgres_dsn)
    return Database(sqlite_path=os.path.join(settings.data_dir, "store.sqlite3"))


def http_socket(host: str, port: int) -> socket.socket:
    """A listening socket that other grid processes on this node share (SO_REUSEPORT)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(4096)
    sock.setblocking(False)
    return sock
