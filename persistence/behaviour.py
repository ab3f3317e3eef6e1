"""The behaviour log: what shoppers do on each channel, next to what the grid did.

Channel backends send batches of behaviour (a product view in the app, a
search on H5, a store visit, a purchase at a till) for a uid. They are stored
as they come (``omnigrid_behaviour``), deduplicated on the channel's own
``event_id`` when it gives one, and a timeline merges them with the grid's
own changes to the user's cart (the event log) in time order: one user's path
across channels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from omnigrid.persistence.db import Database
from omnigrid.persistence.events import rfc3339

TYPES = ("view", "favourite", "search", "store_visit", "purchase")


@dataclass(frozen=True, slots=True)
class Evidence:
    kind: str  # device_id | address | payment
    digest: str  # keyed hash: what matching needs
    shown: str  # masked
    seen_at: float


class BehaviourLog:
    def __init__(self, db: Database) -> None:
        self.db = db

    def append(
        self, uid: str, events: Sequence[dict[str, Any]], evidence: Sequence[Evidence] = ()
    ) -> None:
        """Store one batch (all or nothing); an ``event_id`` seen before is skipped.

        ``evidence``, already hashed and masked by the caller, is kept with the
        latest time each piece was seen."""
        rows = [
            (
                uid,
                e.get("event_id"),
                e["type"],
                e["channel"],
                e["at"],
                orjson.dumps(e["data"]).decode(),
            )
            for e in events
        ]
        statements: list[tuple[str, Sequence[Sequence[Any]]]] = [
            (
                "INSERT INTO omnigrid_behaviour (uid, event_id, type, channel, at, data) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                rows,
            )
        ]
        if evidence:
            statements.append(
                (
                    "INSERT INTO omnigrid_evidence (uid, kind, digest, shown, seen_at) "
                    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (uid, kind, digest) DO UPDATE "
                    "SET seen_at = CASE WHEN excluded.seen_at > omnigrid_evidence.seen_at "
                    "THEN excluded.seen_at ELSE omnigrid_evidence.seen_at END",
                    [(uid, e.kind, e.digest, e.shown, e.seen_at) for e in evidence],
                )
            )
        self.db.execute_many(statements)

    def shared_evidence(self, uid: str, limit: int) -> list[tuple[str, str, str, float]]:
        """(other uid, kind, shown, seen_at) for every piece of ``uid``'s evidence
        another uid shares, the most recent first."""
        rows = self.db.query(
            "SELECT other.uid, other.kind, other.shown, other.seen_at "
            "FROM omnigrid_evidence mine JOIN omnigrid_evidence other "
            "ON other.kind = mine.kind AND other.digest = mine.digest AND other.uid <> mine.uid "
            "WHERE mine.uid = ? ORDER BY other.seen_at DESC LIMIT ?",
            (uid, limit),
        )
        return [(str(u), str(k), str(s), float(t)) for u, k, s, t in rows]

    def timeline(
        self, uids: Sequence[str], entity_keys: Sequence[str], limit: int
    ) -> list[dict[str, Any]]:
        """The ``limit`` most recent items, the behaviour of ``uids`` (a user and those
        merged into it) and the changes of ``entity_keys`` (their carts), oldest first."""
        marks = ", ".join("?" * len(uids))
        behaviour = self.db.query(
            "SELECT at, id, type, channel, data, event_id FROM omnigrid_behaviour "
            f"WHERE uid IN ({marks}) ORDER BY at DESC, id DESC LIMIT ?",
            (*uids, limit),
        )
        at = "extract(epoch FROM at)::float8" if self.db.postgres_dsn else "at"
        view = "view::text" if self.db.postgres_dsn else "view"
        # Each key's latest changes by its primary key (key, version): a key's versions
        # follow its times, so no (key, at) index is kept up on every stored change.
        latest = " UNION ALL ".join(
            f"SELECT * FROM (SELECT {at} AS at_s, kind, op, channel, version, {view} AS v "
            f"FROM omnigrid_events WHERE key = ? ORDER BY version DESC LIMIT ?) k{i}"
            for i in range(len(entity_keys))
        )
        changes = (
            self.db.query(
                f"SELECT * FROM ({latest}) latest ORDER BY at_s DESC LIMIT ?",
                (*(p for key in entity_keys for p in (key, limit)), limit),
            )
            if entity_keys
            else []
        )
        items: list[tuple[float, int, dict[str, Any]]] = []  # (at, arrival order, item)
        for when, row_id, kind, channel, data, event_id in behaviour:
            item = {"at": rfc3339(when), "source": "channel", "type": kind, "channel": channel}
            if event_id is not None:
                item["event_id"] = event_id
            items.append((when, row_id, {**item, **orjson.loads(data)}))
        for when, kind, op, channel, version, view in changes:
            items.append(
                (
                    when,
                    version,
                    {
                        "at": rfc3339(when),
                        "source": "grid",
                        "type": op,
                        "channel": channel,
                        "entity": kind,
                        "version": version,
                        "view": orjson.loads(view),
                    },
                )
            )
        items.sort(key=lambda entry: (entry[0], entry[1]))
        return [item for _, _, item in items[-limit:]]
