"""What operations keep in the store: the alert rules every process evaluates, and
alert notifications queued for the webhooks subscribed to ``alert``."""

from __future__ import annotations

import time
from typing import Any

import orjson

from omnigrid.persistence.db import Database
from omnigrid.persistence.webhooks import WebhookStore

RULES = "alert_rules"


class OpsStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def rules(self) -> list[dict[str, Any]] | None:
        rows = self.db.query("SELECT value FROM omnigrid_settings WHERE name = ?", (RULES,))
        return orjson.loads(rows[0][0]) if rows else None  # type: ignore[no-any-return]

    def put_rules(self, rules: list[dict[str, Any]]) -> None:
        value = orjson.dumps(rules).decode()
        if not self.db.execute(
            "UPDATE omnigrid_settings SET value = ? WHERE name = ?", (value, RULES)
        ):
            self.db.execute(
                "INSERT INTO omnigrid_settings (name, value) VALUES (?, ?)", (RULES, value)
            )

    def queue_alert(self, shard: int, alert: dict[str, Any]) -> int:
        """A delivery of this alert's firing or resolution to every ``alert`` webhook."""
        hooks = [h for h in WebhookStore(self.db).all() if "alert" in h.kinds]
        state = alert["state"]
        body = orjson.dumps(
            {
                "id": f"alert:{alert['alert_id']}:{state}",
                "event": "alert",
                "at": alert["resolved_at"] or alert["fired_at"],
                "data": alert,
            }
        ).decode()
        now = time.time()
        for hook in hooks:
            self.db.execute(
                "INSERT INTO omnigrid_deliveries (shard, webhook_id, event_id, body, attempts, "
                "next_at) VALUES (?, ?, ?, ?, 0, ?)",
                (shard, hook.id, f"alert:{alert['alert_id']}:{state}", body, now),
            )
        return len(hooks)
