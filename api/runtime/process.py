"""The Ray actor that hosts one grid process, and the process-wide tuning it applies.

Ray re-runs ``ShardProcess``'s constructor when the process dies, so the
constructor starts everything: a thread with its own event loop that runs a
``GridNode`` (HTTP, the peer stream, timed work, the write-behind). Ray's own
calls (address, info, metrics, audit) reach that loop through
``run_coroutine_threadsafe``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from omnigrid.actors.errors import GridError
from omnigrid.api.runtime import log_mask
from omnigrid.api.runtime.compose import open_node
from omnigrid.api.runtime.node import AUDIT_TIMEOUT_S, CONTROL_TIMEOUT_S
from omnigrid.api.runtime.peers import PeerAddress
from omnigrid.api.runtime.settings import Settings

T = TypeVar("T")
HANDOVER_TIMEOUT_S = 120.0  # a source's drain waits up to DRAIN_WAIT_S; a big slot's load more


class ShardProcess:
    """The Ray actor: runs a ``GridNode`` on a thread with its own event loop."""

    def __init__(self, shard_id: int, settings: dict[str, Any]) -> None:
        from omnigrid.api.runtime.cluster import RayDirectory, local_node_id

        logging.basicConfig(level=settings.get("log_level", "warning").upper())
        log_mask.install()  # no phone, email or ID number in clear in any log line
        # Ray starts its workers at nice 15 (below the raylet); a shard answers
        # requests and must not lose the CPU to whatever else runs on the node.
        # Done before the serving thread starts, which inherits it (root only).
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, 0, 0)
        self.settings = Settings.from_dict(settings)
        self.loop = _new_loop()
        self.node = open_node(shard_id, self.settings, RayDirectory(self.settings), local_node_id())
        if self.settings.host in ("0.0.0.0", "::"):  # peers on other nodes need an address
            import ray

            self.node.peer_host = str(ray.util.get_node_ip_address())  # type: ignore[no-untyped-call]
        started = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            try:
                self.loop.run_until_complete(self.node.start())
            except BaseException as e:
                failure.append(e)
                started.set()
                return
            tune_gc()
            self.node.metrics.watch_gc()
            started.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, name=f"omnigrid-shard-{shard_id}", daemon=True)
        self.thread.start()
        started.wait(60)
        if failure:
            raise RuntimeError(f"shard {shard_id} failed to start: {failure[0]!r}")

    def _on_loop(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(CONTROL_TIMEOUT_S)

    def node_id(self) -> str:
        return self.node.node_id

    def peer_address(self) -> PeerAddress:
        return self.node.address()

    def info(self) -> dict[str, Any]:
        async def read() -> dict[str, Any]:
            return self.node.info()

        return self._on_loop(read())

    def audit(self) -> dict[str, Any]:
        return asyncio.run_coroutine_threadsafe(self.node.audit(), self.loop).result(
            AUDIT_TIMEOUT_S
        )

    def metrics_text(self) -> str:
        async def read() -> str:
            return self.node.metrics.exposition()

        return self._on_loop(read())

    def sync_recent(self) -> dict[str, Any]:
        async def read() -> dict[str, Any]:
            return self.node.sync_window(60)

        return self._on_loop(read())

    def sync_all(self) -> dict[str, Any]:
        async def read() -> dict[str, Any]:
            return self.node.sync_window(900)

        return self._on_loop(read())

    def handover(self, step: str, args: list[Any]) -> Any:
        """A step of moving slots (api/runtime/rebalance.py), asked by the coordinator."""
        work = getattr(self.node.handover, step)(*args)
        return asyncio.run_coroutine_threadsafe(work, self.loop).result(HANDOVER_TIMEOUT_S)

    def start_job(self, what: str, shards: int | None, node: str | None = None) -> dict[str, Any]:
        """A new job, or its refusal as plain data (it crosses Ray to the asking process)."""
        try:
            return self._on_loop(self.node.start_job(what, shards, node))
        except GridError as e:
            return {"refused": e.code, "detail": e.detail}

    def reload_keys(self) -> None:
        self._on_loop(self.node.reload_keys())

    def stop(self, budget_s: float) -> dict[str, Any]:
        """A clean stop within ``budget_s``; what it did."""
        done = asyncio.run_coroutine_threadsafe(self.node.stop(budget_s), self.loop)
        return done.result(budget_s + 2)


def tune_gc() -> None:
    """Keep collector pauses proportional to young objects, not to the grid's state.

    Entities and reservations are long-lived, so whatever survives a
    generation-1 pass is frozen (moved out of the collector's view; reference
    counting still frees it). Measured here with ~600,000 reservations held:
    thresholds of (50,000, 20, 20) gave 263 ms generation-1 passes and full
    passes over a quarter of the heap gave p99 > 300 ms at saturation. The
    price: a reference cycle that outlives two young passes and then becomes
    garbage is never collected; the grid's own state holds no cycles, and
    ``omnigrid_gc_frozen_objects`` shows the frozen count for ops to watch.
    """

    def freeze_survivors(phase: str, info: dict[str, int]) -> None:
        if phase == "stop" and info["generation"] >= 1:
            gc.freeze()

    gc.collect()
    gc.freeze()
    gc.set_threshold(2_000, 10, 10)
    gc.callbacks.append(freeze_survivors)


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:  # pragma: no cover - uvloop is a dependency via uvicorn[standard]
        return asyncio.new_event_loop()
