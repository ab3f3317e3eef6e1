"""Where a shard's event loop is when it stops answering: a profiling aid for the tail.

A request that waits more than 25 ms inside the grid waited for its loop, which
was running something else: a long callback (a checkpoint, packing a big batch,
a collector pass) or a queue of short ones. ``StallWatch`` finds out which: a
coroutine on the loop beats every ``BEAT_S``; a thread of its own looks at that
beat and, when it is more than ``threshold_s`` old, takes the loop thread's stack
(``sys._current_frames``) once per stall. The stacks are counted by their last
few frames of the grid's own code, and every ``REPORT_EVERY_S`` the commonest
go to the log. Each stall is also classed by what the kernel says the loop thread
did meanwhile (``/proc/self/task/<tid>/schedstat``: nanoseconds on a CPU, and
waiting in a run queue): mostly on a CPU (busy: Python or C), mostly runnable but
not running (starved of CPU), or neither (blocked: waiting for the GIL, or I/O).
Off unless ``OMNIGRID_STALL_WATCH_MS`` is set: it costs two wakeups every 5 ms per
process.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
import traceback
from collections import Counter

log = logging.getLogger("omnigrid.stalls")
BEAT_S = 0.005
REPORT_EVERY_S = 30.0
FRAMES = 4  # frames kept per stack: where the loop was, and what called it


class StallWatch:
    def __init__(self, shard_id: int, threshold_s: float) -> None:
        self.shard_id = shard_id
        self.threshold_s = threshold_s
        self.stalls: Counter[str] = Counter()  # stack summary -> stalls caught there
        self.classes: Counter[str] = Counter()  # busy, starved, blocked -> stalls
        self.count = 0
        self._beat = time.monotonic()
        self._loop_thread = threading.get_ident()  # built on the loop's thread
        self._schedstat = f"/proc/self/task/{threading.get_native_id()}/schedstat"
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._watch, name=f"stall watch {shard_id}", daemon=True
        )

    async def run(self) -> None:
        """The beat, on the loop it watches; the watching thread starts with it."""
        self._thread.start()
        try:
            while True:
                self._beat = time.monotonic()
                await asyncio.sleep(BEAT_S)
        finally:
            self._stop.set()

    def _watch(self) -> None:
        caught_beat = 0.0
        reported = time.monotonic()
        fresh = (time.monotonic(), *self._sched())  # the last reading while the loop ran
        while not self._stop.wait(BEAT_S):
            beat = self._beat
            now = time.monotonic()
            if now - beat <= 2 * BEAT_S:
                fresh = (now, *self._sched())
            elif now - beat > self.threshold_s and beat != caught_beat:
                caught_beat = beat  # one stack per stall
                frame = sys._current_frames().get(self._loop_thread)
                if frame is not None:
                    self.count += 1
                    self.stalls[summary(frame)] += 1
                    self.classes[classify(fresh, (now, *self._sched()))] += 1
            if now - reported > REPORT_EVERY_S and self.stalls:
                reported = now
                top = "; ".join(f"{n}x {where}" for where, n in self.stalls.most_common(6))
                log.warning(
                    "shard %d: %d loop stalls over %.0f ms so far (%s); commonest: %s",
                    self.shard_id,
                    self.count,
                    self.threshold_s * 1000,
                    ", ".join(f"{kind} {n}" for kind, n in self.classes.most_common()),
                    top,
                )

    def _sched(self) -> tuple[int, int]:
        """The loop thread's nanoseconds on a CPU and waiting in a run queue."""
        try:
            with open(self._schedstat) as f:
                on_cpu, waiting, _ = f.read().split()
            return int(on_cpu), int(waiting)
        except (OSError, ValueError):  # no schedstat here: every stall reads as blocked
            return 0, 0


def classify(before: tuple[float, int, int], after: tuple[float, int, int]) -> str:
    """What the loop thread did between two readings (monotonic s, CPU ns, queue ns)."""
    elapsed_ns = (after[0] - before[0]) * 1e9
    if elapsed_ns <= 0:
        return "blocked"
    if (after[1] - before[1]) / elapsed_ns > 0.5:
        return "busy"
    if (after[2] - before[2]) / elapsed_ns > 0.5:
        return "starved"
    return "blocked"


def summary(frame: object) -> str:
    """The innermost frames of a stack, innermost first, as ``file:function``."""
    stack = traceback.extract_stack(frame)  # type: ignore[arg-type]
    innermost = [f"{f.filename.rsplit('/', 1)[-1]}:{f.name}" for f in reversed(stack)]
    return " < ".join(innermost[:FRAMES])
