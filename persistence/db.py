"""One small door to the store's database for the tables beside the entities.

``Database`` owns the connections (one per thread) and the one retry after a
connection was cut, for the store itself (persistence/store.py) as for the
tables beside it. The behaviour log and the webhooks' tables are written with plain SQL that both
SQLite and PostgreSQL understand (``?`` placeholders, ``ON CONFLICT DO
NOTHING``, epoch seconds as numbers, JSON as text), so one piece of code serves
the embedded store and the system of record. A connection per thread, as for
the store itself; errors become ``StoreUnavailable``.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import orjson

Row = tuple[Any, ...]


class StoreUnavailable(Exception):
    """The store could not be read or written; the caller retries later."""


@contextlib.contextmanager
def sqlite_transaction(db: sqlite3.Connection, needed: bool = True) -> Iterator[None]:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any error (the connection is in
    autocommit mode, so without one every statement commits on its own)."""
    if not needed:
        yield
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


class Database:
    def __init__(self, postgres_dsn: str = "", sqlite_path: str = "") -> None:
        if not postgres_dsn and not sqlite_path:
            raise ValueError("a PostgreSQL DSN or an SQLite path is needed")
        self.postgres_dsn = postgres_dsn
        self.sqlite_path = sqlite_path
        self._local = threading.local()
        if sqlite_path:
            os.makedirs(os.path.dirname(os.path.abspath(sqlite_path)), exist_ok=True)

    def connection(self) -> Any:
        """This thread's connection, opened (again) if it has none or it was cut."""
        conn = getattr(self._local, "conn", None)
        if conn is not None and not (self.postgres_dsn and (conn.closed or conn.broken)):
            return conn
        if self.postgres_dsn:
            import psycopg

            conn = psycopg.connect(self.postgres_dsn, autocommit=True, connect_timeout=3)
        else:
            conn = sqlite3.connect(self.sqlite_path, isolation_level=None, timeout=30.0)
            conn.execute("PRAGMA busy_timeout = 30000")
        self._local.conn = conn
        return conn

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.postgres_dsn else sql

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return self.run(lambda c: c.execute(self._sql(sql), params).fetchall())  # type: ignore[no-any-return]

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement; returns the rows it changed."""
        return self.run(lambda c: c.execute(self._sql(sql), params).rowcount)  # type: ignore[no-any-return]

    def execute_many(self, statements: Sequence[tuple[str, Sequence[Sequence[Any]]]]) -> None:
        """Several statements, each over many rows, in one transaction."""

        def run(conn: Any) -> None:
            if self.postgres_dsn:
                with conn.transaction(), conn.cursor() as cur:
                    for sql, rows in statements:
                        if rows:
                            cur.executemany(self._sql(sql), rows)
                return
            with sqlite_transaction(conn):
                for sql, rows in statements:
                    if rows:
                        conn.executemany(sql, rows)

        self.run(run)

    def run(self, work: Any) -> Any:
        """Run ``work(connection)``; a database error becomes StoreUnavailable.

        A connection found cut (PostgreSQL restarted, an idle connection
        dropped) is replaced and the work tried once more: every piece of work
        given here is a read or an idempotent transaction.
        """
        import psycopg

        for attempt in (1, 2):
            try:
                return work(self.connection())
            except (psycopg.Error, sqlite3.Error) as e:
                stale: Any = getattr(self._local, "conn", None)
                cut = (
                    bool(self.postgres_dsn) and stale is not None and (stale.closed or stale.broken)
                )
                if attempt == 1 and cut:
                    continue
                where = "PostgreSQL" if self.postgres_dsn else "SQLite"
                raise StoreUnavailable(f"{where}: {e}") from e
        raise AssertionError("unreachable")

    def setting(self, name: str) -> Any:
        """A row of ``omnigrid_settings`` (JSON), or None."""
        rows = self.query("SELECT value FROM omnigrid_settings WHERE name = ?", (name,))
        return orjson.loads(rows[0][0]) if rows else None

    def put_setting(self, name: str, value: Any) -> None:
        text = orjson.dumps(value).decode()
        if not self.execute("UPDATE omnigrid_settings SET value = ? WHERE name = ?", (text, name)):
            self.execute("INSERT INTO omnigrid_settings (name, value) VALUES (?, ?)", (name, text))

    def close(self) -> None:
        """Close this thread's connection."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
