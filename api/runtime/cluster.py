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
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from omnigrid.api.http.cluster_jobs import MAX_SHARDS
from omnigrid.api.runtime.peers import PeerAddress
from omnigrid.api.runtime.placement import place_new
from omnigrid.api.runtime.process import ShardProcess
from omnigrid.api.runtime.settings import Settings

log = logging.getLogger("omnigrid.cluster")
# Shards recover from the store and the journal before they answer: a million
# entities take tens of seconds (BENCHMARKS.md), so be generous.
START_TIMEOUT_S = 900.0
SHARD_CPUS = 0.01  # a node with N CPUs holds up to 100 N shard processes
NAME_FREED_S = 30.0  # a stopped shard's actor name is free again within this


def actor_name(shard_id: int) -> str:
    return f"omnigrid-shard-{shard_id}"


def local_node_id() -> str:
    return str(ray.get_runtime_context().get_node_id())


class RayDirectory:
    """Finds shard actors by name, asks them things and starts or stops them, from any
    event loop."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.namespace = settings.namespace
        self._handles: dict[int, Any] = {}

    async def _handle(self, shard_id: int) -> Any:
        handle = self._handles.get(shard_id)
        if handle is None:
            handle = await asyncio.get_running_loop().run_in_executor(
                None, lambda: ray.get_actor(actor_name(shard_id), namespace=self.namespace)
            )
            self._handles[shard_id] = handle
        return handle

    async def _call(self, shard_id: int, method: str, *args: Any) -> Any:
        handle = await self._handle(shard_id)
        try:
            ref = getattr(handle, method).remote(*args)
            return await asyncio.wrap_future(ref.future())
        except Exception:
            self._handles.pop(shard_id, None)  # look it up afresh next time
            raise

    async def address(self, shard_id: int) -> PeerAddress:
        address: PeerAddress = await self._call(shard_id, "peer_address")
        return address

    async def control(self, shard_id: int, method: str, *args: Any) -> Any:
        return await self._call(shard_id, method, *args)

    async def start_shard(self, shard_id: int, node: str | None = None) -> None:
        """A shard process (a scale-up, or a shard changing node), on ``node`` while that
        node lives, serving once this returns."""
        deadline = time.monotonic() + NAME_FREED_S
        while True:
            try:
                handle = spawn(shard_id, self.settings, detached=True, node=node)
                break
            except ValueError:  # the name of the shard just stopped is not yet free
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)
        ref = handle.info.remote()
        await asyncio.wait_for(asyncio.wrap_future(ref.future()), START_TIMEOUT_S)
        self._handles[shard_id] = handle

    async def stop_shard(self, shard_id: int, budget_s: float) -> None:
        """A shard left without slots stops cleanly, then goes for good (one that does not
        run: nothing to do)."""
        try:
            handle = await self._handle(shard_id)
        except ValueError:  # no actor by that name
            return
        ref = handle.stop.remote(budget_s)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.wrap_future(ref.future()), budget_s + 3)
        ray.kill(handle, no_restart=True)
        self._handles.pop(shard_id, None)

    async def nodes(self) -> list[str]:
        """The live Ray nodes a shard can run on."""
        found = await asyncio.get_running_loop().run_in_executor(None, ray.nodes)
        return shard_nodes(found)

    async def placement(self, shard_ids: range) -> dict[int, str | None]:
        """Shard -> the node its process runs on (None: it does not answer)."""

        async def node_of(shard_id: int) -> str | None:
            try:
                return str(await asyncio.wait_for(self._call(shard_id, "node_id"), 10.0))
            except Exception:
                return None

        nodes = await asyncio.gather(*(node_of(s) for s in shard_ids))
        return dict(zip(shard_ids, nodes, strict=True))


def shard_nodes(found: list[dict[str, Any]]) -> list[str]:
    """Of ``ray.nodes()``: the live ones with CPU for a shard (a head started with
    ``--num-cpus 0`` runs none; a shard asked there would land elsewhere every time)."""
    return sorted(
        str(n["NodeID"])
        for n in found
        if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) >= SHARD_CPUS
    )


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


def spawn(
    shard_id: int, settings: Settings, detached: bool = False, node: str | None = None
) -> Any:
    """One shard process on ``node`` (anywhere once that node is gone; no node: spread by
    Ray), restarted by Ray when it dies.

    ``detached``: a shard a scale job starts from shard 0's process would otherwise
    share that process's fate (Ray ends an actor whose creator died, and does not
    restart it); the driver stops every shard by name, and a driver that crashed
    leaves them to ``stop_leftovers`` on the next start."""
    actor: Any = ray.remote(ShardProcess)
    return actor.options(
        name=actor_name(shard_id),
        namespace=settings.namespace,
        max_restarts=-1,
        max_concurrency=8,
        # a token share of a CPU: measured here, Ray 2.60 ignored a soft node affinity
        # for 0-CPU actors half the time (and SPREAD put four of them on one of two nodes)
        num_cpus=SHARD_CPUS,
        scheduling_strategy=(
            NodeAffinitySchedulingStrategy(node, soft=True) if node is not None else "SPREAD"
        ),
        lifetime="detached" if detached else None,
    ).remote(shard_id, settings.to_dict())


def start_shards(settings: Settings) -> list[Any]:
    """Create the shard actors and wait until every one serves: shard 0, which runs the
    cluster jobs, next to this driver, the others evenly over the live nodes
    (placement.py)."""
    here = local_node_id()
    alive = shard_nodes(ray.nodes())  # type: ignore[no-untyped-call]
    nodes: dict[int, str | None] = {0: here}
    nodes.update(place_new(nodes, alive or [here], range(1, settings.shards)))
    handles = [spawn(i, settings, node=nodes[i]) for i in range(settings.shards)]
    ray.get([h.info.remote() for h in handles], timeout=START_TIMEOUT_S)
    return handles


def running_shards(namespace: str) -> list[Any]:
    """The shard actors there are now (a scale job may have added or removed some)."""
    handles = []
    for shard_id in range(MAX_SHARDS):
        try:
            handles.append(ray.get_actor(actor_name(shard_id), namespace=namespace))
        except ValueError:  # none by that name (never started, stopped, or dead)
            continue
    return handles


def stop_leftovers(namespace: str) -> int:
    """Shard actors an earlier run left in a Ray that outlived it (a crashed driver on
    a cluster started with ``ray start``): killed, never served from again, so the
    shards this start makes are the only ones. How many there were."""
    leftovers = running_shards(namespace)
    for handle in leftovers:
        with contextlib.suppress(Exception):
            ray.kill(handle, no_restart=True)
    return len(leftovers)


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
