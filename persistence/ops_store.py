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
        rules: list[dict[str, Any]] | None = self.db.setting(RULES)
        return rules

    def put_rules(self, rules: list[dict[str, Any]]) -> None:
        self.db.put_setting(RULES, rules)

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
                "next_at) VALUES (?, ?, ?, ?, 0, ?) ON CONFLICT DO NOTHING",  # a retry: once
                (shard, hook.id, f"alert:{alert['alert_id']}:{state}", body, now),
            )
        return len(hooks)
