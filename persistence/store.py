"""The store: entities' snapshots and the queryable event log, written behind.

PostgreSQL (``OMNIGRID_POSTGRES_DSN``) is the system of record; without it an
embedded SQLite file under the data directory plays the same part, so a grid
with nothing installed keeps its data too. Both have the same two tables
(``persistence/migrations/``): ``omnigrid_snapshots`` (each entity's latest
state, its slot and its API view) and ``omnigrid_events`` (every change: key,
version, kind, channel, op, time, view).

A store is used from two threads with a connection each: the shard's event
loop reads (activation, recovery, audit) and the write-behind thread writes.
Writes are idempotent: a snapshot only replaces an older version and an event
already logged is skipped, so a batch retried after a failure is harmless.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, Protocol

import orjson

from omnigrid.persistence.db import Database, StoreUnavailable, sqlite_transaction
from omnigrid.persistence.events import Event

SCAN_CHUNK = 10_000
__all__ = ["PostgresStore", "Snapshot", "SqliteStore", "Store", "StoreUnavailable"]


@dataclass(frozen=True, slots=True)
class Snapshot:
    key: str
    kind: str
    slot: int
    version: int
    updated_at: float | None
    state: bytes  # msgpack of Entity.state()
    view: dict[str, Any]


class Store(Protocol):
    def load(self, key: str) -> bytes | None:
        """One entity's stored state, or None if it was never stored."""

    def load_many(self, keys: Sequence[str]) -> dict[str, bytes]: ...

    def scan(self, slot_ranges: Sequence[tuple[int, int]]) -> Iterator[tuple[str, bytes]]:
        """Every stored entity in these slots, most recently changed first."""

    def write(
        self,
        snapshots: Sequence[Snapshot],
        events: Sequence[Event],
        batch: int,
        deliveries: Sequence[tuple[Any, ...]] = (),
    ) -> None:
        """Store snapshots, log events and queue webhook deliveries in one transaction."""

    def events_since(self, key: str, after: int, limit: int) -> list[Event]:
        """The logged changes of one entity after version ``after``, oldest first."""

    def close(self) -> None: ...


def migrations(dialect: str) -> list[tuple[int, str, str]]:
    """(version, name, sql) of every migration for ``dialect``, in order."""
    folder = resources.files("omnigrid.persistence").joinpath("migrations", dialect)
    out = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            out.append((int(entry.name.split("_")[0]), entry.name, entry.read_text()))
    return sorted(out)


