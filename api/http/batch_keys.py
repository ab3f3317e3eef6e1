"""``Idempotency-Key`` on the writes no entity keeps a record for (an offline sync
batch, a behaviour batch): the first answer is kept in the store
(persistence/request_keys.py); the same key with the same body gets it back and
applies nothing again, the same key with another body is 422
``idempotency_key_reused``. Only a success is kept, as for the entities' writes:
a refused batch changed nothing, so sending it again runs it again.

Two requests racing with one key may both run; each batch is itself safe to run
twice (a sync op's ``op_id``, a behaviour event's ``event_id``), and the answer
kept first is the one every later retry gets.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson

from omnigrid.actors.declaration import Grid
from omnigrid.actors.errors import Unavailable, key_reused
from omnigrid.api.http.handlers import Call, Handler, fingerprint
from omnigrid.persistence.request_keys import RequestKeys
from omnigrid.persistence.store import StoreUnavailable

log = logging.getLogger("omnigrid.batch_keys")


def keyed(keys: RequestKeys | None, route: str, handler: Handler) -> Handler:
    """``handler`` with its Idempotency-Key honoured (no store: as it was)."""
    if keys is None:
        return handler

    async def handle(grid: Grid, call: Call) -> tuple[int, Any]:
        key = call.idempotency_key
        if key is None:
            return await handler(grid, call)
        try:
            sent = orjson.loads(call.body) if call.body.strip() else {}
        except orjson.JSONDecodeError:
            return await handler(grid, call)  # refused there: nothing to remember
        mark = fingerprint(route, "", sent if isinstance(sent, dict) else {"body": sent})
        try:
            first = await asyncio.to_thread(keys.first, route, call.channel, key)
        except StoreUnavailable as e:
            log.warning("an Idempotency-Key cannot be checked: %s", e)
            raise Unavailable("this key cannot be checked right now; retry later") from e
        if first is not None:
            was, status, answer = first
            if was != mark:
                raise key_reused()
            return status, answer
        status, answer = await handler(grid, call)
        try:
            await asyncio.to_thread(keys.keep, route, call.channel, key, mark, status, answer)
        except StoreUnavailable as e:  # applied: say so; a retry may run it again, safely
            log.warning("an Idempotency-Key's answer cannot be kept: %s", e)
        return status, answer

    return handle
