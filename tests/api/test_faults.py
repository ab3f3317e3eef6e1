"""Faults under load, on real servers of the tests' own: the journal's Redis stalled
(SIGSTOP) for 1, 4 and 10 s, killed and restarted; PostgreSQL refusing connections
for 15 s; the embedded store's file locked and the embedded default's disk full.

After each: writes succeed again within 2 s and /readyz follows, no answer other
than 200/4xx/429/503, health keeps answering, every acknowledged write is present
and no write answered as failed is, live, after a clean restart and after a
kill -9, and ``omnigrid audit`` finds nothing. The scenario's pieces are
loadtest/faults.py's, which also measures it (BENCHMARKS.md: health latency,
writes/s, time to heal).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from loadtest.fault_makers import (
    RedisServer,
    fill_disk,
    lock_store,
    refuse_postgres,
    small_disk,
)
from loadtest.faults import run_faults
from tests.conftest import POSTGRES_ADMIN_DSN, Grid, PostgresDatabase, free_port, new_id

CARTS = 96
HEAL_S = 2.0
HEALTH_S = 3.0


@dataclass
class Fault:
    name: str
    action: Callable[[], None]
    refuses_writes: bool  # the journal's faults refuse writes; the store's must not


def check_faults(grid: Grid, faults: list[Fault]) -> None:
    """Each fault under load, then the checks live, after a clean restart and after kill -9."""
    result = run_faults(
        grid,
        [(f.name, f.action) for f in faults],
        new_id("f"),
        CARTS,
        threads=6,
        warmup_s=1.5,
        observe_s=3.0,
        say=lambda line: None,
    )
    tally = result.tally
    for fault, phase in zip(faults, result.phases, strict=True):
        assert result.checks[fault.name] == [], fault.name
        assert phase.heal_s is not None and phase.heal_s <= HEAL_S, phase
        assert phase.ready_s is not None and phase.ready_s <= HEAL_S, phase  # /readyz follows
        refused = sum(1 for t, s in tally.answers if s == 503 and phase.started <= t <= phase.ended)
        # the fault was felt: writes refused while the journal could not take them,
        # or (the store's fault) written on throughout
        assert (refused > 0) == fault.refuses_writes, (fault.name, refused)
        assert fault.refuses_writes or phase.during > 0, phase
    assert tally.statuses[200] > 0 and sum(tally.unknown) == 0, tally.statuses
    probe = result.probe
    assert probe.failures == {}, probe.failures
    # Health kept answering. Its latency (under 1 s; 0.41 s at worst in the fault run)
    # is measured by loadtest/faults.py, not here: this test shares two cores with the
    # grid and its own writers, so the bound here only catches the old wedge (over 5 s).
    assert max(probe.slowest.values()) < HEALTH_S, probe.slowest
    # refusals say what a client may know, never a driver's words
    assert {d.split(":", 1)[0] for d in tally.details} <= {"503 unavailable", "429 overloaded"}
    assert all("journal" in d or "store" in d or "429" in d for d in tally.details), tally.details
    assert result.checks["after a clean restart"] == []
    assert result.checks["after kill -9"] == []
    assert result.audit.returncode == 0, result.audit.stdout + result.audit.stderr


def test_redis_stalls_and_restarts_and_postgres_refusing_lose_and_resurrect_nothing(
    postgres: PostgresDatabase,
) -> None:
    redis = RedisServer(free_port())  # appendonly yes, appendfsync everysec
    redis.start()
    grid = Grid(OMNIGRID_REDIS_URL=redis.url, OMNIGRID_POSTGRES_DSN=postgres.dsn)

    def restart_redis() -> None:
        redis.kill()
        time.sleep(2)
        redis.start()

    try:
        check_faults(
            grid,
            [
                Fault("Redis stalled 1 s", lambda: redis.stall(1), True),
                Fault("Redis stalled 4 s", lambda: redis.stall(4), True),
                Fault("Redis stalled 10 s", lambda: redis.stall(10), True),
                Fault("Redis killed and restarted", restart_redis, True),
                Fault(
                    "PostgreSQL refuses 15 s",
                    lambda: refuse_postgres(POSTGRES_ADMIN_DSN, postgres.name, 15),
                    False,
                ),
            ],
        )
    finally:
        grid.stop()
        redis.remove()


def test_embedded_store_locked_and_disk_full_lose_and_resurrect_nothing() -> None:
    with small_disk(256) as data_dir:
        grid = Grid(data_dir=str(data_dir))
        try:
            check_faults(
                grid,
                [
                    Fault("store file locked 3 s", lambda: lock_store(data_dir, 3), False),
                    Fault("disk full 4 s", lambda: fill_disk(data_dir, 4), True),
                ],
            )
        finally:
            grid.stop()
