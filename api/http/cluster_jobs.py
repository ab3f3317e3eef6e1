"""``POST /v1/cluster/scale|rebalance|drain``, ``GET /v1/cluster/jobs/{id}``.

A job moves slots online (api/runtime/rebalance.py); these only start one and
read it. Whatever process takes the request, shard 0's process runs the job,
and its progress is in the store, readable from any process.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import msgspec

from omnigrid.actors.declaration import Grid
from omnigrid.actors.errors import GridError, InvalidRequest, Unavailable, register_code
from omnigrid.api.http import validation as v
from omnigrid.api.http.handlers import Call
from omnigrid.persistence.events import rfc3339
from omnigrid.persistence.store import StoreUnavailable

MAX_SHARDS = 64  # a shard is a process of ~100 MB and a share of a core
BUSY = "cluster_busy"
register_code(BUSY, 409, "Cluster is busy")

StartJob = Callable[[str, int | None, str | None], Awaitable[dict[str, Any]]]
ReadJob = Callable[[str], Awaitable[dict[str, Any] | None]]


class Scale(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    shards: Annotated[int, msgspec.Meta(ge=1, le=MAX_SHARDS)]


class Drain(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    # a Ray node id (56 hex digits), or a unique prefix of one as status prints it
    node: Annotated[str, msgspec.Meta(min_length=4, max_length=64, pattern="^[0-9a-f]+$")]


def shown(job: dict[str, Any]) -> dict[str, Any]:
    """A job as the contract shows it (times in RFC 3339), with what it was asked."""
    return {
        "job_id": job["job_id"],
        "kind": job.get("kind"),
        "shards": job.get("shards"),
        "node": job.get("node"),
        "relocated": job.get("relocated", {}),
        "state": job["state"],
        "slots_moved": job["slots_moved"],
        "slots_total": job["slots_total"],
        "entities_moved": job.get("entities_moved", 0),
        "longest_freeze_ms": job.get("longest_freeze_ms", 0.0),
        "started_at": rfc3339(job["started_at"]),
        "finished_at": rfc3339(job["finished_at"]),
        "error": job.get("error"),
    }


class ClusterEndpoints:
    def __init__(self, start: StartJob | None, read: ReadJob | None) -> None:
        self._start = start
        self._read = read

    async def _started(
        self, what: str, shards: int | None, node: str | None = None
    ) -> tuple[int, Any]:
        if self._start is None:
            raise Unavailable("this process runs no grid")
        try:
            job = await self._start(what, shards, node)
        except StoreUnavailable as e:
            raise Unavailable("the store cannot record the job right now; retry later") from e
        return 202, {"job_id": job["job_id"]}

    async def scale(self, grid: Grid, call: Call) -> tuple[int, Any]:
        try:
            req = msgspec.convert(v.json_object(call.body), Scale)
        except msgspec.ValidationError as e:
            raise InvalidRequest(str(e)) from None
        return await self._started("scale", req.shards)

    async def rebalance(self, grid: Grid, call: Call) -> tuple[int, Any]:
        if call.body.strip() and v.json_object(call.body):
            raise InvalidRequest("a rebalance takes no fields")
        return await self._started("rebalance", None)

    async def drain(self, grid: Grid, call: Call) -> tuple[int, Any]:
        try:
            req = msgspec.convert(v.json_object(call.body), Drain)
        except msgspec.ValidationError as e:
            raise InvalidRequest(str(e)) from None
        return await self._started("drain", None, req.node)

    async def job(self, grid: Grid, call: Call) -> tuple[int, Any]:
        job_id = v.identifier(call.params["job_id"], "job_id")
        if self._read is None:
            raise Unavailable("this process runs no grid")
        try:
            job = await self._read(job_id)
        except StoreUnavailable as e:
            raise Unavailable("the store cannot be read right now; retry later") from e
        if job is None:
            raise GridError("not_found", f"no job {job_id!r}")
        return 200, shown(job)
