"""Sending the webhook deliveries a shard's drains queued.

Each shard process sends the deliveries its own drains queued (persistence/
webhooks.py): signed, at least once (``id`` is the event's, for receivers to
deduplicate), retried with exponential backoff, and after ``max_attempts``
moved to the dead letters that ``GET /v1/webhooks/{id}/dead-letters`` shows.
Every process reloads the registrations every ``REGISTRY_REFRESH_S``, so
deliveries start within that long of a registration. Each send is a task of its
own, recorded in the store at the next round: a slow receiver holds up only its
own deliveries (at most ``MAX_IN_FLIGHT_PER_HOOK`` at once), never another's.
"""

from __future__ import annotations

import asyncio
import logging
import time

import httpx
import orjson

from omnigrid.api.http.sync_log import OnDelivered
from omnigrid.api.runtime.signing import HEADER, sign
from omnigrid.persistence.events import parse_rfc3339
from omnigrid.persistence.store import StoreUnavailable
from omnigrid.persistence.webhooks import Delivery, Webhook, WebhookStore

log = logging.getLogger("omnigrid.webhooks")
REGISTRY_REFRESH_S = 2.0
POLL_S = 0.25
# one receiver's sends at once (so at most this many started per round, four rounds
# a second); the client's pool is far larger, so a slow receiver cannot take it all
MAX_IN_FLIGHT_PER_HOOK = 64
MAX_CONNECTIONS = 1024


class WebhookSender:
    def __init__(
        self,
        shard_id: int,
        store: WebhookStore,
        max_attempts: int,
        backoff_s: float,
        timeout_s: float,
    ) -> None:
        self.shard_id = shard_id
        self.store = store
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self.timeout_s = timeout_s
        self.on_delivered: OnDelivered | None = None
        self.registry: list[Webhook] = []
        self.sent = self.failed = self.dead = 0
        self._in_flight: dict[int, Delivery] = {}  # being sent or not yet recorded
        self._finished: list[tuple[Delivery, str | None, float]] = []  # (it, error, when)
        self._tasks: set[asyncio.Future[None]] = set()  # the sends: held until done

    def webhooks(self) -> list[Webhook]:
        return self.registry

    async def run(self) -> None:
        limits = httpx.Limits(max_connections=MAX_CONNECTIONS, max_keepalive_connections=128)
        async with httpx.AsyncClient(timeout=self.timeout_s, limits=limits) as client:
            refreshed = 0.0
            while True:
                try:
                    if time.monotonic() - refreshed >= REGISTRY_REFRESH_S:
                        self.registry = await asyncio.to_thread(self.store.all)
                        refreshed = time.monotonic()
                    if self.registry:
                        await self.send_due(client)
                except StoreUnavailable as e:
                    log.debug("webhooks: the store is unavailable: %s", e)
                except Exception:
                    log.exception("webhook sender failed a round")
                await asyncio.sleep(POLL_S)

    async def send_due(self, client: httpx.AsyncClient) -> int:
        """Record the sends that finished, then start the due ones not in flight; how
        many started. A send is a task of its own, so a slow receiver holds up only
        its own deliveries (at most ``MAX_IN_FLIGHT_PER_HOOK`` of them), never a
        round, nor another receiver's."""
        await self._settle_finished()
        hooks = {hook.id: hook for hook in self.registry}
        per_hook = dict.fromkeys(hooks, 0)
        for d in self._in_flight.values():
            if d.webhook_id in per_hook:
                per_hook[d.webhook_id] += 1
        # each webhook's oldest due, its in-flight ones among them (still due in the store)
        limits = {h: n + MAX_IN_FLIGHT_PER_HOOK for h, n in per_hook.items()}
        due = await asyncio.to_thread(self.store.due, self.shard_id, time.time(), limits)
        started = 0
        for d in due:
            taken = per_hook[d.webhook_id]
            if d.id in self._in_flight or taken >= MAX_IN_FLIGHT_PER_HOOK:
                continue
            per_hook[d.webhook_id] = taken + 1
            self._in_flight[d.id] = d
            task = asyncio.ensure_future(self._send_one(client, hooks[d.webhook_id], d))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            started += 1
        return started

    async def _send_one(self, client: httpx.AsyncClient, hook: Webhook, d: Delivery) -> None:
        try:
            error = await self._send(client, hook, d)
        except Exception as e:  # a bug: tried again later, like a refusal
            error = f"{type(e).__name__}: {e}"[:500]
        self._finished.append((d, error, time.time()))

    async def _settle_finished(self) -> None:
        finished, self._finished = self._finished, []
        if not finished:
            return
        delivered, retry, dead = [], [], []
        for delivery, error, at in finished:
            if error is None:
                delivered.append(delivery.id)
            elif delivery.attempts + 1 >= self.max_attempts:
                dead.append((delivery, error))
            else:
                wait = min(self.backoff_s * 2**delivery.attempts, 3600.0)
                retry.append((delivery.id, delivery.attempts + 1, at + wait, error))
        try:
            await asyncio.to_thread(self.store.settle, delivered, retry, dead, time.time())
        except StoreUnavailable:
            self._finished = finished + self._finished  # recorded at the next round
            raise
        for delivery, _, _ in finished:
            self._in_flight.pop(delivery.id, None)
        self.sent += len(delivered)
        self.failed += len(retry)
        self.dead += len(dead)

    async def _send(self, client: httpx.AsyncClient, hook: Webhook, d: Delivery) -> str | None:
        """None when the receiver took it (2xx), else why not. (A deleted webhook's
        deliveries go with it: WebhookStore.delete.)"""
        body = d.body.encode()
        headers = {
            "content-type": "application/json",
            HEADER: sign(hook.secret, body),
            "Omnigrid-Event-Id": d.event_id,
            "Omnigrid-Webhook-Id": hook.id,
            "Omnigrid-Attempt": str(d.attempts + 1),
        }
        try:
            response = await client.post(hook.url, content=body, headers=headers)
        except httpx.HTTPError as e:
            return f"{type(e).__name__}: {e}"[:500]
        if 200 <= response.status_code < 300:
            if self.on_delivered is not None:
                self._delivered(d.body)
            return None
        return f"HTTP {response.status_code}"

    def _delivered(self, body: str) -> None:
        """A change reached its receiver: its sync lag, for the change's channel."""
        try:
            sent = orjson.loads(body)
            lag = time.time() - parse_rfc3339(sent["at"])
        except (ValueError, KeyError, TypeError):
            return
        if self.on_delivered is not None and sent.get("channel") and sent.get("key"):
            self.on_delivered(
                str(sent["channel"]), lag, str(sent["key"]), int(sent["version"]), True
            )
