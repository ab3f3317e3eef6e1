"""``omnigrid cluster status``: the grid's shards as any process sees them.

Reads ``GET /v1/cluster`` from any grid process (signed with ``--key`` or
``OMNIGRID_KEY``, ``<key_id>:<secret>``, when the grid has keys) and prints, per
shard: its process, node, slots, entities, journal and write-behind. Scaling and
rebalancing online (``scale N``, ``rebalance``) come with slot migration.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import httpx

from omnigrid.api.client import GridAuth


def add_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    cluster = commands.add_parser("cluster", help="the grid's shards, slots and health")
    verbs = cluster.add_subparsers(dest="verb", metavar="VERB", required=True)
    status = verbs.add_parser("status", help="every shard: process, node, slots, entities")
    status.add_argument(
        "--url", default="http://127.0.0.1:8000", help="any grid process's HTTP address"
    )
    status.add_argument("--key", help="<key_id>:<secret> with the ops scope (or OMNIGRID_KEY)")
    status.add_argument("--json", action="store_true", help="print the answer as JSON")


def run(args: argparse.Namespace) -> int:
    """Exit 0 when every shard answers and its journal takes writes, 1 if not, 2 if the
    grid cannot be reached (or refuses the key)."""
    key = args.key or os.environ.get("OMNIGRID_KEY", "")
    key_id, _, secret = key.partition(":")
    auth = GridAuth(key_id, secret) if key else None
    try:
        answer = httpx.get(args.url.rstrip("/") + "/v1/cluster", auth=auth, timeout=10)
    except httpx.HTTPError as e:
        print(f"omnigrid cluster: cannot reach the grid at {args.url}: {e}", file=sys.stderr)
        return 2
    if answer.status_code != 200:
        print(f"omnigrid cluster: {answer.status_code} {answer.text[:300]}", file=sys.stderr)
        return 2
    view: dict[str, Any] = answer.json()
    if args.json:
        print(json.dumps(view, indent=2))
    else:
        print(f"slot map version {view['slot_map_version']}, {len(view['shards'])} shards")
        for shard in view["shards"]:
            print("  " + line(shard))
    healthy = all("error" not in s and s.get("journal_ok", True) for s in view["shards"])
    return 0 if healthy else 1


def line(shard: dict[str, Any]) -> str:
    if "error" in shard:
        return f"shard {shard['shard']}: did not answer ({shard['error']})"
    slots = sum(b - a + 1 for a, b in shard["slot_ranges"])
    entities = sum(shard["entities"].values())
    failing = shard.get("store_failing_s")
    return (
        f"shard {shard['shard']}: pid {shard['pid']} on node {shard['node_id'][:12]}, "
        f"{slots} slots, {entities} entities in memory ({shard['passivated']} passivated), "
        f"journal {'ok' if shard['journal_ok'] else 'REFUSING'}, "
        f"write-behind queue {shard['writebehind_queue']}"
        + (f", store failing for {failing} s" if failing is not None else "")
    )
