"""The sync log's changes: the store's event log (``omnigrid_events``) read by key,
channel and time, newest first, and pruned after the retention period.

Every change is already written behind into the event log with its key, op,
channel, version and time, so the sync log costs no write of its own; what a
change's deliveries were is counted in memory by the processes that made them
(api/http/sync_log.py). Pruning the event log also bounds how far back a
stream's ``Last-Event-ID`` and a user's timeline reach: the retention period is
both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from omnigrid.persistence.db import Database

PRUNE_CHUNK = 10_000  # rows deleted per statement: short transactions beside the drains


@dataclass(frozen=True, slots=True)
class Change:
    at: float
    key: str
    version: int
    channel: str
    op: str


class SyncLogStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        pg = bool(db.postgres_dsn)
        # PostgreSQL keeps ``at`` as timestamptz, SQLite as epoch seconds
        self._at = "extract(epoch FROM at)::float8" if pg else "at"
        self._time = "to_timestamp(?)" if pg else "?"

    def changes(
        self,
        keys: Sequence[str],
        channel: str | None,
        since: float,
        until: float,
        before: tuple[float, str, int] | None,
        limit: int,
    ) -> list[Change]:
        """Newest first: the changes of ``keys`` (any key when empty) by ``channel``
        (any when ``None``) in ``[since, until)``, after the page ending at ``before``."""
        where = [f"at >= {self._time}", f"at < {self._time}"]
        params: list[Any] = [since, until]
        if keys:
            where.append(f"key IN ({', '.join('?' * len(keys))})")
            params += keys
        if channel is not None:
            where.append("channel = ?")
            params.append(channel)
        if before is not None:
            where.append(f"(at, key, version) < ({self._time}, ?, ?)")
            params += before
        rows = self.db.query(
            f"SELECT {self._at}, key, version, channel, op FROM omnigrid_events "
            f"WHERE {' AND '.join(where)} ORDER BY at DESC, key DESC, version DESC LIMIT ?",
            (*params, limit),
        )
        return [Change(float(a), str(k), int(v), str(c), str(o)) for a, k, v, c, o in rows]

    def prune(self, older_than: float) -> int:
        """Delete the changes from before ``older_than``; how many went."""
        total = 0
        while True:
            gone = self.db.execute(
                "DELETE FROM omnigrid_events WHERE (key, version) IN (SELECT key, version "
                f"FROM omnigrid_events WHERE at < {self._time} LIMIT ?)",
                (older_than, PRUNE_CHUNK),
            )
            total += gone
            if gone < PRUNE_CHUNK:
                return total
