"""Webhooks: registrations, the delivery queue and the dead letters, in the store.

Deliveries are queued by the write-behind in the same transaction that logs the
events they announce (``deliveries_for``), so a change the store has is a
change whose deliveries are queued: nothing is lost when a process dies, and
delivering never touches the write path. Each delivery belongs to the shard
whose drain queued it, and only that shard's process sends it.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from omnigrid.persistence.db import Database
from omnigrid.persistence.events import Event, rfc3339


@dataclass(frozen=True, slots=True)
class Webhook:
    id: str
    url: str
    kinds: tuple[str, ...]
    secret: str
    created_at: float

    def public(self) -> dict[str, Any]:
        """What the API shows of a registration (the secret only when it is created)."""
        return {
            "id": self.id,
            "url": self.url,
            "events": list(self.kinds),
            "created_at": rfc3339(self.created_at),
        }


@dataclass(frozen=True, slots=True)
class Delivery:
    id: int
    webhook_id: str
    event_id: str
    body: str
    attempts: int


def event_id(event: Event) -> str:
    """A delivery's id: the event's, stable across retries, for receivers to deduplicate."""
    return f"{event.key}:{event.version}"


def event_body(event: Event) -> dict[str, Any]:
    """The JSON a receiver gets."""
    return {
        "id": event_id(event),
        "event": event.kind,
        "key": event.key,
        "op": event.op,
        "channel": event.channel,
        "version": event.version,
        "at": rfc3339(event.at),
        "data": event.view,
    }


def deliveries_for(
    shard: int, webhooks: Sequence[Webhook], events: Iterable[Event], now: float
) -> list[tuple[Any, ...]]:
    """omnigrid_deliveries rows for the events some webhook asked for."""
    rows: list[tuple[Any, ...]] = []
    if not webhooks:
        return rows
    for event in events:
        body: str | None = None
        for hook in webhooks:
            if event.kind in hook.kinds:
                body = body or orjson.dumps(event_body(event)).decode()
                rows.append((shard, hook.id, event_id(event), body, 0, now))
    return rows


class WebhookStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def register(self, url: str, kinds: Sequence[str]) -> Webhook:
        hook = Webhook(
            "wh_" + secrets.token_hex(8),
            url,
            tuple(kinds),
            "whsec_" + secrets.token_hex(24),
            time.time(),
        )
        self.db.execute(
            "INSERT INTO omnigrid_webhooks (id, url, kinds, secret, created_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (
                hook.id,
                hook.url,
                orjson.dumps(list(hook.kinds)).decode(),
                hook.secret,
                hook.created_at,
            ),
        )
        return hook

    def all(self) -> list[Webhook]:
        rows = self.db.query(
            "SELECT id, url, kinds, secret, created_at FROM omnigrid_webhooks ORDER BY created_at"
        )
        return [Webhook(i, u, tuple(orjson.loads(k)), s, c) for i, u, k, s, c in rows]

    def delete(self, webhook_id: str) -> bool:
        deleted = self.db.execute("DELETE FROM omnigrid_webhooks WHERE id = ?", (webhook_id,))
        self.db.execute("DELETE FROM omnigrid_deliveries WHERE webhook_id = ?", (webhook_id,))
        return deleted > 0

    def dead_letters(self, webhook_id: str, limit: int) -> list[dict[str, Any]]:
        rows = self.db.query(
            "SELECT event_id, attempts, last_error, dead_at, body FROM omnigrid_dead_letters "
            "WHERE webhook_id = ? ORDER BY id DESC LIMIT ?",
            (webhook_id, limit),
        )
        return [
            {
                "event_id": event_id,
                "attempts": attempts,
                "last_error": error,
                "dead_at": rfc3339(dead_at),
                "body": orjson.loads(body),
            }
            for event_id, attempts, error, dead_at, body in rows
        ]

    # -- the delivery queue -------------------------------------------------------

    def due(self, shard: int, now: float, limits: dict[str, int]) -> list[Delivery]:
        """The oldest deliveries due now, up to ``limits[webhook id]`` per webhook: one
        receiver's backlog never hides another's."""
        out: list[Delivery] = []
        for webhook_id, limit in limits.items():
            rows = self.db.query(
                "SELECT id, webhook_id, event_id, body, attempts FROM omnigrid_deliveries "
                "WHERE shard = ? AND webhook_id = ? AND next_at <= ? ORDER BY id LIMIT ?",
                (shard, webhook_id, now, limit),
            )
            out += [Delivery(*row) for row in rows]
        return out

    def settle(
        self,
        delivered: Sequence[int],
        retry: Sequence[tuple[int, int, float, str]],
        dead: Sequence[tuple[Delivery, str]],
        now: float,
    ) -> None:
        """Record one round of sends: done, to try again later, or given up on."""
        self.db.execute_many(
            [
                ("DELETE FROM omnigrid_deliveries WHERE id = ?", [(i,) for i in delivered]),
                (
                    "UPDATE omnigrid_deliveries SET attempts = ?, next_at = ?, last_error = ? "
                    "WHERE id = ?",
                    [(attempts, next_at, error, i) for i, attempts, next_at, error in retry],
                ),
                (
                    "INSERT INTO omnigrid_dead_letters "
                    "(webhook_id, event_id, body, attempts, last_error, dead_at) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    [
                        (d.webhook_id, d.event_id, d.body, d.attempts + 1, error, now)
                        for d, error in dead
                    ],
                ),
                ("DELETE FROM omnigrid_deliveries WHERE id = ?", [(d.id,) for d, _ in dead]),
            ]
        )
