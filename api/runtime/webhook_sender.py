"""Sending the webhook deliveries a shard's drains queued.

Each shard process sends the deliveries its own drains queued (persistence/
webhooks.py): signed, at least once (``id`` is the event's, for receivers to
deduplicate), retried with exponential backoff, and after ``max_attempts``
moved to the dead letters that ``GET /v1/webhooks/{id}/dead-letters`` shows.
Every process reloads the registrations every ``REGISTRY_REFRESH_S``, so
deliveries start within that long of a registration.
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
SEND_BATCH = 100


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

    def webhooks(self) -> list[Webhook]:
        return self.registry

    async def run(self) -> None:
        async with httpx.AsyncClient(timeout=self.timeout_s) as client:
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
        now = time.time()
        due = await asyncio.to_thread(self.store.due, self.shard_id, now, SEND_BATCH)
        if not due:
            return 0
        hooks = {hook.id: hook for hook in self.registry}
        outcomes = await asyncio.gather(
            *(self._send(client, hooks.get(d.webhook_id), d) for d in due)
        )
        delivered, retry, dead = [], [], []
        for delivery, error in zip(due, outcomes, strict=True):
            if error is None:
                delivered.append(delivery.id)
            elif delivery.attempts + 1 >= self.max_attempts:
                dead.append((delivery, error))
            else:
                wait = min(self.backoff_s * 2**delivery.attempts, 3600.0)
                retry.append((delivery.id, delivery.attempts + 1, now + wait, error))
        await asyncio.to_thread(self.store.settle, delivered, retry, dead, time.time())
        self.sent += len(delivered)
        self.failed += len(retry)
        self.dead += len(dead)
        return len(due)

    async def _send(
        self, client: httpx.AsyncClient, hook: Webhook | None, d: Delivery
    ) -> str | None:
        """None when the receiver took it (2xx), else why not."""
        if hook is None:
            return "the webhook was deleted"
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
