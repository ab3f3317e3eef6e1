"""What one stored change costs the write-behind: CPU per event row and per snapshot.

    python loadtest/store_bench.py [--rows 600000] [--batches 100] [--postgres DSN]

Fills a fresh embedded store (SQLite, under a temporary directory) with ``--rows``
events of random keys, as a grid that has run a while holds, then writes
``--batches`` batches of 1,000 events and 333 snapshots (order views of ~500 bytes)
the way the write-behind does (``Store.write``), and prints the CPU seconds of this
process per 1,000 events. Each configuration is measured twice, alternating, in one
run: today's tables, and today's with the ``(key, at)`` index that migration 0006
dropped put back (``with key_at``). With ``--postgres`` the same against PostgreSQL
(its server's CPU is not counted: only the client's, so compare SQLite's figures).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

from omnigrid.persistence.events import Event
from omnigrid.persistence.store import PostgresStore, Snapshot, SqliteStore, Store

VIEW = {
    "order_id": "o" * 20,
    "status": "paid",
    "lines": [{"sku": f"sku-{i}", "qty": 1, "unit_price": 1000} for i in range(3)],
    "note": "y" * 300,
}
DROP_KEY_AT = "DROP INDEX IF EXISTS omnigrid_events_key_at"
KEY_AT = "CREATE INDEX IF NOT EXISTS omnigrid_events_key_at ON omnigrid_events (key, at)"


def batch(events: int) -> tuple[list[Snapshot], list[Event]]:
    now = time.time()
    evs = [
        Event("order", f"order:o{random.getrandbits(64):x}", 1, "app", "order.pay", now, VIEW)
        for _ in range(events)
    ]
    snaps = [
        Snapshot(e.key, "order", random.randrange(16384), 1, now, b"s" * 400, VIEW)
        for e in evs[: events // 3]
    ]
    return snaps, evs


def cpu_per_thousand(store: Store, batches: int) -> float:
    took = 0.0
    for _ in range(batches):
        snaps, evs = batch(1000)
        started = time.process_time()
        store.write(snaps, evs, 1000)
        took += time.process_time() - started
    return took / batches


def run(store: Store, index: Callable[[str], object], rows: int, batches: int) -> dict[str, Any]:
    for done in range(0, rows, 10_000):
        store.write(*batch(10_000), 10_000)
        print(f"  filled {done + 10_000:,} rows", flush=True)
    runs: dict[str, list[float]] = {"today": [], "with key_at": []}
    for _ in range(2):
        for name in runs:
            index(KEY_AT if name == "with key_at" else DROP_KEY_AT)
            runs[name].append(cpu_per_thousand(store, batches))
            print(f"  {name}: {runs[name][-1] * 1000:.0f} ms CPU per 1,000 events", flush=True)
    return {name: round(statistics.median(t) * 1000, 1) for name, t in runs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=600_000)
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument(
        "--postgres", help="also measure this PostgreSQL (its event and snapshot tables emptied)"
    )
    args = parser.parse_args()
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        sqlite = SqliteStore(f"{tmp}/store.sqlite3")
        print("SQLite:", flush=True)
        out["sqlite_ms_cpu_per_1000_events"] = run(
            sqlite, lambda sql: sqlite._writer.execute(sql), args.rows, args.batches
        )
    if args.postgres:
        pg = PostgresStore(args.postgres)
        pg.db.execute("TRUNCATE omnigrid_events, omnigrid_snapshots")
        print("PostgreSQL:", flush=True)
        out["postgres_client_ms_cpu_per_1000_events"] = run(
            pg, lambda sql: pg.db.execute(sql), args.rows, args.batches
        )
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
