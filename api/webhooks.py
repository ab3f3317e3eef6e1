"""Webhook endpoints and the sender that works through each shard's delivery queue.

``POST /v1/webhooks`` registers a URL for entity kinds (``cart``, ``stock``, ...) and
answers the signing secret once. Every process reloads the registrations every
``REGISTRY_REFRESH_S``, so deliveries start within that long of a registration.
Each shard process sends the deliveries its drains queued: signed, at least
once (``id`` is the event's, for receivers to deduplicate), retried with
exponential backoff, and after ``max_attempts`` moved to the dead letters that
``GET /v1/webhooks/{id}/dead-letters`` shows.
"""

from __future__ import annotations

import asyncio
import logging
import time
import urllib.parse
from typing import Annotated, Any

import httpx
import msgspec

from omnigrid.actors.errors import GridError, InvalidRequest, Unavailable
from omnigrid.actors.kinds import kinds
from omnigrid.api import validation as v
from omnigrid.api.handlers import Call
from omnigrid.api.router import Router
from omnigrid.api.signing import HEADER, sign
from omnigrid.persistence.store import StoreUnavailable
from omnigrid.persistence.webhooks import Delivery, Webhook, WebhookStore

log = logging.getLogger("omnigrid.webhooks")
REGISTRY_REFRESH_S = 2.0
POLL_S = 0.25
SEND_BATCH = 100
MAX_URL_CHARS = 2048


class WebhookCreate(msgspec.Struct, kw_only=True):
    """The document's shape of a registration (``register`` checks it)."""

    url: Annotated[
        str, msgspec.Meta(max_length=MAX_URL_CHARS, description="absolute http or https URL")
    ]
    events: Annotated[
        list[str],
        msgspec.Meta(min_length=1, description="entity kinds (api/openapi.py lists them)"),
    ]


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
            return None
        return f"HTTP {response.status_code}"


# -- the endpoints ------------------------------------------------------------------


def _store(router: Router) -> WebhookStore:
    if router.services is None:
        raise Unavailable("this process has no store")
    store: WebhookStore = router.services.webhooks
    return store


async def _in_thread(work: Any, *args: Any) -> Any:
    try:
        return await asyncio.to_thread(work, *args)
    except StoreUnavailable as e:
        log.warning("the webhook registry cannot be reached: %s", e)
        raise Unavailable("the webhook registry cannot be reached right now; retry later") from e


async def register(router: Router, call: Call) -> tuple[int, Any]:
    body = v.json_object(call.body)
    v.fields(body, {"url", "events"})
    url = body["url"]
    parsed = urllib.parse.urlsplit(url) if isinstance(url, str) else None
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise InvalidRequest("url must be an absolute http or https URL")
    if len(url) > MAX_URL_CHARS:
        raise InvalidRequest(f"url is limited to {MAX_URL_CHARS} characters")
    events = body["events"]
    names = [kind.name for kind in kinds()]  # every kind's changes are webhook events
    if not isinstance(events, list) or not events or any(e not in names for e in events):
        raise InvalidRequest(f"events must be a non-empty list of {', '.join(names)}")
    hook: Webhook = await _in_thread(_store(router).register, url, sorted(set(events)))
    return 201, {**hook.public(), "secret": hook.secret}


async def list_webhooks(router: Router, call: Call) -> tuple[int, Any]:
    hooks: list[Webhook] = await _in_thread(_store(router).all)
    return 200, {"webhooks": [hook.public() for hook in hooks]}


async def delete(router: Router, call: Call) -> tuple[int, Any]:
    webhook_id = v.identifier(call.params["webhook_id"], "webhook_id")
    if not await _in_thread(_store(router).delete, webhook_id):
        raise GridError("not_found", f"no webhook {webhook_id!r}")
    return 200, {"id": webhook_id, "deleted": True}


async def dead_letters(router: Router, call: Call) -> tuple[int, Any]:
    webhook_id = v.identifier(call.params["webhook_id"], "webhook_id")
    limit = call.query_int("limit", 100, 1, 1000)
    letters = await _in_thread(_store(router).dead_letters, webhook_id, limit)
    return 200, {"webhook_id": webhook_id, "dead_letters": letters}
