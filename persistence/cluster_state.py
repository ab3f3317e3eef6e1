"""What the grid keeps of its own shape: the slot map and the jobs that change it.

Both are rows of ``omnigrid_settings`` (JSON), in the store every process and
every node reaches: a process that starts (or that Ray restarts after its node
died) takes the slot map from here, not from its settings, so the grid keeps
the shape its last scale or rebalance gave it; and a job's progress is readable
from any process while shard 0's process runs it (api/runtime/rebalance.py).
Only that one coordinator writes them, one job at a time.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from omnigrid.persistence.db import Database

JOB_PREFIX = "cluster_job:"


class ClusterState:
    def __init__(self, db: Database, namespace: str) -> None:
        self.db = db
        self.map_name = f"slot_map:{namespace}"
        self.drained_name = f"drained_nodes:{namespace}"

    def slot_map(self) -> list[Any] | None:
        """The stored map's wire form (actors/slots.py), or None before the first save."""
        wire = self.db.setting(self.map_name)
        return wire if isinstance(wire, list) else None

    def save_slot_map(self, wire: list[Any]) -> None:
        stored = self.slot_map()
        if stored is not None and stored[0] >= wire[0]:
            raise ValueError(f"slot map version {wire[0]} is not past the stored {stored[0]}")
        self.db.put_setting(self.map_name, wire)

    def drained_nodes(self) -> list[str]:
        """Ray nodes an operator drained: no shard is placed on them (placement.py)."""
        nodes = self.db.setting(self.drained_name)
        return [str(n) for n in nodes] if isinstance(nodes, list) else []

    def save_drained_nodes(self, nodes: list[str]) -> None:
        self.db.put_setting(self.drained_name, sorted(nodes))

    def new_job(
        self, job_id: str, what: str, shards: int, slots_total: int, node: str | None = None
    ) -> dict[str, Any]:
        job = {
            "job_id": job_id,
            "kind": what,
            "shards": shards,
            "node": node,  # a drain's node
            "relocated": {},  # shard -> the node it moved to
            "state": "running",
            "slots_moved": 0,
            "slots_total": slots_total,
            "entities_moved": 0,
            "longest_freeze_ms": 0.0,  # the longest any slot's commands waited
            "started_at": time.time(),
            "finished_at": None,
            "error": None,
        }
        self.db.put_setting(JOB_PREFIX + job_id, job)
        return job

    def save_job(self, job: dict[str, Any]) -> None:
        self.db.put_setting(JOB_PREFIX + job["job_id"], job)

    def job(self, job_id: str) -> dict[str, Any] | None:
        job = self.db.setting(JOB_PREFIX + job_id)
        return job if isinstance(job, dict) else None

    def running_jobs(self) -> list[dict[str, Any]]:
        rows = self.db.query(
            "SELECT value FROM omnigrid_settings WHERE name LIKE ?", (JOB_PREFIX + "%",)
        )
        jobs = [orjson.loads(value) for (value,) in rows]
        return [j for j in jobs if j.get("state") == "running"]
