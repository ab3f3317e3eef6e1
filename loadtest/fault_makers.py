"""The faults a fault run (loadtest/faults.py, tests/api/test_faults.py) makes:
servers of its own to stop, stall and kill, a database that refuses connections,
the embedded store's file locked by another process, a disk of its own filled to the
last byte.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path


class RedisServer:
    """A redis-server of our own on a free port, with the AOF on (``aof=False``:
    nothing on disk, as the Redis baseline runs), stopped by its pid."""

    def __init__(
        self,
        port: int,
        fsync: str = "everysec",
        host: str = "127.0.0.1",
        password: str = "",
        aof: bool = True,
    ) -> None:
        self.port = port
        self.fsync = fsync
        self.aof = aof
        self.host = host
        self.password = password  # needed off loopback (Redis's protected mode)
        self.dir = tempfile.mkdtemp(prefix="omnigrid-redis-")
        self.url = f"redis://{':' + password + '@' if password else ''}{host}:{port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        server = shutil.which("redis-server")
        assert server, "redis-server must be installed"
        self.proc = subprocess.Popen(
            [
                *(server, "--bind", self.host, "--port", str(self.port), "--dir", self.dir),
                *("--appendonly", "yes" if self.aof else "no", "--appendfsync", self.fsync),
                *("--save", ""),
                *(("--requirepass", self.password) if self.password else ()),
            ],
            stdout=subprocess.DEVNULL,
        )
        import redis

        client = redis.Redis(host=self.host, port=self.port, password=self.password or None)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    def stall(self, seconds: float) -> None:
        """SIGSTOP for ``seconds``, then SIGCONT: a long fsync, a swapped-out host."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)
        try:
            time.sleep(seconds)
        finally:
            os.kill(self.proc.pid, signal.SIGCONT)

    def remove(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def refuse_postgres(admin_dsn: str, database: str, seconds: float) -> None:
    """The database refuses every new connection for ``seconds``; open ones are cut."""
    import psycopg

    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(f"ALTER DATABASE {database} WITH ALLOW_CONNECTIONS false")
        try:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (database,),
            )
            time.sleep(seconds)
        finally:
            admin.execute(f"ALTER DATABASE {database} WITH ALLOW_CONNECTIONS true")


@contextlib.contextmanager
def small_disk(megabytes: int) -> Iterator[Path]:
    """A tmpfs of its own, so the test can fill it (the machine's disk is never touched)."""
    path = Path(tempfile.mkdtemp(prefix="omnigrid-disk-"))
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(path)], check=True
    )
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def lock_store(data_dir: Path, seconds: float) -> None:
    """Another process's writer holds the embedded store's write lock (drains wait)."""
    db = sqlite3.connect(data_dir / "store.sqlite3", isolation_level=None)
    db.execute("BEGIN IMMEDIATE")
    time.sleep(seconds)
    db.execute("ROLLBACK")
    db.close()


def fill_disk(data_dir: Path, seconds: float) -> None:
    """Fill the disk to the last byte, hold it full, then free it."""
    filler = data_dir / "filler"
    with filler.open("wb") as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * (1 << 20))
            f.flush()
    time.sleep(seconds)
    filler.unlink()
