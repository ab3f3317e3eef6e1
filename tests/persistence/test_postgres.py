"""The PostgreSQL store, in a database of the test's own: schema, upserts, event
log, and a write-behind whose writes are blocked (a revoked grant, a killed
connection) and released."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

from omnigrid.actors.protocol import Command
from omnigrid.actors.residency import pack_state
from omnigrid.actors.shard import Shard
from omnigrid.actors.slots import SlotMap, slot_of
from omnigrid.persistence.behaviour import BehaviourLog
from omnigrid.persistence.db import Database
from omnigrid.persistence.events import Event
from omnigrid.persistence.file_journal import FileJournal
from omnigrid.persistence.store import PostgresStore, Snapshot, SqliteStore
from omnigrid.persistence.writebehind import WriteBehind
from tests.conftest import PostgresDatabase

TABLES = "omnigrid_snapshots, omnigrid_events"


def snapshot(key: str, version: int, state: bytes) -> Snapshot:
    return Snapshot(key, "cart", slot_of(key), version, 1.7e9 + version, state, {"v": version})


def event(key: str, version: int) -> Event:
    return Event("cart", key, version, "app", "cart.add", 1.7e9 + version, {"v": version})


def test_migrations_run_once(postgres: PostgresDatabase) -> None:
    PostgresStore(postgres.dsn).close()
    PostgresStore(postgres.dsn).close()
    assert postgres.execute("SELECT version, name FROM omnigrid_schema_migrations") == [
        (1, "0001_initial.sql"),
        (2, "0002_behaviour_webhooks.sql"),
        (3, "0003_evidence.sql"),
        (4, "0004_keys.sql"),
        (5, "0005_ops.sql"),
        (6, "0006_events_by_key_version.sql"),
        (7, "0007_request_keys.sql"),
    ]


def test_a_timeline_reads_each_keys_latest_changes_by_version(
    postgres: PostgresDatabase, tmp_path: Path
) -> None:
    """Without the (key, at) index (migration 0006): each key's latest by its primary
    key, merged by time, in both stores' SQL."""
    carts = [Event("cart", "cart:a", v, "app", "cart.add", 1.7e9 + v, {"v": v}) for v in (1, 2, 3)]
    orders = [Event("order", "order:x", v, "h5", "order.pay", 1.7e9 + v + 0.5, {}) for v in (1, 2)]
    sqlite = f"{tmp_path}/store.sqlite3"
    for store, db in (
        (PostgresStore(postgres.dsn), Database(postgres_dsn=postgres.dsn)),
        (SqliteStore(sqlite), Database(sqlite_path=sqlite)),
    ):
        store.write([], carts + orders, 100)
        log = BehaviourLog(db)
        items = log.timeline(["a"], ["cart:a", "order:x", "order:none"], 3)
        shown = [(i["entity"], i["version"]) for i in items]
        assert shown == [("cart", 2), ("order", 2), ("cart", 3)]
        assert log.timeline(["a"], [], 3) == []
        store.close()


def test_snapshots_only_move_forward_and_events_are_logged_once(
    postgres: PostgresDatabase,
) -> None:
    store = PostgresStore(postgres.dsn)
    store.write([snapshot("cart:a", 2, b"two"), snapshot("cart:b", 1, b"one")], [], 1)
    store.write([snapshot("cart:a", 1, b"old")], [event("cart:a", 1), event("cart:a", 2)], 1)
    store.write([snapshot("cart:a", 3, b"three")], [event("cart:a", 2), event("cart:a", 3)], 1)
    assert store.load("cart:a") == b"three"
    assert store.load("cart:zz") is None
    assert store.load_many(["cart:a", "cart:b", "cart:zz"]) == {
        "cart:a": b"three",
        "cart:b": b"one",
    }
    rows = postgres.execute(
        "SELECT key, version, kind, channel, op, view->>'v' FROM omnigrid_events ORDER BY version"
    )
    assert rows == [
        ("cart:a", 1, "cart", "app", "cart.add", "1"),
        ("cart:a", 2, "cart", "app", "cart.add", "2"),
        ("cart:a", 3, "cart", "app", "cart.add", "3"),
    ]
    everything = dict(store.scan([(0, 16383)]))
    assert everything == {"cart:a": b"three", "cart:b": b"one"}
    low = slot_of("cart:a")
    assert dict(store.scan([(low, low)])) == {"cart:a": b"three"}
    store.close()


def grid_shard(tmp_path: Path, dsn: str) -> tuple[Shard, PostgresStore, WriteBehind]:
    store = PostgresStore(dsn)
    journal = FileJournal(str(tmp_path / "journal"), "normal")
    shard = Shard(0, SlotMap.even(1), journal, loader=store.load)
    shard.recover(journal.replay(), store.scan([(0, 16383)]))
    return shard, store, WriteBehind(shard, store, 0.2, 50)


