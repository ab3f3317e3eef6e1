"""Slots moving online: each process's part in a hand-over, and the jobs that drive them.

``Handover`` is one process's part (actors/handover.py has the why): as a source
it freezes slots and stores their changes (``prepare``), later forgets them
(``release``) or serves them again (``abort``); as a target it loads them from
the store (``take_in``); every process adopts each new map (``adopt``).

``Rebalancer`` runs in shard 0's process, one job at a time: ``scale`` starts
the new shard processes, moves slots in chunks (one source and one target a
chunk, the fewest moves to even counts), then stops the shards left without
slots; ``rebalance`` also evens the shards over the nodes (placement.py: a
node that joined gets its share) and ``drain`` moves every shard off a node:
a shard changing node gives its slots away, stops, starts on its new node and
takes its share again. A chunk is: the source prepares, the new map
is stored (from then on it is the truth: a process Ray restarts reads it), the
target takes the slots in, the source releases them, every other process
adopts the map. A chunk that fails before the map is stored is aborted and
tried again; after, the target is asked again until it has the slots.

A source left frozen by a coordinator that died looks at the stored map after
``FREEZE_LEASE_S``: it releases the slots if the map gave them away, else it
serves them again, so no slot stays refused for good and no slot is served by
two shards.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from omnigrid.actors import handover
from omnigrid.actors.errors import GridError, Unavailable
from omnigrid.actors.shard import Shard
from omnigrid.actors.slots import SlotMap, slot_ranges
from omnigrid.api.http.cluster_jobs import BUSY, MAX_SHARDS
from omnigrid.api.runtime.placement import COORDINATOR, Moves, place_new, resolve_node, spread
from omnigrid.api.runtime.router import Router
from omnigrid.persistence.cluster_state import ClusterState
from omnigrid.persistence.store import Store
from omnigrid.persistence.writebehind import WriteBehind

log = logging.getLogger("omnigrid.rebalance")

DRAIN_WAIT_S = 30.0  # a source that cannot store its slots' changes by then gives up
FREEZE_LEASE_S = 60.0  # a frozen source with no word from the coordinator looks itself
ATTEMPTS = 5  # a chunk is tried this often (a source restarting meanwhile) before failing
RETRY_PAUSE_S = 2.0


class Shards(Protocol):
    """How the coordinator reaches the shard processes and the nodes (Ray, in a real grid)."""

    async def control(self, shard_id: int, method: str, *args: Any) -> Any: ...

    async def start_shard(self, shard_id: int, node: str | None = None) -> None: ...

    async def stop_shard(self, shard_id: int, budget_s: float) -> None: ...

    async def nodes(self) -> list[str]: ...

    async def placement(self, shard_ids: range) -> dict[int, str | None]: ...


@dataclass(frozen=True)
class JobPlan:
    """A job, decided when it is asked."""

    target: int  # shards at the end
    moves: Moves  # shards started, and shards that change node
    evacuate: dict[int, int]  # slot -> owner: the moving shards' slots go first
    settle: dict[int, int]  # slot -> owner: then every shard gets an even share
    drained: str | None  # a drain's node

    @property
    def slots_total(self) -> int:
        return len(self.evacuate) + len(self.settle)


class Handover:
    """This process's part in moving slots."""

    def __init__(
        self,
        shard: Shard,
        writebehind: WriteBehind,
        store: Store,
        router: Router,
        state: ClusterState,
    ) -> None:
        self.shard = shard
        self.writebehind = writebehind
        self.store = store
        self.router = router
        self.state = state
        self._lease: asyncio.Task[None] | None = None

    async def prepare(self, slots: list[int]) -> int:
        """Freeze the slots and store every change of theirs; how many entities they hold."""
        keys = handover.freeze(self.shard, slots)
        deadline = time.monotonic() + DRAIN_WAIT_S
        try:
            while handover.unstored(self.shard, slots):
                if time.monotonic() > deadline:
                    raise Unavailable("the store did not take the slots' changes in time")
                if not await self.writebehind.drain(force=True):
                    raise Unavailable("the store refuses the slots' changes")
                await asyncio.sleep(0.01)  # a drain with nothing to take never yields
        except BaseException:
            handover.thaw(self.shard, slots)
            raise
        self._watch_lease(slots)
        return len(keys)

    async def confirm(self, slots: list[int]) -> bool:
        """Whether the slots are still frozen here (their lease restarted): asked once
        the new map is stored, so a lease that ran out before that cannot leave two
        shards serving them."""
        if not set(slots) <= self.shard.frozen:
            return False
        self._watch_lease(slots)
        return True

    async def take_in(self, wire: list[Any]) -> int:
        """Load the slots this map gives this shard from the store, then take the map."""
        slot_map = SlotMap.from_wire(wire)
        me = self.shard.shard_id
        old = self.shard.slot_map.owners
        gained = [s for s, owner in enumerate(slot_map.owners) if owner == me and old[s] != me]
        snapshots = await asyncio.to_thread(lambda: list(self.store.scan(slot_ranges(gained))))
        taken = handover.take_in(self.shard, slot_map, snapshots)
        self.router.adopt(slot_map)
        return taken

    async def release(self, wire: list[Any]) -> int:
        """The map gives the frozen slots away: forget their entities."""
        self._end_lease()
        slot_map = SlotMap.from_wire(wire)
        self.router.adopt(slot_map)
        return handover.release(self.shard, slot_map)

    async def abort(self, slots: list[int]) -> None:
        self._end_lease()
        handover.thaw(self.shard, slots)

    async def adopt(self, wire: list[Any]) -> None:
        self.router.adopt(SlotMap.from_wire(wire))

    def _watch_lease(self, slots: list[int]) -> None:
        self._end_lease()
        self._lease = asyncio.get_running_loop().create_task(self._lease_over(slots))

    def _end_lease(self) -> None:
        if self._lease is not None:
            self._lease.cancel()
            self._lease = None

    async def _lease_over(self, slots: list[int]) -> None:
        await asyncio.sleep(FREEZE_LEASE_S)
        self._lease = None
        while True:
            try:
                wire = await asyncio.to_thread(self.state.slot_map)
                break
            except Exception as e:  # the store is away: stay frozen, look again
                log.warning("a frozen shard cannot read the slot map: %r", e)
                await asyncio.sleep(RETRY_PAUSE_S)
        stored = SlotMap.from_wire(wire) if wire is not None else None
        me = self.shard.shard_id
        if stored is not None and any(stored.owners[s] != me for s in slots):
            log.warning("shard %d: its coordinator went away; the stored map moved the slots", me)
            self.router.adopt(stored)
            handover.release(self.shard, stored)
        else:
            log.warning("shard %d: its coordinator went away; serving the slots again", me)
            handover.thaw(self.shard, slots)


