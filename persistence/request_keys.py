"""The first answers of keyed writes that no entity keeps: an offline sync batch
(``POST /v1/sync``) and a behaviour batch (``POST /v1/events``) each touch many
entities or none, so their ``Idempotency-Key`` is remembered here, in the store,
by route, channel and key, with the fingerprint of what was sent and what was
answered (the contract: at least 24 hours, across restarts; kept ``KEEP_S``).
"""

from __future__ import annotations

import time

import orjson

from omnigrid.persistence.db import Database

KEEP_S = 48 * 3600.0
PRUNE_EVERY = 1_000  # kept answers between two prunes of the expired ones


class RequestKeys:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._kept = 0

    def first(self, route: str, channel: str, key: str) -> tuple[str, int, object] | None:
        """(fingerprint, status, answer) of the key's first request, or None."""
        rows = self.db.query(
            "SELECT fingerprint, status, body FROM omnigrid_request_keys "
            "WHERE route = ? AND channel = ? AND key = ? AND at > ?",
            (route, channel, key, time.time() - KEEP_S),
        )
        if not rows:
            return None
        fingerprint, status, body = rows[0]
        return str(fingerprint), int(status), orjson.loads(body)

    def keep(
        self, route: str, channel: str, key: str, fingerprint: str, status: int, body: object
    ) -> None:
        """Remember a first answer (a racing twin that kept one first wins)."""
        self.db.execute(  # one that expired but was not pruned yet makes way
            "DELETE FROM omnigrid_request_keys WHERE route = ? AND channel = ? AND key = ? "
            "AND at <= ?",
            (route, channel, key, time.time() - KEEP_S),
        )
        self.db.execute(
            "INSERT INTO omnigrid_request_keys (route, channel, key, fingerprint, status, body, "
            "at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (route, channel, key, fingerprint, status, orjson.dumps(body).decode(), time.time()),
        )
        self._kept += 1
        if self._kept % PRUNE_EVERY == 0:
            self.prune(time.time() - KEEP_S)

    def prune(self, older_than: float) -> int:
        return self.db.execute("DELETE FROM omnigrid_request_keys WHERE at < ?", (older_than,))
