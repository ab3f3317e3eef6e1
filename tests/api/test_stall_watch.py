"""The stall watch names what held a loop: a profiling aid must point at the culprit."""

from __future__ import annotations

import asyncio
import time

from omnigrid.api.runtime.stall_watch import StallWatch


def hold_the_loop_for_a_while() -> None:
    time.sleep(0.08)  # what a checkpoint or a big pack on the loop looks like


def caught_at(watch: StallWatch, where: str) -> int:
    """Stalls whose stack starts at ``where``. A shared machine that keeps the idle
    loop off its CPU for 20 ms makes a stall of its own (in ``select``): a true
    one, but not what these tests provoke, so they count only their own."""
    return sum(n for stack, n in watch.stalls.items() if stack.startswith(where))


def test_a_stalled_loop_is_caught_once_per_stall_with_its_stack() -> None:
    async def run() -> StallWatch:
        watch = StallWatch(0, threshold_s=0.02)
        beat = asyncio.get_running_loop().create_task(watch.run())
        await asyncio.sleep(0.05)  # the thread is watching
        for _ in range(3):
            hold_the_loop_for_a_while()
            await asyncio.sleep(0.03)
        await asyncio.sleep(0.05)  # a loop that runs freely is not a stall
        beat.cancel()
        return watch

    watch = asyncio.run(run())
    # each hold caught once, at the culprit
    assert caught_at(watch, "test_stall_watch.py:hold_the_loop_for_a_while") == 3, watch.stalls
    assert watch.classes["blocked"] >= 3  # asleep: neither on a CPU nor waiting for one
    assert sum(watch.classes.values()) == watch.count


def test_a_loop_busy_on_the_cpu_is_told_from_one_that_waits() -> None:
    async def run() -> StallWatch:
        watch = StallWatch(0, threshold_s=0.02)
        beat = asyncio.get_running_loop().create_task(watch.run())
        await asyncio.sleep(0.05)
        deadline = time.monotonic() + 0.08
        while time.monotonic() < deadline:  # a CPU-bound callback
            pass
        await asyncio.sleep(0.05)
        beat.cancel()
        return watch

    watch = asyncio.run(run())
    assert caught_at(watch, "test_stall_watch.py:run") == 1, watch.stalls
    # on a CPU, or waiting for one: never asleep (only the machine's own stalls are)
    assert watch.classes["busy"] + watch.classes["starved"] >= 1, watch.classes
    assert watch.classes["blocked"] <= watch.count - 1, watch.classes
