"""``omnigrid cluster status|scale N|rebalance|drain NODE``: the grid's shape, changed online.

``status`` reads ``GET /v1/cluster`` from any grid process and prints, per shard:
its process, node, slots, entities, journal and write-behind; then the nodes.
``scale N``, ``rebalance`` and ``drain NODE`` start a job
(``POST /v1/cluster/scale|rebalance|drain``) and follow it
(``GET /v1/cluster/jobs/{id}``) with its progress until it ends. Every call is
signed with ``--key`` or ``OMNIGRID_KEY`` (``<key_id>:<secret>``) when the grid
has keys.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
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
    scale = verbs.add_parser("scale", help="move slots online to N shards, then follow the job")
    scale.add_argument("shards", type=int, help="the shard count to reach")
    rebalance = verbs.add_parser(
        "rebalance", help="even the shards over the nodes and the slots over the shards, online"
    )
    drain = verbs.add_parser("drain", help="move every shard off a node before it leaves")
    drain.add_argument("node", help="the Ray node's id, or a unique prefix of it (status shows)")
    for verb in (scale, rebalance, drain):
        verb.add_argument("--url", default="http://127.0.0.1:8000", help="any grid process")
        verb.add_argument("--key", help="<key_id>:<secret> with the ops scope (or OMNIGRID_KEY)")
        verb.add_argument("--no-wait", action="store_true", help="print the job id and exit")
        verb.add_argument(
            "--channel",
            default=os.environ.get("OMNIGRID_CHANNEL", "web"),
            help="X-Channel of the call: every write names one (default web, or OMNIGRID_CHANNEL)",
        )


def run(args: argparse.Namespace) -> int:
    """Exit 0 when every shard answers and its journal takes writes (a job: it is done),
    1 if not, 2 if the grid cannot be reached (or refuses the call)."""
    key = args.key or os.environ.get("OMNIGRID_KEY", "")
    key_id, _, secret = key.partition(":")
    auth = GridAuth(key_id, secret) if key else None
    with httpx.Client(base_url=args.url.rstrip("/"), auth=auth, timeout=30) as grid:
        try:
            if args.verb == "status":
                return status(grid.get("/v1/cluster"), args.json)
            body: dict[str, Any] = {}
            if args.verb == "scale":
                body = {"shards": args.shards}
            elif args.verb == "drain":
                body = {"node": args.node}
            started = grid.post(
                f"/v1/cluster/{args.verb}", json=body, headers={"X-Channel": args.channel}
            )
            if started.status_code != 202:
                return refused(started)
            job_id = started.json()["job_id"]
            print(f"job {job_id} started", flush=True)
            return 0 if args.no_wait else follow(grid, job_id)
        except httpx.HTTPError as e:
            print(f"omnigrid cluster: cannot reach the grid at {args.url}: {e}", file=sys.stderr)
            return 2


def refused(answer: httpx.Response) -> int:
    print(f"omnigrid cluster: {answer.status_code} {answer.text[:300]}", file=sys.stderr)
    return 2


def follow(grid: httpx.Client, job_id: str) -> int:
    """The job's progress, a line a second while slots move, until it ends."""
    while True:
        answer = grid.get(f"/v1/cluster/jobs/{job_id}")
        if answer.status_code != 200:
            return refused(answer)
        job = answer.json()
        print(f"  {job['state']}: {job['slots_moved']}/{job['slots_total']} slots", flush=True)
        if job["state"] != "running":
            if job["error"]:
                print(f"  failed: {job['error']}", flush=True)
            return 0 if job["state"] == "done" else 1
        time.sleep(1.0)


def status(answer: httpx.Response, as_json: bool) -> int:
    if answer.status_code != 200:
        return refused(answer)
    view: dict[str, Any] = answer.json()
    if as_json:
        print(json.dumps(view, indent=2))
    else:
        print(f"slot map version {view['slot_map_version']}, {len(view['shards'])} shards")
        for shard in view["shards"]:
            print("  " + line(shard))
        for node in view.get("nodes", []):
            shards = ", ".join(str(s) for s in node["shards"]) or "none"
            drained = " (drained)" if node["drained"] else ""
            print(f"  node {node['node_id'][:12]}{drained}: shards {shards}")
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
