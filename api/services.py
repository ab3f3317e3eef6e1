"""What a grid process offers handlers beside its entities: the tables in the store."""

from __future__ import annotations

from dataclasses import dataclass

from omnigrid.persistence.behaviour import BehaviourLog
from omnigrid.persistence.db import Database
from omnigrid.persistence.webhooks import WebhookStore


@dataclass
class Services:
    db: Database
    behaviour: BehaviourLog
    webhooks: WebhookStore
    channels: frozenset[str]
