"""Start and stop the servers under test, each as its own process group."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO

import psutil


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_status(url: str, timeout: float = 2.0) -> int | None:
    """Status of a GET, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (OSError, ValueError):
        return None


def wait_ready(urls: list[str], timeout_s: float, alive: Callable[[], bool] = lambda: True) -> None:
    """Until every url's ``/readyz`` answers 200 (while ``alive`` holds)."""
    deadline = time.monotonic() + timeout_s
    for url in urls:
        while http_status(url + "/readyz") != 200:
            assert alive(), "the server exited"
            assert time.monotonic() < deadline, f"{url} not ready in {timeout_s:.0f} s"
            time.sleep(0.5)


def _proc_table() -> dict[int, tuple[int, str]]:
    """pid -> (ppid, start time) for every process we can see."""
    table: dict[int, tuple[int, str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        table[int(entry)] = (int(fields[1]), fields[19])
    return table


def descendants(pid: int) -> dict[int, str]:
    """All descendants of ``pid`` as pid -> start time (to avoid killing a reused pid)."""
    table = _proc_table()
    children: dict[int, list[int]] = {}
    for p, (pp, _) in table.items():
        children.setdefault(pp, []).append(p)
    found: dict[int, str] = {}
    stack = list(children.get(pid, []))
    while stack:
        p = stack.pop()
        if p in found:
            continue
        found[p] = table[p][1]
        stack.extend(children.get(p, []))
    return found


def cpu_seconds(pids: Iterable[int]) -> float:
    """CPU seconds (user + system) the processes still alive among ``pids`` have used."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            times = psutil.Process(pid).cpu_times()
            total += times.user + times.system
    return total


def histogram_buckets(metrics: str, name: str) -> dict[float, float]:
    """A Prometheus histogram of a server's ``/metrics`` text, summed over every
    process: upper bound (``inf`` for +Inf) -> observations at or under it."""
    buckets: dict[float, float] = {}
    for line in metrics.splitlines():
        if line.startswith(name + "_bucket{"):
            le = re.search(r'le="([^"]+)"', line)
            if le:
                bound = float("inf") if le.group(1) == "+Inf" else float(le.group(1))
                buckets[bound] = buckets.get(bound, 0.0) + float(line.rsplit(" ", 1)[1])
    return buckets


def _alive_same(pid: int, start: str) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    fields = stat[stat.rfind(")") + 2 :].split()
    return fields[19] == start and fields[0] != "Z"


class Server:
    """A server under test started by us: a subprocess in a new session."""

    def __init__(
        self,
        name: str,
        cmd: list[str],
        *,
        url: str,
        ready_path: str,
        cwd: Path,
        env: dict[str, str],
        log_path: Path,
    ) -> None:
        self.name, self.cmd, self.url, self.ready_path = name, cmd, url, ready_path
        self.cwd, self.env, self.log_path = cwd, env, log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._known: dict[int, str] = {}

    def start(self, ready_timeout_s: float = 120.0) -> float:
        """Start and wait until ready; returns seconds it took."""
        t0 = time.monotonic()
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            self.cmd,
            cwd=self.cwd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = t0 + ready_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode}; log: {self.log_path}"
                )
            self._known.update(descendants(self.proc.pid))
            if http_status(self.url + self.ready_path, timeout=1.0) == 200:
                return time.monotonic() - t0
            time.sleep(0.5)
        raise TimeoutError(
            f"{self.name} not ready after {ready_timeout_s:.0f}s; log: {self.log_path}"
        )

    def kill(self) -> None:
        """SIGKILL the server and every descendant at once (a crash, not a stop)."""
        if self.proc is None:
            return
        self._known.update(descendants(self.proc.pid))
        for pid, start in self._known.items():
            if _alive_same(pid, start):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
        self.stop(grace_s=0)

    def stop(self, grace_s: float = 15.0) -> None:
        """SIGTERM the process group, then SIGKILL it and any descendant we saw."""
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        self._known.update(descendants(proc.pid))
        pgid = proc.pid  # start_new_session: the leader's pid is the group id
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=grace_s)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
        # children that left the group (e.g. setsid) but were ours: by pid, if unchanged
        deadline = time.monotonic() + 5
        leftovers = {p: s for p, s in self._known.items() if _alive_same(p, s)}
        while leftovers and time.monotonic() < deadline:
            time.sleep(0.2)
            leftovers = {p: s for p, s in leftovers.items() if _alive_same(p, s)}
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        if self._log is not None:
            self._log.close()
            self._log = None


def baseline_front_server(
    data_dir: Path,
    log_path: Path,
    *,
    floor: bool = False,
    workers: int = 2,
    front_workers: int = 2,
    env: dict[str, str] | None = None,
    port: int | None = None,
) -> Server:
    """``loadtest/baseline_front.py`` on a free loopback port (not started): the Redis
    baseline, or with ``floor`` the app that does nothing, behind the grid's nginx."""
    port = port or free_port()
    cmd = [sys.executable, "-m", "loadtest.baseline_front", "--port", str(port)]
    cmd += ["--data", str(data_dir), "--workers", str(workers)]
    cmd += ["--front-workers", str(front_workers), *(["--floor"] if floor else [])]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    return Server(
        "floor-nginx" if floor else "baseline-nginx",
        cmd,
        url=f"http://127.0.0.1:{port}",
        ready_path="/readyz",
        cwd=Path(__file__).resolve().parent.parent,
        env={**os.environ, **(env or {})},
        log_path=log_path,
    )


def omnigrid_server(
    data_dir: Path,
    log_path: Path,
    shards: int = 2,
    env: dict[str, str] | None = None,
    name: str = "omnigrid",
    port: int | None = None,
) -> Server:
    """``omnigrid serve`` on a free loopback port, its data in ``data_dir`` (not started)."""
    exe = shutil.which("omnigrid")
    if exe is None:
        raise RuntimeError("omnigrid is not on PATH (pip install '.[load]')")
    port = port or free_port()
    full = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", **(env or {})}
    full["OMNIGRID_DATA_DIR"] = str(data_dir)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    return Server(
        name,
        [exe, "serve", "--port", str(port), "--shards", str(shards)],
        url=f"http://127.0.0.1:{port}",
        ready_path="/readyz",
        cwd=data_dir,
        env=full,
        log_path=log_path,
    )
