"""The webhook endpoints: register, list, delete, and read the dead letters.

``POST /v1/webhooks`` registers a URL for entity kinds (``cart``, ``stock``, and
every other registered kind: each kind's changes are its webhook events) and
answers the signing secret once. The sending is api/runtime/webhook_sender.py's.
"""

from __future__ import annotations

import asyncio
import logging
import urllib.parse
from typing import Annotated, Any

import msgspec

from omnigrid.actors.declaration import Grid
from omnigrid.actors.errors import GridError, InvalidRequest, Unavailable
from omnigrid.actors.kinds import kinds
from omnigrid.api.http import validation as v
from omnigrid.api.http.handlers import Call
from omnigrid.persistence.store import StoreUnavailable
from omnigrid.persistence.webhooks import Webhook, WebhookStore

log = logging.getLogger("omnigrid.webhooks")
MAX_URL_CHARS = 2048


class WebhookCreate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A registration: this class documents it and checks it."""

    url: Annotated[
        str, msgspec.Meta(max_length=MAX_URL_CHARS, description="absolute http or https URL")
    ]
    events: Annotated[
        list[str], msgspec.Meta(min_length=1, description="entity kinds: their changes")
    ]

    def __post_init__(self) -> None:
        parsed = urllib.parse.urlsplit(self.url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError("url must be an absolute http or https URL")
        # every kind's changes are webhook events; "alert": alerts firing and resolving
        names = [kind.name for kind in kinds()] + ["alert"]
        if any(e not in names for e in self.events):
            raise ValueError(f"events must be a non-empty list of {', '.join(names)}")


async def _in_thread(work: Any, *args: Any) -> Any:
    try:
        return await asyncio.to_thread(work, *args)
    except StoreUnavailable as e:
        log.warning("the webhook registry cannot be reached: %s", e)
        raise Unavailable("the webhook registry cannot be reached right now; retry later") from e


class WebhookEndpoints:
    """The endpoints, over the registry in the store (``None``: this process has none)."""

    def __init__(self, store: WebhookStore | None) -> None:
        self._store = store

    @property
    def store(self) -> WebhookStore:
        if self._store is None:
            raise Unavailable("this process has no store")
        return self._store

    async def register(self, grid: Grid, call: Call) -> tuple[int, Any]:
        try:
            req = msgspec.convert(v.json_object(call.body), WebhookCreate)
        except msgspec.ValidationError as e:
            raise InvalidRequest(str(e)) from None
        hook: Webhook = await _in_thread(self.store.register, req.url, sorted(set(req.events)))
        return 201, {**hook.public(), "secret": hook.secret}

    async def list_webhooks(self, grid: Grid, call: Call) -> tuple[int, Any]:
        hooks: list[Webhook] = await _in_thread(self.store.all)
        return 200, {"webhooks": [hook.public() for hook in hooks]}

    async def delete(self, grid: Grid, call: Call) -> tuple[int, Any]:
        webhook_id = v.identifier(call.params["webhook_id"], "webhook_id")
        if not await _in_thread(self.store.delete, webhook_id):
            raise GridError("not_found", f"no webhook {webhook_id!r}")
        return 200, {"id": webhook_id, "deleted": True}

    async def dead_letters(self, grid: Grid, call: Call) -> tuple[int, Any]:
        webhook_id = v.identifier(call.params["webhook_id"], "webhook_id")
        limit = call.query_int("limit", 100, 1, 1000)
        letters = await _in_thread(self.store.dead_letters, webhook_id, limit)
        return 200, {"webhook_id": webhook_id, "dead_letters": letters}
