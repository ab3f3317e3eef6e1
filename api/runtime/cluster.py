"""Ray's part: start or join a cluster, place shard actors, find them again.

Ray places the shard processes, restarts one whose process dies
(``max_restarts=-1``) and tells each process where the others listen. It is
kept off the per-request path: requests travel over api/runtime/peers.py streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from typing import Any

import ray

from omnigrid.api.runtime.peers import PeerAddress
from omnigrid.api.runtime.process import ShardProcess
from omnigrid.api.runtime.settings import Settings

log = logging.getLogger("omnigrid.cluster")
# Shards recover from the store and the journal before they answer: a million
# entities take tens of seconds (BENCHMARKS.md), so be generous.
START_TIMEOUT_S = 900.0


def actor_name(shard_id: int) -> str:
    return f"omnigrid-shard-{shard_id}"


def local_node_id() -> str:
    return str(ray.get_runtime_context().get_node_id())


class RayDirectory:
    """Finds shard actors by name and asks them things, from any event loop."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self._handles: dict[int, Any] = {}

    async def _call(self, shard_id: int, method: str) -> Any:
        handle = self._handles.get(shard_id)
        if handle is None:
            handle = await asyncio.get_running_loop().run_in_executor(
                None, lambda: ray.get_actor(actor_name(shard_id), namespace=self.namespace)
            )
            self._handles[shard_id] = handle
        try:
            ref = getattr(handle, method).remote()
            return await asyncio.wrap_future(ref.future())
        except Exception:
            self._handles.pop(shard_id, None)  # look it up afresh next time
            raise

    async def address(self, shard_id: int) -> PeerAddress:
        address: PeerAddress = await self._call(shard_id, "peer_address")
        return address

    async def control(self, shard_id: int, method: str) -> Any:
        return await self._call(shard_id, method)


def init_ray(settings: Settings) -> str:
    """Join ``RAY_ADDRESS`` when set, else start a local Ray; say which."""
    address = os.environ.get("RAY_ADDRESS")
    ray.init(
        # "local": a Ray of its own, never a cluster /tmp/ray/ray_current_cluster names
        # (address=None follows that file, even to a head that died long ago)
        address=address or "local",
        namespace=settings.namespace,
        include_dashboard=False,
        logging_level=logging.WARNING,
        log_to_driver=True,
    )
    return address or "local"


def start_shards(settings: Settings) -> list[Any]:
    """Create the shard actors and wait until every one serves."""
    actor: Any = ray.remote(ShardProcess)
    handles = [
        actor.options(
            name=actor_name(i),
            namespace=settings.namespace,
            max_restarts=-1,
            max_concurrency=8,
            num_cpus=0,
        ).remote(i, settings.to_dict())
        for i in range(settings.shards)
    ]
    ray.get([h.info.remote() for h in handles], timeout=START_TIMEOUT_S)
    return handles


def stop_shards(handles: list[Any], budget_s: float) -> list[dict[str, Any]]:
    """Every shard stops cleanly at once, within ``budget_s``; what each did (a shard
    that did not answer in time: its error). Then the actors go."""
    stops = [handle.stop.remote(budget_s) for handle in handles]
    deadline = time.monotonic() + budget_s + 3  # one bound for all: they stop at once
    reports: list[dict[str, Any]] = []
    for shard_id, ref in enumerate(stops):
        try:
            reports.append(ray.get(ref, timeout=max(0.1, deadline - time.monotonic())))
        except Exception as e:  # it may be dead already, or too slow
            reports.append({"shard": shard_id, "error": repr(e)[:200]})
    for handle in handles:
        with contextlib.suppress(Exception):
            ray.kill(handle, no_restart=True)
    return reports
