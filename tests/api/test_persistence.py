"""A whole grid on Redis (journal) and PostgreSQL (store), over HTTP: kills,
restarts, blocked store writes, passivation, and ``omnigrid audit``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import redis

from omnigrid.api.runtime.peers import OUTCOME_UNKNOWN
from omnigrid.persistence.store import PostgresStore
from tests.api.test_shard_restart import fill, wait_until_shard_restarted
from tests.conftest import REDIS_URL, Grid, PostgresDatabase, new_id, write_headers

TABLES = "omnigrid_snapshots, omnigrid_events"


def redis_postgres_grid(dsn: str, namespace: str) -> Grid:
    """A grid journaling to the machine's Redis and storing in PostgreSQL at ``dsn``."""
    return Grid(
        OMNIGRID_REDIS_URL=REDIS_URL, OMNIGRID_NAMESPACE=namespace, OMNIGRID_POSTGRES_DSN=dsn
    )


def audit(grid: Grid) -> tuple[int, str]:
    run = subprocess.run(
        [sys.executable, "-m", "omnigrid.api.runtime.cli", "audit", "--url", grid.url],
        capture_output=True,
        text=True,
        timeout=300,
    )
    return run.returncode, run.stdout + run.stderr


def metric(client: httpx.Client, name: str, label: str = "") -> float:
    """The sum of a metric's samples over every grid process (with ``label`` in them)."""
    total = 0.0
    for line in client.get("/metrics").text.splitlines():
        if line.startswith((name + "{", name + " ")) and label in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_whole_grid_killed_and_restarted_on_redis_and_postgres(
    postgres: PostgresDatabase, namespace: str
) -> None:
    grid = redis_postgres_grid(postgres.dsn, namespace)
    try:
        with httpx.Client(base_url=grid.url, timeout=10) as c:
            sku, uid, rid = fill(c)
            assert audit(grid)[0] == 0  # drained: now in PostgreSQL, journal trimmed
            r = redis.Redis.from_url(REDIS_URL)
            deadline = time.monotonic() + 5  # the trims run on a thread of their own
            while sum(r.xlen(f"og:{namespace}:journal:{i}") for i in (0, 1)):
                assert time.monotonic() < deadline, "the journal was never trimmed"
                time.sleep(0.05)
            assert r.get(f"og:{namespace}:view:stock:{sku}") is not None  # the hot copy
            # more changes that only the journal holds when the grid dies
            released = c.delete(f"/v1/skus/{sku}/reservations/{rid}", headers=write_headers())
            assert released.status_code == 200, released.text
            again = c.post(f"/v1/skus/{sku}/reservations", json={"qty": 4}, headers=write_headers())
            assert again.status_code == 201, again.text
        grid.kill()
        grid.start()
        with httpx.Client(base_url=grid.url, timeout=10) as c:
            stock = c.get(f"/v1/skus/{sku}/stock").json()
            assert (stock["on_hand"], stock["reserved"], stock["version"]) == (10, 4, 4)
            assert c.get(f"/v1/skus/{sku}/reservations/{rid}").json()["status"] == "released"
            assert c.get(f"/v1/carts/{uid}").json()["lines"][0]["added_via"] == "h5"
            again = c.post(
                f"/v1/skus/{sku}/reservations",
                json={"qty": 4},
                headers=write_headers("app", **{"Idempotency-Key": "res-1"}),
            )
            assert again.status_code == 201 and again.json()["reservation_id"] == rid
        code, report = audit(grid)
        assert code == 0 and " 0 mismatched" in report, report
        rows = postgres.execute(
            "SELECT version, channel, op FROM omnigrid_events WHERE key = %s ORDER BY version",
            "stock:" + sku,
        )
        assert rows == [
            (1, "pos", "stock.set"),
            (2, "app", "stock.reserve"),
            (3, "app", "stock.release"),
            (4, "app", "stock.reserve"),
        ]
    finally:
        grid.stop()


