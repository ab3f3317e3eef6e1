"""The ``omnigrid`` command."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from dataclasses import replace

from omnigrid.api.settings import DEFAULT_CHANNELS, Settings

VERSION = "0.1.0"

CONFIG_HELP = f"""
configuration (flags override environment variables):
  OMNIGRID_HOST            address to serve HTTP on (default 127.0.0.1)
  OMNIGRID_PORT            HTTP port shared by every shard process (default 8000)
  OMNIGRID_SHARDS          shard processes, each serving HTTP (default 2)
  OMNIGRID_CHANNELS        comma-separated channel registry
                           (default {",".join(DEFAULT_CHANNELS)})
  OMNIGRID_MAX_INFLIGHT    requests in progress per process before 429 (default 4096)
  OMNIGRID_MAX_PENDING     commands queued per destination shard before 429 (default 10000)
  OMNIGRID_PEER_TIMEOUT_S  seconds before an unanswered forwarded batch is 503 (default 5)
  OMNIGRID_KEEPALIVE_S     HTTP keep-alive seconds (default 75)
  OMNIGRID_NAMESPACE       Ray namespace of the shard actors (default omnigrid)
  OMNIGRID_DATA_DIR        the embedded journal's directory (default ./data)
  OMNIGRID_REDIS_URL       journal in Redis Streams instead (e.g. redis://127.0.0.1:6379/0)
  OMNIGRID_JOURNAL_SYNC    embedded journal: normal (default; an acknowledged write survives
                           any process's death) or full (fsync per commit: survives power
                           loss; about half the write throughput today)
  OMNIGRID_LOG_LEVEL       debug, info, warning, error (default warning)
  RAY_ADDRESS              join this Ray cluster instead of starting a local Ray

Every change is journaled before it is acknowledged (group commit per batch)
and replayed when a shard process or the whole grid starts again.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="omnigrid",
        description="omnigrid: the live state grid behind every retail channel.",
        epilog=CONFIG_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"omnigrid {VERSION}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = commands.add_parser(
        "serve",
        help="start the grid (a local Ray unless RAY_ADDRESS is set) and serve HTTP",
        epilog=CONFIG_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("--host", help="address to serve HTTP on")
    serve.add_argument("--port", type=int, help="HTTP port")
    serve.add_argument("--shards", type=int, help="number of shard processes")
    serve.add_argument("--log-level", help="debug, info, warning or error")
    serve.add_argument("--data-dir", help="where the embedded journal keeps its files")
    args = parser.parse_args(argv)
    if args.command != "serve":
        parser.print_help()
        return 0
    try:
        settings = Settings.from_env(
            host=args.host,
            port=args.port,
            shards=args.shards,
            log_level=args.log_level,
            data_dir=args.data_dir,
        )
    except ValueError as e:
        parser.error(str(e))
    # Shard processes run in Ray's working directories: give them an absolute path.
    return serve_grid(replace(settings, data_dir=os.path.abspath(settings.data_dir)))


def serve_grid(settings: Settings) -> int:
    if not os.environ.get("RAY_ADDRESS"):
        # A local Ray stays wholly on loopback with this; Ray reads it when it
        # is imported, and the processes it starts inherit it.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    from omnigrid.api.cluster import init_ray, start_shards, stop_shards

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    where = init_ray(settings)
    try:
        handles = start_shards(settings)
        print(
            f"omnigrid serving http://{settings.host}:{settings.port} with {settings.shards} "
            f"shards on Ray ({where}); journal: {settings.redis_url or settings.data_dir}",
            flush=True,
        )
        stop.wait()
        stop_shards(handles)
    finally:
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
