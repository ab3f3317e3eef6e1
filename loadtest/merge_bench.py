"""Merges per second on a grid of its own: pairs of users, each with a phone, a
three-line cart and points, merged at a fixed concurrency (then undone).

    python loadtest/merge_bench.py [--pairs 400] [--concurrency 16] [--shards 2]

Prints merges/s and undos/s with their latency percentiles and writes
loadtest/results/merges-<stamp>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx

from loadtest.procs import Server, free_port
from loadtest.tools import percentile

REPO = Path(__file__).resolve().parent.parent
HEADERS = {"X-Channel": "app"}


async def seed(c: httpx.AsyncClient, i: int, skus: list[str]) -> str:
    phone = f"137{i:08d}"
    r = await c.post("/v1/identities/resolve", headers=HEADERS,
                     json={"identifiers": [{"type": "phone", "value": phone}]})  # fmt: skip
    uid: str = r.json()["uid"]
    for sku in skus[i % 7 : i % 7 + 3]:
        await c.post(f"/v1/carts/{uid}/lines", json={"sku": sku, "qty": 1}, headers=HEADERS)
    earn = {"points": 100, "reason": "seed", "external_id": f"s{i}"}
    await c.post(f"/v1/members/{uid}/points/earn", json=earn, headers=HEADERS)
    return uid


async def timed(calls: list[Any], concurrency: int) -> tuple[float, list[float], int]:
    """Run the calls ``concurrency`` at a time: (seconds, latencies, failures)."""
    queue = list(calls)
    latencies: list[float] = []
    failures = 0

    async def worker() -> None:
        nonlocal failures
        while queue:
            call = queue.pop()
            t0 = time.perf_counter()
            r = await call()
            latencies.append(time.perf_counter() - t0)
            failures += r.status_code != 200

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - t0, sorted(latencies), failures


def ms(sorted_s: list[float], pct: float) -> float:
    return percentile(sorted_s, pct) * 1000


async def run(url: str, pairs: int, concurrency: int) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=url, timeout=60) as c:
        skus = [f"mb-sku-{i}" for i in range(10)]
        for sku in skus:
            await c.put(f"/v1/skus/{sku}/stock", json={"on_hand": 10**9}, headers=HEADERS)
        uids = await asyncio.gather(*(seed(c, i, skus) for i in range(2 * pairs)))
        print(f"seeded {len(uids)} users", flush=True)
        merge_ids: list[str] = []

        def merge(a: str, b: str) -> Any:
            async def call() -> httpx.Response:
                r = await c.post(f"/v1/users/{a}/merge", json={"from_uid": b}, headers=HEADERS)
                if r.status_code == 200:
                    merge_ids.append(r.json()["merge_id"])
                return r

            return call

        def undo(mid: str) -> Any:
            return lambda: c.post(f"/v1/merges/{mid}/undo", headers=HEADERS)

        calls = [merge(uids[2 * i], uids[2 * i + 1]) for i in range(pairs)]
        secs, lat, failed = await timed(calls, concurrency)
        usecs, ulat, ufailed = await timed([undo(m) for m in merge_ids], concurrency)
    return {
        "pairs": pairs,
        "concurrency": concurrency,
        "merges_per_s": pairs / secs,
        "merge_ms": {"p50": ms(lat, 50), "p99": ms(lat, 99)},
        "merge_failures": failed,
        "undos_per_s": len(merge_ids) / usecs,
        "undo_ms": {"p50": ms(ulat, 50), "p99": ms(ulat, 99)},
        "undo_failures": ufailed,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--pairs", type=int, default=400)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--shards", type=int, default=2)
    args = p.parse_args()
    port = free_port()
    tmp = Path(tempfile.mkdtemp(prefix="merge-bench-"))
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
           "OMNIGRID_DATA_DIR": str(tmp / "data")}  # fmt: skip
    cmd = ["omnigrid", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--shards", str(args.shards)]  # fmt: skip
    server = Server("omnigrid", cmd, url=f"http://127.0.0.1:{port}", ready_path="/readyz",
                    cwd=tmp, env=env, log_path=tmp / "omnigrid.log")  # fmt: skip
    server.start()
    try:
        result = asyncio.run(run(server.url, args.pairs, args.concurrency))
    finally:
        server.stop()
    print(json.dumps(result, indent=2))
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out = REPO / "loadtest" / "results" / f"merges-{stamp}.json"
    out.write_text(json.dumps({"params": vars(args), **result}, indent=2))
    print(f"results: {out}")
    return 0 if not result["merge_failures"] and not result["undo_failures"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
