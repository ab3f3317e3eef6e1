"""The ``omnigrid`` command."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
import urllib.request
from dataclasses import replace
from typing import Any

import msgspec

from omnigrid.actors import tiers
from omnigrid.actors.kinds import kinds
from omnigrid.actors.kinds import load as load_kinds
from omnigrid.actors.slots import SlotMap
from omnigrid.api.runtime import cluster_cli, keys_cli
from omnigrid.api.runtime.compose import identity_secret
from omnigrid.api.runtime.front import NginxFront
from omnigrid.api.runtime.node import database_for
from omnigrid.api.runtime.settings import DEFAULT_CHANNELS, Settings
from omnigrid.persistence.cluster_state import ClusterState
from omnigrid.persistence.db import StoreUnavailable

VERSION = "0.1.0"
FRONT_FOLLOW_S = 2.0  # how often the front's copy of the slot map is checked

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
  OMNIGRID_DATA_DIR        the embedded journal's and store's directory (default ./data)
  OMNIGRID_REDIS_URL       journal in Redis Streams instead (e.g. redis://127.0.0.1:6379/0)
  OMNIGRID_JOURNAL_SYNC    embedded journal: normal (default; an acknowledged write survives
                           any process's death) or full (fsync per commit: survives power
                           loss; about half the write throughput today)
  OMNIGRID_JOURNAL_TIMEOUT_S  seconds an append may take before it is refused (a locked
                           file) or settled (an unanswered Redis) (default 0.25)
  OMNIGRID_DURABILITY      sync (default: journaled before the answer), async (answered
                           first, journaled within 5 ms: a process death can lose that
                           window) or none (no journal: a crash loses what the write-behind
                           has not stored, up to one interval; for caches and benchmarks)
  OMNIGRID_POSTGRES_DSN    the store (system of record) in PostgreSQL, e.g.
                           postgresql://postgres@127.0.0.1/omnigrid; else SQLite in the data dir
  OMNIGRID_WRITEBEHIND_INTERVAL_S  seconds between drains to the store (default 0.2)
  OMNIGRID_WRITEBEHIND_BATCH       rows per statement to the store (default 5000)
  OMNIGRID_WRITEBEHIND_MAX_QUEUE   changes per shard waiting for the store before writes
                                   answer 503 (default 500000; 0: no limit)
  OMNIGRID_MAX_RESIDENT    entities per shard in memory before idle ones passivate
                           (default 1000000; 0: no limit)
  OMNIGRID_EXTRA_PORTS     more HTTP ports every process serves too, e.g. 8001,8002 (for
                           more than ~28,000 connections from one client address)
  OMNIGRID_MAX_STREAMS     open event streams per process before 429 (default 20000)
  OMNIGRID_STREAM_HEARTBEAT_S    seconds between heartbeats on idle streams (default 15)
  OMNIGRID_HEADER_TIMEOUT_S  a request's headers not whole by then: cut (default 10)
  OMNIGRID_SYNC_LOG_RETENTION_S  changes kept for the sync log (default 604800: 7 days)
  OMNIGRID_SYNC_MONITORING  0: no per-channel figures, lag or alerts (to measure their cost)
  OMNIGRID_STOP_TIMEOUT_S  a SIGTERM's clean stop takes at most this (default 30)
  OMNIGRID_MAX_CLIENT_CONNECTIONS  per client address and process (default 4096; 0: none)
  OMNIGRID_TRUSTED_CLIENTS addresses not bounded (default 127.0.0.1,::1)
  OMNIGRID_TLS_CERTFILE, OMNIGRID_TLS_KEYFILE  serve HTTPS with this PEM certificate and key
  OMNIGRID_BOOTSTRAP_KEY   an admin key before any is stored: <key_id>:<secret>
  OMNIGRID_INSECURE        1: serve a non-loopback address with no API key (--insecure)
  OMNIGRID_WEBHOOK_MAX_ATTEMPTS  tries before a delivery is a dead letter (default 8)
  OMNIGRID_WEBHOOK_BACKOFF_S     first retry after this, doubling (default 1)
  OMNIGRID_WEBHOOK_TIMEOUT_S     a receiver slower than this failed that try (default 5)
  OMNIGRID_FRONT           nginx: an nginx front holds the port and the connections and sends
                           each request to the shard owning its key; the shards listen on
                           Unix sockets (needs nginx and libnginx-mod-http-js; one machine)
  OMNIGRID_FRONT_WORKERS   nginx worker processes, each holding up to ~19,000 connections
                           (default 2)
  OMNIGRID_LOG_LEVEL       debug, info, warning, error (default warning)
  RAY_ADDRESS              join this Ray cluster instead of starting a local Ray

Every change is journaled before it is acknowledged (group commit per batch).
Snapshots and the event log go to the store behind; the journal is trimmed
once the store has them. A shard process or a whole grid that starts again
loads the store's snapshots and replays the journal after them.
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
    serve.add_argument(
        "--front",
        choices=["nginx"],
        help="an nginx front holds the connections and sends each request to its owner",
    )
    serve.add_argument("--front-workers", type=int, help="nginx worker processes (default 2)")
    serve.add_argument("--data-dir", help="where the embedded journal and store keep their files")
    serve.add_argument(
        "--insecure",
        action="store_true",
        default=None,
        help="serve a non-loopback address with no API key (say so loudly)",
    )
    keys_cli.add_parser(commands)
    cluster_cli.add_parser(commands)
    audit = commands.add_parser(
        "audit",
        help="drain the write-behind, compare live entities with the store, print mismatches",
    )
    audit.add_argument(
        "--url", default="http://127.0.0.1:8000", help="any grid process's HTTP address"
    )
    audit.add_argument("--json", action="store_true", help="print the full report as JSON")
    args = parser.parse_args(argv)
    if args.command == "audit":
        return run_audit(args.url, args.json)
    if args.command == "keys":
        return keys_cli.run(args)
    if args.command == "cluster":
        return cluster_cli.run(args)
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
            insecure=args.insecure,
            front=args.front,
            front_workers=args.front_workers,
        )
        load_kinds(settings.kind_modules)  # here first: a bad module fails at once
        settings = replace(settings, data_dir=os.path.abspath(settings.data_dir))
        identity_secret(settings)  # made here once, before the shard processes read it
        if settings.tiers:  # a bad table fails here, not in every shard
            tiers.configure(tiers.tiers_from_json(settings.tiers))
        refused = keys_cli.refuse_open_door(settings)
        if settings.front:
            NginxFront(settings, kinds())  # nginx and njs are here, before anything starts
    except (ValueError, ImportError, AttributeError, msgspec.ValidationError) as e:
        parser.error(str(e))
    if refused is not None:
        print(f"omnigrid: {refused}", file=sys.stderr)
        return 2
    # Shard processes run in Ray's working directories: the path is absolute.
    asked = args.shards is not None or "OMNIGRID_SHARDS" in os.environ
    return serve_grid(settings, asked)


def run_audit(url: str, as_json: bool) -> int:
    """Exit 0 when every live entity matches the store, 1 on a mismatch, 2 if unreachable."""
    request = urllib.request.Request(url.rstrip("/") + "/v1/cluster/audit", method="POST")
    try:
        with urllib.request.urlopen(request, timeout=900) as answer:
            report = json.loads(answer.read())
    except (OSError, ValueError) as e:
        print(f"omnigrid audit: cannot reach the grid at {url}: {e}", file=sys.stderr)
        return 2
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        print(
            f"checked {report['checked']} live entities: {report['mismatched']} mismatched "
            f"({report['mismatch_rate']:.4%}), {report['pending']} changed during the audit"
        )
        for shard in report["shards"]:
            if "error" in shard:
                print(f"  shard {shard['shard']}: did not answer ({shard['error']})")
            elif shard["mismatched"]:
                print(f"  shard {shard['shard']}: e.g. {', '.join(shard['examples'])}")
    return 0 if report["mismatched"] == 0 and report["complete"] else 1


def stored_slot_map(settings: Settings) -> SlotMap | None:
    try:
        wire = ClusterState(database_for(settings), settings.namespace).slot_map()
    except StoreUnavailable:  # no store yet (its tables come with the first shard)
        return None
    return SlotMap.from_wire(wire) if wire is not None else None


def stored_shard_count(settings: Settings) -> int:
    """How many shards the grid's stored slot map has (0: a grid's first start)."""
    slot_map = stored_slot_map(settings)
    return slot_map.shard_count if slot_map is not None else 0


def serve_grid(settings: Settings, shards_asked: bool = False) -> int:
    """Serve until a signal; ``shards_asked``: the shard count was given (``--shards``,
    ``OMNIGRID_SHARDS``), so a grid stored with another count is scaled to it."""
    if not os.environ.get("RAY_ADDRESS"):
        # A local Ray stays wholly on loopback with this; Ray reads it when it
        # is imported, and the processes it starts inherit it.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    from omnigrid.api.runtime.cluster import (
        init_ray,
        running_shards,
        start_shards,
        stop_leftovers,
        stop_shards,
    )

    stop = threading.Event()
    front: NginxFront | None = None
    failed = False  # the front could not start

    def on_signal(signum: int, frame: object) -> None:
        if not stop.is_set():
            print(
                f"omnigrid: {signal.Signals(signum).name}: stopping cleanly within "
                f"{settings.stop_timeout_s:g} s (a second signal forces it)",
                flush=True,
            )
            stop.set()
            return
        print(
            "omnigrid: forced to stop: journaled changes are replayed on the next start", flush=True
        )
        os._exit(1)  # no drain: the journal has every acknowledged change

    where = init_ray(settings)
    # after ray.init: Ray puts a handler of its own on SIGTERM that exits at once
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    try:
        left = stop_leftovers(settings.namespace)
        if left:
            print(f"omnigrid: stopped {left} shard processes an earlier run left", flush=True)
        asked = settings.shards
        settings = replace(settings, shards=stored_shard_count(settings) or asked)
        handles = start_shards(settings)
        print(
            f"omnigrid serving {'https' if settings.tls_certfile else 'http'}://"
            f"{settings.host}:{settings.port} with {settings.shards} "
            f"shards on Ray ({where}); journal: {settings.redis_url or settings.data_dir}; "
            f"store: {'PostgreSQL' if settings.postgres_dsn else settings.data_dir}",
            flush=True,
        )
        if settings.front:
            front = NginxFront(settings, kinds())
            try:
                front.start(stored_slot_map(settings) or SlotMap.even(settings.shards))
                print(
                    f"omnigrid: nginx ({settings.front_workers} workers) holds the "
                    "connections and sends each request to the shard owning its key",
                    flush=True,
                )
            except RuntimeError as e:  # the shards stop cleanly below
                print(f"omnigrid: {e}", flush=True)
                front, failed = None, True
                stop.set()
        if shards_asked and asked != settings.shards:
            job = ray.get(handles[0].start_job.remote("scale", asked))
            print(
                f"omnigrid: the grid was stored with {settings.shards} shards; scaling to "
                f"{asked} online: {job.get('job_id') or job}",
                flush=True,
            )
        while not stop.wait(FRONT_FOLLOW_S if front is not None else None):
            if front is not None:
                try:
                    keep_front(front, settings)
                except Exception as e:  # a store that cannot be read now: next time
                    print(f"omnigrid: the front's check failed: {e!r}", flush=True)
        started = time.monotonic()
        if front is not None:
            front.stop(settings.stop_timeout_s / 2)
        reports = stop_shards(running_shards(settings.namespace), settings.stop_timeout_s)
        clean = say_stopped(reports, time.monotonic() - started)
    finally:
        ray.shutdown()
    return 0 if clean and not failed else 1


def keep_front(front: NginxFront, settings: Settings) -> None:
    """nginx running (started again if it died) and on the stored slot map."""
    slot_map = stored_slot_map(settings)
    if not front.running():
        print(f"omnigrid: nginx exited ({front.exit_code()}); starting it again", flush=True)
        try:
            front.start(slot_map or SlotMap.even(settings.shards))
        except RuntimeError as e:
            print(f"omnigrid: {e}", flush=True)  # tried again at the next check
        return
    if slot_map is not None and front.follow(slot_map):
        print(f"omnigrid: nginx follows slot map version {slot_map.version}", flush=True)


def say_stopped(reports: list[dict[str, Any]], seconds: float) -> bool:
    """What a stop did, shard by shard; whether every shard stopped cleanly."""
    clean = True
    for r in reports:
        if "error" in r:
            clean = False
            print(
                f"  shard {r['shard']}: did not stop in time ({r['error']}); its journal "
                "is replayed on the next start",
                flush=True,
            )
            continue
        clean = clean and bool(r["store_complete"])
        print(
            f"  shard {r['shard']}: {r['streams_closed']} streams ended, "
            f"{r['changes_stored']} changes stored, {r['left_in_journal']} left in the "
            "journal",
            flush=True,
        )
    print(f"omnigrid: stopped {'cleanly ' if clean else ''}in {seconds:.1f} s", flush=True)
    return clean


if __name__ == "__main__":
    sys.exit(main())