def _chunks(rows: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


SQLITE_MAX_PARAMS = 32_766
DELIVERY_INSERT = (
    "INSERT INTO omnigrid_deliveries (shard, webhook_id, event_id, body, attempts, next_at)"
)


def _snapshot_rows(snapshots: Sequence[Snapshot]) -> list[tuple[Any, ...]]:
    """omnigrid_snapshots rows, in its columns' order (both stores)."""
    return [
        (s.key, s.kind, s.slot, s.version, s.updated_at, s.state, _json(s.view)) for s in snapshots
    ]


def _event_rows(events: Sequence[Event]) -> list[tuple[Any, ...]]:
    """omnigrid_events rows, in its columns' order (both stores)."""
    return [(e.key, e.version, e.kind, e.channel, e.op, e.at, _json(e.view)) for e in events]


def _insert_rows(
    db: sqlite3.Connection, sql: str, rows: Sequence[tuple[Any, ...]], batch: int
) -> None:
    """Insert rows with multi-row VALUES: one statement per chunk, not one per row.

    ``executemany`` steps once per row and gives the GIL up and back each
    time; next to a busy event loop every give-back waits for the loop's
    switch interval, so a thousand rows became seconds of lag.
    """
    if not rows:
        return
    width = len(rows[0])
    size = max(1, min(batch, SQLITE_MAX_PARAMS // width))
    one = "(" + ",".join("?" * width) + ")"
    for chunk in _chunks(rows, size):
        params = [value for row in chunk for value in row]
        db.execute(sql.format(rows=",".join([one] * len(chunk))), params)


class SqliteStore:
    """The embedded store: one SQLite file (WAL) shared by the shards of a data directory."""

    def __init__(self, path: str) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.path = path
        # The writer runs on the write-behind's worker threads, one drain at a time.
        self._writer = self._connect(check_same_thread=False)
        self._migrate()
        self._readers = threading.local()

    def _connect(self, check_same_thread: bool = True) -> sqlite3.Connection:
        db = sqlite3.connect(
            self.path, isolation_level=None, timeout=30.0, check_same_thread=check_same_thread
        )
        # Switching a new file to WAL takes an exclusive lock without waiting
        # on the busy timeout: shards starting together retry it.
        for attempt in range(100):
            try:
                db.execute("PRAGMA journal_mode=WAL")
                break
            except sqlite3.OperationalError:
                if attempt == 99:
                    raise
                time.sleep(0.05)
        db.execute("PRAGMA synchronous=NORMAL")
        return db

    def _reader(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._readers, "db", None)
        if db is None:
            db = self._readers.db = self._connect()
        return db

    def _migrate(self) -> None:
        db = self._writer
        with sqlite_transaction(db):  # one migrator at a time across the shards
            db.execute(
                "CREATE TABLE IF NOT EXISTS omnigrid_schema_migrations "
                "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
            )
            done = {v for (v,) in db.execute("SELECT version FROM omnigrid_schema_migrations")}
            for version, name, sql in migrations("sqlite"):
                if version not in done:
                    for statement in sql.split(";"):
                        if statement.strip():
                            db.execute(statement)
                    db.execute(
                        "INSERT INTO omnigrid_schema_migrations VALUES (?, ?, ?)",
                        (version, name, time.time()),
                    )

    def load(self, key: str) -> bytes | None:
        try:
            row = (
                self._reader()
                .execute("SELECT state FROM omnigrid_snapshots WHERE key = ?", (key,))
                .fetchone()
            )
        except sqlite3.Error as e:
            raise StoreUnavailable(f"SQLite store {self.path}: {e}") from e
        return bytes(row[0]) if row else None

    def load_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        try:
            for chunk in _chunks(keys, 500):
                marks = ",".join("?" * len(chunk))
                rows = self._reader().execute(
                    f"SELECT key, state FROM omnigrid_snapshots WHERE key IN ({marks})", chunk
                )
                out.update((k, bytes(s)) for k, s in rows)
        except sqlite3.Error as e:
            raise StoreUnavailable(f"SQLite store {self.path}: {e}") from e
        return out

    def events_since(self, key: str, after: int, limit: int) -> list[Event]:
        try:
            rows = (
                self._reader()
                .execute(
                    "SELECT kind, key, version, channel, op, at, view FROM omnigrid_events "
                    "WHERE key = ? AND version > ? ORDER BY version LIMIT ?",
                    (key, after, limit),
                )
                .fetchall()
            )
        except sqlite3.Error as e:
            raise StoreUnavailable(f"SQLite store {self.path}: {e}") from e
        return [Event(k, ky, v, c, o, at, orjson.loads(w)) for k, ky, v, c, o, at, w in rows]

    def scan(self, slot_ranges: Sequence[tuple[int, int]]) -> Iterator[tuple[str, bytes]]:
        db = self._reader()
        for low, high in slot_ranges:
            try:
                rows = db.execute(
                    "SELECT key, state FROM omnigrid_snapshots WHERE slot BETWEEN ? AND ? "
                    "ORDER BY updated_at DESC",
                    (low, high),
                )
                for key, state in rows:
                    yield key, bytes(state)
            except sqlite3.Error as e:
                raise StoreUnavailable(f"SQLite store {self.path}: {e}") from e

    def write(
        self,
        snapshots: Sequence[Snapshot],
        events: Sequence[Event],
        batch: int,
        deliveries: Sequence[tuple[Any, ...]] = (),
    ) -> None:
        db = self._writer
        try:
            with sqlite_transaction(db):
                _insert_rows(
                    db,
                    "INSERT INTO omnigrid_snapshots VALUES {rows} "
                    "ON CONFLICT (key) DO UPDATE SET version = excluded.version, "
                    "updated_at = excluded.updated_at, state = excluded.state, "
                    "view = excluded.view WHERE excluded.version > version",
                    _snapshot_rows(snapshots),
                    batch,
                )
                _insert_rows(
                    db,
                    "INSERT OR IGNORE INTO omnigrid_events VALUES {rows}",
                    _event_rows(events),
                    batch,
                )
                _insert_rows(
                    db, DELIVERY_INSERT + " VALUES {rows} ON CONFLICT DO NOTHING", deliveries, batch
                )
        except sqlite3.Error as e:
            raise StoreUnavailable(f"SQLite store {self.path}: {e}") from e

    def close(self) -> None:
        self._writer.close()


class PostgresStore:
    """PostgreSQL, the system of record: multi-row upserts from arrays (``unnest``).

    One statement carries ``batch`` rows, so a drain of 10,000 changes is a
    handful of round trips, not 10,000.
    """

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.db = Database(postgres_dsn=dsn)  # a connection per thread, one retry if cut
        self._run = self.db.run
        self._migrate()

    def _migrate(self) -> None:
        def migrate(conn: Any) -> None:
            with conn.transaction():
                # One migrator at a time across the shards and hosts of a grid.
                conn.execute("SELECT pg_advisory_xact_lock(7723501)")
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS omnigrid_schema_migrations (version integer "
                    "PRIMARY KEY, name text NOT NULL, "
                    "applied_at timestamptz NOT NULL DEFAULT now())"
                )
                done = {
                    v for (v,) in conn.execute("SELECT version FROM omnigrid_schema_migrations")
                }
                for version, name, sql in migrations("postgres"):
                    if version not in done:
                        conn.execute(sql)
                        conn.execute(
                            "INSERT INTO omnigrid_schema_migrations (version, name) "
                            "VALUES (%s, %s)",
                            (version, name),
                        )

        self._run(migrate)

    def load(self, key: str) -> bytes | None:
        row = self._run(
            lambda c: c.execute(
                "SELECT state FROM omnigrid_snapshots WHERE key = %s", (key,)
            ).fetchone()
        )
        return bytes(row[0]) if row else None

    def load_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        rows = self._run(
            lambda c: c.execute(
                "SELECT key, state FROM omnigrid_snapshots WHERE key = ANY(%s)", (list(keys),)
            ).fetchall()
        )
        return {k: bytes(s) for k, s in rows}

    def events_since(self, key: str, after: int, limit: int) -> list[Event]:
        rows = self._run(
            lambda c: c.execute(
                "SELECT kind, key, version, channel, op, extract(epoch FROM at)::float8, "
                "view::text FROM omnigrid_events WHERE key = %s AND version > %s "
                "ORDER BY version LIMIT %s",
                (key, after, limit),
            ).fetchall()
        )
        return [Event(k, ky, v, c, o, at, orjson.loads(w)) for k, ky, v, c, o, at, w in rows]

    def scan(self, slot_ranges: Sequence[tuple[int, int]]) -> Iterator[tuple[str, bytes]]:
        import psycopg

        for low, high in slot_ranges:
            try:
                conn = self.db.connection()
                with conn.transaction(), conn.cursor(name="omnigrid_scan") as cur:
                    cur.itersize = SCAN_CHUNK  # a server-side cursor: a million rows stream
                    cur.execute(
                        "SELECT key, state FROM omnigrid_snapshots WHERE slot BETWEEN %s AND %s "
                        "ORDER BY updated_at DESC NULLS LAST",
                        (low, high),
                    )
                    for key, state in cur:
                        yield key, bytes(state)
            except psycopg.Error as e:
                raise StoreUnavailable(f"PostgreSQL: {e}") from e

    def write(
        self,
        snapshots: Sequence[Snapshot],
        events: Sequence[Event],
        batch: int,
        deliveries: Sequence[tuple[Any, ...]] = (),
    ) -> None:
        def write(conn: Any) -> None:
            with conn.transaction():
                # Rows become columns: one array parameter per column, unnest()ed.
                for chunk in _chunks(_snapshot_rows(snapshots), batch):
                    conn.execute(
                        "INSERT INTO omnigrid_snapshots "
                        "SELECT k, kd, sl, v, to_timestamp(u), st, w::jsonb FROM unnest("
                        "%s::text[], %s::text[], %s::int[], %s::bigint[], %s::float8[], "
                        "%s::bytea[], %s::text[]) AS t(k, kd, sl, v, u, st, w) "
                        "ON CONFLICT (key) DO UPDATE SET version = EXCLUDED.version, "
                        "updated_at = EXCLUDED.updated_at, state = EXCLUDED.state, "
                        "view = EXCLUDED.view WHERE omnigrid_snapshots.version < EXCLUDED.version",
                        [list(column) for column in zip(*chunk, strict=True)],
                    )
                for chunk in _chunks(_event_rows(events), batch):
                    conn.execute(
                        "INSERT INTO omnigrid_events "
                        "SELECT k, v, kd, c, o, to_timestamp(a), w::jsonb FROM unnest("
                        "%s::text[], %s::bigint[], %s::text[], %s::text[], %s::text[], "
                        "%s::float8[], %s::text[]) AS t(k, v, kd, c, o, a, w) "
                        "ON CONFLICT DO NOTHING",
                        [list(column) for column in zip(*chunk, strict=True)],
                    )
                for chunk in _chunks(deliveries, batch):
                    conn.execute(
                        DELIVERY_INSERT + " SELECT * FROM unnest(%s::int[], %s::text[], "
                        "%s::text[], %s::text[], %s::int[], %s::float8[]) ON CONFLICT DO NOTHING",
                        [list(column) for column in zip(*chunk, strict=True)],
                    )

        self._run(write)

    def close(self) -> None:
        self.db.close()