class Rebalancer:
    """Shard 0's process: runs scale and rebalance jobs, one at a time."""

    def __init__(
        self,
        shard_id: int,
        handover: Handover,
        shards: Shards,
        state: ClusterState,
        stop_budget_s: float,
        chunk_slots: int = 1024,
    ) -> None:
        self.shard_id = shard_id
        self.chunk_slots = chunk_slots
        self.handover = handover
        self.shards = shards
        self.state = state
        self.stop_budget_s = stop_budget_s
        self.job: dict[str, Any] | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def slot_map(self) -> SlotMap:
        return self.handover.router.slot_map

    async def start(self, what: str, shards: int | None, node: str | None = None) -> dict[str, Any]:
        """A new job (``scale`` to ``shards``, ``rebalance``, or ``drain`` of ``node``),
        running from now on."""
        if self.job is not None and self.job["state"] == "running":
            raise GridError(BUSY, f"job {self.job['job_id']} is still running")
        plan = await self._planned(what, shards, node)
        job_id = "job_" + secrets.token_hex(6)
        job = await asyncio.to_thread(
            self.state.new_job, job_id, what, plan.target, plan.slots_total, plan.drained
        )
        self.job = job
        # held here: the loop keeps only a weak reference to a task
        self._task = asyncio.get_running_loop().create_task(self._run(job, plan))
        return dict(job)

    async def _planned(self, what: str, shards: int | None, node: str | None) -> JobPlan:
        """What the job will do, decided once (a resize keeps the owners, so it holds);
        a drain's node is stored as drained before the job starts."""
        current = self.slot_map.shard_count
        target = shards if shards is not None else current
        if not 1 <= target <= MAX_SHARDS:
            raise GridError("invalid_request", f"shards must be 1 to {MAX_SHARDS}")
        alive = await self.shards.nodes()
        placement = await self.shards.placement(range(current))
        drained = set(await asyncio.to_thread(self.state.drained_nodes)) & set(alive)
        chosen = None
        if what == "drain":
            chosen = resolve_node(node or "", alive)
            if chosen is None:
                raise GridError("not_found", f"no live node is (or uniquely starts with) {node!r}")
            if placement.get(COORDINATOR) == chosen:
                raise GridError(
                    BUSY, "this node runs shard 0, which coordinates the grid: stop the grid"
                )
            drained.add(chosen)
        takers = [n for n in alive if n not in drained]
        if not takers:
            raise GridError(BUSY, "no node would be left to take the shards")
        if what == "scale":
            moves = Moves(start=place_new(placement, takers, range(current, target)))
        else:  # a rebalance, or a drain: every node that takes work gets its share
            moves = spread(placement, takers, grow_to=min(MAX_SHARDS, len(takers)))
            target = current + len(moves.start)
        if chosen is not None:
            await asyncio.to_thread(self.state.save_drained_nodes, sorted(drained))
        keep = [s for s in range(target) if s not in moves.relocate]
        evacuate = self.slot_map.evened_over(keep) if moves.relocate else {}
        settle = self.slot_map.moved(evacuate).evened_over(range(target))
        return JobPlan(target, moves, evacuate, settle, chosen)

    async def fail_stale_jobs(self) -> None:
        """At start: a job the last coordinator left running will never finish."""
        for job in await asyncio.to_thread(self.state.running_jobs):
            job.update(state="failed", finished_at=time.time(), error="the coordinator restarted")
            await asyncio.to_thread(self.state.save_job, job)

    async def _run(self, job: dict[str, Any], plan: JobPlan) -> None:
        """New shards start; shards that change node give their slots away, stop and
        start on their node; slots even out over every shard; shards past the target stop."""
        try:
            before = self.slot_map.shard_count
            if plan.moves.start:
                for shard_id, node in plan.moves.start.items():
                    await self.shards.start_shard(shard_id, node)
                await self._publish(self.slot_map.resized(plan.target))
            await self._move_all(job, plan.evacuate)
            for shard_id, node in plan.moves.relocate.items():
                await self.shards.stop_shard(shard_id, self.stop_budget_s)
                await self.shards.start_shard(shard_id, node)
                job["relocated"][str(shard_id)] = node
                await asyncio.to_thread(self.state.save_job, job)
            await self._move_all(job, plan.settle)
            if plan.target < before:
                await self._publish(self.slot_map.resized(plan.target))
                for shard_id in range(plan.target, before):
                    await self.shards.stop_shard(shard_id, self.stop_budget_s)
            job["state"] = "done"
        except Exception as e:
            log.exception("cluster job %s failed", job["job_id"])
            job.update(state="failed", error=repr(e)[:300])
        job["finished_at"] = time.time()
        with contextlib.suppress(Exception):
            await asyncio.to_thread(self.state.save_job, job)

    async def _move_all(self, job: dict[str, Any], plan: dict[int, int]) -> None:
        """``plan``'s slots, a chunk at a time, the job's progress stored after each."""
        for (source, dest), slots in chunks(plan, self.slot_map.owners, self.chunk_slots):
            started = time.monotonic()
            job["entities_moved"] += await self._move(source, dest, slots)
            frozen_ms = round((time.monotonic() - started) * 1000, 1)
            job["longest_freeze_ms"] = max(job["longest_freeze_ms"], frozen_ms)
            job["slots_moved"] += len(slots)
            await asyncio.to_thread(self.state.save_job, job)

    async def _ask(self, shard_id: int, step: str, *args: Any) -> Any:
        if shard_id == self.shard_id:
            method: Callable[..., Awaitable[Any]] = getattr(self.handover, step)
            return await method(*args)
        return await self.shards.control(shard_id, "handover", step, list(args))

    async def _publish(self, slot_map: SlotMap) -> None:
        """Store a map, then every process adopts it (a process away adopts it on start)."""
        await asyncio.to_thread(self.state.save_slot_map, slot_map.to_wire())
        await self._tell_all(slot_map, ())

    async def _tell_all(self, slot_map: SlotMap, told: tuple[int, ...]) -> None:
        others = [s for s in range(slot_map.shard_count) if s not in told]
        answers = await asyncio.gather(
            *(self._ask(s, "adopt", slot_map.to_wire()) for s in others), return_exceptions=True
        )
        for shard_id, answer in zip(others, answers, strict=True):
            if isinstance(answer, Exception):  # it learns the map on "moved", or on start
                log.warning(
                    "shard %d did not adopt slot map %d: %r", shard_id, slot_map.version, answer
                )

    async def _move(self, source: int, dest: int, slots: list[int]) -> int:
        """One chunk's hand-over; how many entities it moved."""
        entities = 0
        for attempt in range(1, ATTEMPTS + 1):
            try:
                entities = await self._ask(source, "prepare", slots)
            except Exception as e:
                if attempt == ATTEMPTS:
                    raise
                log.warning("slots %d..: source %d not ready (%r); again", slots[0], source, e)
                await asyncio.sleep(RETRY_PAUSE_S * attempt)
                continue
            break
        new = self.slot_map.moved(dict.fromkeys(slots, dest))
        try:
            await asyncio.to_thread(self.state.save_slot_map, new.to_wire())
        except Exception:
            with contextlib.suppress(Exception):
                await self._ask(source, "abort", slots)
            raise
        if not await self._confirmed(source, slots):
            # the source serves the slots again (its lease ran out): they stay its own
            await self._publish(new.moved(dict.fromkeys(slots, source)))
            raise Unavailable(f"shard {source} stopped waiting for its hand-over")
        # The stored map is the truth now: the target must take the slots in (a
        # target Ray restarts reads them at start), then the source lets go.
        for _ in range(10 * ATTEMPTS):
            try:
                await self._ask(dest, "take_in", new.to_wire())
                break
            except Exception as e:
                log.warning(
                    "slots %d..: target %d has not taken them (%r); again", slots[0], dest, e
                )
                await asyncio.sleep(RETRY_PAUSE_S)
        with contextlib.suppress(Exception):  # a source away reads the stored map on start
            await self._ask(source, "release", new.to_wire())
        await self._tell_all(new, (source, dest))
        return entities

    async def _confirmed(self, source: int, slots: list[int]) -> bool:
        try:
            return bool(await self._ask(source, "confirm", slots))
        except Exception:  # away: a source Ray restarts reads the stored map at start
            return True


def chunks(
    plan: dict[int, int], owners: tuple[int, ...], size: int
) -> list[tuple[tuple[int, int], list[int]]]:
    """The plan's moves grouped by (source, target), in chunks of ``size`` slots."""
    by_pair: dict[tuple[int, int], list[int]] = {}
    for slot in sorted(plan):
        by_pair.setdefault((owners[slot], plan[slot]), []).append(slot)
    return [
        (pair, slots[i : i + size])
        for pair, slots in by_pair.items()
        for i in range(0, len(slots), size)
    ]
