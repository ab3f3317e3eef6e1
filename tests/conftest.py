"""A real grid for the tests: ``omnigrid serve`` on a local Ray, over real HTTP."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
import redis

from loadtest.fault_makers import RedisServer

POSTGRES_ADMIN_DSN = os.environ.get(
    "OMNIGRID_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)
CHANNELS = ("miniprogram", "app", "h5", "wechat_oa", "pos", "web", "alipay", "kiosk")
START_TIMEOUT_S = 120.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Grid:
    """A running ``omnigrid serve`` process and how to reach it."""

    def __init__(
        self, shards: int = 2, data_dir: str | None = None, capture: bool = False, **env: str
    ) -> None:
        self.capture = capture  # its output in ``proc.stdout``, else the test's
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.shards = shards
        self.data_dir = data_dir or tempfile.mkdtemp(prefix="omnigrid-test-")
        self.env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", **env}
        self.env.pop("RAY_ADDRESS", None)
        self.start()

    def start(self) -> None:
        """Start ``omnigrid serve`` (again) on this grid's port and stores."""
        self.proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "omnigrid.api.runtime.cli", "serve"),
                *("--port", str(self.port), "--shards", str(self.shards)),
                *("--data-dir", self.data_dir, "--log-level", "error"),
            ],
            env=self.env,
            start_new_session=True,
            text=True,
            stdout=subprocess.PIPE if self.capture else None,
            stderr=subprocess.STDOUT if self.capture else None,
        )
        self.wait_ready()

    def kill(self) -> None:
        """SIGKILL the whole grid: the server, its shard processes and its Ray."""
        shards = httpx.get(self.url + "/v1/cluster", timeout=5).json()["shards"]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        for shard in shards:
            with contextlib.suppress(ProcessLookupError):
                os.kill(shard["pid"], signal.SIGKILL)
        self.proc.wait(10)

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"omnigrid serve exited with {self.proc.returncode}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise TimeoutError(f"the grid at {self.url} was not ready in {timeout} s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # it stops its shards and its Ray
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        # whatever of its Ray is left (it started a session of its own)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)


@pytest.fixture(scope="session")
def grid() -> Iterator[Grid]:
    g = Grid()
    try:
        yield g
    finally:
        g.stop()


@pytest.fixture()
def client(grid: Grid) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=grid.url, timeout=10) as c:
        yield c


def new_id(prefix: str) -> str:
    """A fresh uid or sku, so tests sharing one grid never see each other's state."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def write_headers(channel: str = "app", **extra: str) -> dict[str, str]:
    return {"X-Channel": channel, **extra}


class PostgresDatabase:
    """A database of the test's own on the machine's PostgreSQL, dropped afterwards.

    ``role`` is a login role of its own that owns nothing: what it may do in
    the database is granted to it, so a test can revoke a grant to block the
    grid's writes and grant it again.
    """

    def __init__(self) -> None:
        import psycopg

        suffix = uuid.uuid4().hex[:10]
        self.name = f"omnigrid_test_{suffix}"
        self.role = f"omnigrid_writer_{suffix}"
        with psycopg.connect(POSTGRES_ADMIN_DSN, autocommit=True) as admin:
            admin.execute(f"CREATE DATABASE {self.name}")
            admin.execute(f"CREATE ROLE {self.role} LOGIN")
        host = POSTGRES_ADMIN_DSN.rsplit("/", 1)[0].split("@", 1)[1]
        self.dsn = f"postgresql://postgres@{host}/{self.name}"
        self.role_dsn = f"postgresql://{self.role}@{host}/{self.name}"
        with psycopg.connect(self.dsn, autocommit=True) as db:
            db.execute(f"GRANT ALL ON SCHEMA public TO {self.role}")

    def execute(self, sql: str, *params: object) -> list[tuple[object, ...]]:
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True) as db:
            cur = db.execute(sql, params or None)
            return cur.fetchall() if cur.description else []

    def drop(self) -> None:
        import psycopg

        with psycopg.connect(POSTGRES_ADMIN_DSN, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {self.name} WITH (FORCE)")
            admin.execute(f"DROP ROLE IF EXISTS {self.role}")


@pytest.fixture()
def postgres() -> Iterator[PostgresDatabase]:
    database = PostgresDatabase()  # fails loudly when PostgreSQL is not there
    try:
        yield database
    finally:
        database.drop()


class OwnRedis(RedisServer):
    """A redis-server of the test's own (AOF on, fsync always), stopped by its pid."""

    def __init__(self) -> None:
        super().__init__(free_port(), fsync="always")

    def stop(self) -> None:
        self.kill()


@pytest.fixture()
def own_redis() -> Iterator[OwnRedis]:
    server = OwnRedis()
    server.start()
    try:
        yield server
    finally:
        server.remove()


REDIS_URL = os.environ.get("OMNIGRID_TEST_REDIS", "redis://127.0.0.1:6379/0")


@pytest.fixture()
def namespace() -> Iterator[str]:
    """A Redis namespace of the test's own on the machine's Redis, emptied afterwards."""
    name = "t" + uuid.uuid4().hex[:10]
    r = redis.Redis.from_url(REDIS_URL)
    r.ping()  # fails loudly when Redis is not there
    yield name
    for key in r.scan_iter(f"og:{name}:*"):
        r.delete(key)


@pytest.fixture(params=["in-process", "grid"])
def either(request: pytest.FixtureRequest) -> Iterator[httpx.Client]:
    """The ASGI app in-process, then the session's real grid: for the few tests the
    contract's key promises are checked on both."""
    if request.param == "in-process":
        from tests.inprocess import in_process_client

        with in_process_client() as client:
            yield client
    else:
        grid = request.getfixturevalue("grid")
        with httpx.Client(base_url=grid.url, timeout=10) as client:
            yield client
