"""A real grid for the tests: ``omnigrid serve`` on a local Ray, over real HTTP."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

CHANNELS = ("miniprogram", "app", "h5", "wechat_oa", "pos", "web", "alipay", "kiosk")
START_TIMEOUT_S = 120.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Grid:
    """A running ``omnigrid serve`` process and how to reach it."""

    def __init__(self, shards: int = 2, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        child_env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", **env}
        child_env.pop("RAY_ADDRESS", None)
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "omnigrid.api.cli",
                "serve",
                "--port",
                str(self.port),
                "--shards",
                str(shards),
                "--log-level",
                "error",
            ],
            env=child_env,
            start_new_session=True,
        )
        self.wait_ready()

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