def write_carts(shard: Shard, start: int, count: int) -> None:
    for i in range(start, start + count):
        result = shard.apply(
            Command("cart.add", f"cart:u{i % 40}", {"sku": f"s{i}", "qty": 1, "available": 9})
        )
        assert result.status == 200, result


def stored_matches_memory(store: PostgresStore, shard: Shard) -> bool:
    stored = store.load_many(list(shard.entities))
    return stored == {k: pack_state(e) for k, e in shard.entities.items()}


def test_blocked_writes_queue_up_and_drain_when_released(
    postgres: PostgresDatabase, tmp_path: Path
) -> None:
    PostgresStore(postgres.dsn).close()  # the schema, made by its owner
    postgres.execute(f"GRANT SELECT, INSERT, UPDATE ON {TABLES} TO {postgres.role}")
    postgres.execute(f"GRANT SELECT ON omnigrid_schema_migrations TO {postgres.role}")
    shard, store, writebehind = grid_shard(tmp_path, postgres.role_dsn)
    write_carts(shard, 0, 100)
    assert asyncio.run(writebehind.drain())

    postgres.execute(f"REVOKE INSERT, UPDATE ON {TABLES} FROM {postgres.role}")
    write_carts(shard, 100, 150)  # still acknowledged: the journal has them
    for _ in range(3):
        assert not asyncio.run(writebehind.drain())
    assert writebehind.failures == 3 and writebehind.failing_since is not None
    assert len(shard.backlog.unstored) == 150 and shard.backlog.dirty
    assert len(list(shard.journal.replay())) == 150, "nothing trimmed that is not stored"

    postgres.execute(f"GRANT INSERT, UPDATE ON {TABLES} TO {postgres.role}")
    assert asyncio.run(writebehind.drain())
    assert (
        not shard.backlog.unstored and not shard.backlog.dirty and writebehind.failing_since is None
    )
    assert list(shard.journal.replay()) == []
    assert stored_matches_memory(store, shard)
    assert postgres.execute("SELECT count(*) FROM omnigrid_events") == [(250,)]

    # a grid started again on the same stores holds the same state (the first one gone)
    assert isinstance(shard.journal, FileJournal)
    shard.journal.close()
    again, _, _ = grid_shard(tmp_path, postgres.role_dsn)
    assert {k: pack_state(e) for k, e in again.entities.items()} == {
        k: pack_state(e) for k, e in shard.entities.items()
    }


def test_a_killed_connection_is_replaced_on_the_next_drain(
    postgres: PostgresDatabase, tmp_path: Path
) -> None:
    shard, store, writebehind = grid_shard(tmp_path, postgres.dsn)
    write_carts(shard, 0, 10)
    assert asyncio.run(writebehind.drain())
    postgres.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = %s AND pid <> pg_backend_pid()",
        postgres.name,
    )
    write_carts(shard, 10, 10)
    if not asyncio.run(writebehind.drain()):  # the dead connection fails one drain at most
        assert asyncio.run(writebehind.drain())
    assert not shard.backlog.unstored and stored_matches_memory(store, shard)


def test_a_connection_cut_mid_transaction_is_retried_whole_on_a_new_one(
    postgres: PostgresDatabase, tmp_path: Path
) -> None:
    import psycopg

    shard, store, writebehind = grid_shard(tmp_path, postgres.dsn)
    write_carts(shard, 0, 30)
    outcome: list[bool] = []
    drain = threading.Thread(target=lambda: outcome.append(asyncio.run(writebehind.drain())))
    with psycopg.connect(postgres.dsn) as blocker:
        # the drain writes its snapshots, then waits on the event log's lock: mid-transaction
        blocker.execute("LOCK TABLE omnigrid_events IN ACCESS EXCLUSIVE MODE")
        drain.start()
        deadline = time.monotonic() + 10
        waiting = "SELECT pid FROM pg_stat_activity WHERE datname = %s AND wait_event_type = 'Lock'"
        while not (cut := postgres.execute(waiting, postgres.name)):
            assert time.monotonic() < deadline, "the drain never waited on the lock"
            time.sleep(0.05)
        postgres.execute("SELECT pg_terminate_backend(%s)", cut[0][0])
        assert postgres.execute("SELECT count(*) FROM omnigrid_snapshots") == [(0,)]  # none half
    drain.join(10)
    # the store replaced the cut connection and ran the whole transaction again
    assert outcome == [True]
    assert stored_matches_memory(store, shard)
    assert postgres.execute("SELECT count(*) FROM omnigrid_events") == [(30,)]
    assert list(shard.journal.replay()) == []
