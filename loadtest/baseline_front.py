"""The Redis baseline behind the grid's own nginx front: a CPU per request to compare.

    python -m loadtest.baseline_front --port 8100 --data /tmp/bf [--workers 2] [--floor]

Starts, as its own children: a redis-server (a free port, nothing on disk), one
uvicorn process of ``loadtest/baseline.py`` per front socket, and the nginx that
``omnigrid serve --front nginx`` starts (``api/runtime/front.py``: the same
configuration, njs routing, upstream keep-alive and limits; the baseline's
processes sit where the shards would). Every process is a descendant of this one,
so a CPU count of its tree is the whole baseline's, Redis included, as a count of
``omnigrid serve``'s tree is the whole grid's. SIGTERM or SIGINT stops them all.

``--floor`` serves ``loadtest/floor.py`` (an app that does nothing) in the
baseline's place, with no Redis: the stack's own cost per request.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loadtest.fault_makers import RedisServer
from loadtest.procs import free_port, http_status
from omnigrid.actors.kinds import kinds
from omnigrid.actors.slots import SlotMap
from omnigrid.api.runtime.front import NginxFront, front_socket_path
from omnigrid.api.runtime.settings import Settings

READY_TIMEOUT_S = 30.0


def start_baseline(socket_path: str, redis_port: int | None, log: Path) -> subprocess.Popen[bytes]:
    """One baseline process on ``socket_path`` (no Redis port: the floor app)."""
    if os.path.exists(socket_path):
        os.unlink(socket_path)
    env = {**os.environ, "BASELINE_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0"}
    app = "loadtest.baseline:app" if redis_port is not None else "loadtest.floor:app"
    cmd = [sys.executable, "-m", "uvicorn", app, "--uds", socket_path]
    cmd += ["--http", "httptools", "--loop", "uvloop", "--no-access-log"]
    root = str(Path(__file__).resolve().parent.parent)
    return subprocess.Popen(cmd, cwd=root, env=env, stdout=log.open("wb"), stderr=-2)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--port", type=int, required=True, help="the port nginx holds")
    p.add_argument("--data", type=Path, required=True, help="nginx's files and the logs")
    p.add_argument("--workers", type=int, default=2, help="baseline processes behind nginx")
    p.add_argument("--front-workers", type=int, default=2, help="nginx worker processes")
    p.add_argument("--floor", action="store_true", help="loadtest/floor.py, no Redis")
    args = p.parse_args(argv)
    args.data.mkdir(parents=True, exist_ok=True)
    # the grid's own settings (OMNIGRID_KEEPALIVE_S and the rest from the environment)
    settings = Settings.from_env(
        host="127.0.0.1",
        port=args.port,
        data_dir=str(args.data),
        front="nginx",
        front_workers=args.front_workers,
    )
    stopping: list[int] = []
    signal.signal(signal.SIGTERM, lambda sig, frame: stopping.append(sig))
    signal.signal(signal.SIGINT, lambda sig, frame: stopping.append(sig))
    front = NginxFront(settings, kinds())  # nginx and njs are here, or nothing starts
    redis = None if args.floor else RedisServer(free_port(), aof=False)
    children: list[subprocess.Popen[bytes]] = []
    try:
        if redis is not None:
            redis.start()
        sockets = [front_socket_path(args.port, w) for w in range(args.workers)]
        children += [
            start_baseline(path, redis.port if redis else None, args.data / f"baseline-{w}.log")
            for w, path in enumerate(sockets)
        ]
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not all(os.path.exists(path) for path in sockets):
            if time.monotonic() > deadline or any(c.poll() is not None for c in children):
                print("the baseline did not start; see its logs in", args.data, file=sys.stderr)
                return 1
            time.sleep(0.1)
        front.start(SlotMap.even(args.workers))
        url = f"http://127.0.0.1:{args.port}/readyz"
        while http_status(url) != 200:
            if time.monotonic() > deadline:
                print("the baseline is not ready behind nginx", file=sys.stderr)
                return 1
            time.sleep(0.1)
        print(f"the baseline behind nginx: http://127.0.0.1:{args.port}", flush=True)
        while not stopping and front.running():
            time.sleep(0.2)
        return 0
    finally:
        front.stop()
        for child in children:
            child.terminate()
        for child in children:
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                child.kill()
        if redis is not None:
            redis.remove()


if __name__ == "__main__":
    sys.exit(main())