def test_killed_shard_under_reservation_load_never_over_commits(
    postgres: PostgresDatabase, namespace: str
) -> None:
    grid = redis_postgres_grid(postgres.dsn, namespace)
    try:
        with httpx.Client(base_url=grid.url, timeout=10) as c:
            skus = [new_id("hot") for _ in range(6)]
            for sku in skus:
                c.put(f"/v1/skus/{sku}/stock", json={"on_hand": 150}, headers=write_headers("pos"))
            acked: dict[str, int] = dict.fromkeys(skus, 0)
            unanswered: dict[str, int] = dict.fromkeys(skus, 0)
            lock = threading.Lock()
            stop = threading.Event()

            def buyer(worker: int) -> None:
                with httpx.Client(base_url=grid.url, timeout=10) as w:
                    i = 0
                    while not stop.is_set():
                        sku = skus[(worker + i) % len(skus)]
                        i += 1
                        try:
                            r = w.post(
                                f"/v1/skus/{sku}/reservations",
                                json={"qty": 1, "ttl_s": 3600},
                                headers=write_headers("miniprogram"),
                            )
                        except httpx.HTTPError:
                            # the killed process took it: applied or not, nobody knows
                            with lock:
                                unanswered[sku] += 1
                            continue
                        if r.status_code == 201:
                            with lock:
                                acked[sku] += 1
                        elif r.status_code == 503 and OUTCOME_UNKNOWN in r.text:
                            # forwarded to the killed owner, which may have applied it
                            with lock:
                                unanswered[sku] += 1

            threads = [threading.Thread(target=buyer, args=(n,)) for n in range(4)]
            for t in threads:
                t.start()
            time.sleep(1.0)
            victim = c.get("/v1/cluster").json()["shards"][0]
            os.kill(victim["pid"], signal.SIGKILL)
            wait_until_shard_restarted(c, 0, victim["pid"])
            time.sleep(1.0)
            stop.set()
            for t in threads:
                t.join()
            for sku in skus:
                stock = c.get(f"/v1/skus/{sku}/stock").json()
                assert stock["reserved"] <= stock["on_hand"] == 150, stock
                # every acknowledged reservation kept; none answered as refused applied
                assert acked[sku] <= stock["reserved"] <= acked[sku] + unanswered[sku], (
                    stock,
                    acked[sku],
                    unanswered[sku],
                )
        code, report = audit(grid)
        assert code == 0, report
    finally:
        grid.stop()


def test_blocked_store_writes_queue_then_drain_and_audit_is_zero(
    postgres: PostgresDatabase, namespace: str
) -> None:
    PostgresStore(postgres.dsn).close()  # the schema, made by its owner
    postgres.execute(f"GRANT SELECT, INSERT, UPDATE ON {TABLES} TO {postgres.role}")
    postgres.execute(f"GRANT SELECT ON omnigrid_schema_migrations TO {postgres.role}")
    # the keys every process must read before it lets anyone in (fail closed)
    postgres.execute(f"GRANT SELECT ON omnigrid_keys, omnigrid_settings TO {postgres.role}")
    grid = redis_postgres_grid(postgres.role_dsn, namespace)
    try:
        with httpx.Client(base_url=grid.url, timeout=10) as c:
            sku = new_id("sku")
            c.put(f"/v1/skus/{sku}/stock", json={"on_hand": 10**6}, headers=write_headers("pos"))
            assert audit(grid)[0] == 0  # stored
            postgres.execute(f"REVOKE INSERT, UPDATE ON {TABLES} FROM {postgres.role}")
            uids = [new_id("u") for _ in range(60)]
            for i, uid in enumerate(uids):
                r = c.post(
                    f"/v1/carts/{uid}/lines",
                    json={"sku": sku, "qty": 1 + i % 4},
                    headers=write_headers("h5"),
                )
                assert r.status_code == 200, r.text  # the journal is enough to acknowledge
            time.sleep(1.0)  # a few drains fail meanwhile
            assert metric(c, "omnigrid_writebehind_queue_events") >= 60
            assert metric(c, "omnigrid_writebehind_failures") >= 1
            assert postgres.execute("SELECT count(*) FROM omnigrid_snapshots") == [(1,)]
            ready = c.get("/readyz")
            assert ready.status_code == 503 and "the store has refused writes" in ready.text
            postgres.execute(f"GRANT INSERT, UPDATE ON {TABLES} TO {postgres.role}")
            code, report = audit(grid)
            assert code == 0 and "checked 61 live entities: 0 mismatched" in report, report
            assert metric(c, "omnigrid_writebehind_queue_events") == 0
            assert postgres.execute("SELECT count(*) FROM omnigrid_snapshots") == [(61,)]
            assert c.get("/readyz").status_code == 200
    finally:
        grid.stop()


def test_passivation_under_a_small_budget_keeps_every_entity() -> None:
    grid = Grid(OMNIGRID_MAX_RESIDENT="15", OMNIGRID_WRITEBEHIND_INTERVAL_S="0.05")
    try:
        with httpx.Client(base_url=grid.url, timeout=10) as c:
            sku = new_id("sku")
            c.put(f"/v1/skus/{sku}/stock", json={"on_hand": 10**6}, headers=write_headers("pos"))
            carts = {}
            for i in range(120):
                uid = new_id("u")
                carts[uid] = c.post(
                    f"/v1/carts/{uid}/lines",
                    json={"sku": sku, "qty": 1 + i % 5},
                    headers=write_headers("app"),
                ).json()
            deadline = time.monotonic() + 10
            while metric(c, "omnigrid_passivated_entities") < 90:
                assert time.monotonic() < deadline, "nothing was passivated"
                time.sleep(0.2)
            assert metric(c, "omnigrid_shard_entities", 'kind="cart"') <= 30
            for uid, view in carts.items():
                assert c.get(f"/v1/carts/{uid}").json() == view
            code, report = audit(grid)
            assert code == 0, report
    finally:
        grid.stop()
