"""Issue 5: CPU a locust worker spends per request, FastHttpUser against LeanHttpUser.

    python loadtest/client_cost.py --users 1000 --think 0.5,1.5 -d 40

At 100,000 users the generator shares the grid's two cores, so its cost per
request decides how much CPU is left for the grid. This starts one grid, seeds
one SKU, and runs the same journey (read that SKU's stock, then think) with
each client in turn, in one locust process each, at the same offered rate. It
reads the process's CPU time (user + system, from ``getrusage`` of the waited
child) and locust's request count, and prints CPU microseconds per request and
the ratio. Results go to ``loadtest/results/client-cost-<date>.json``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from locust import FastHttpUser, between, task

from loadtest.leanhttp import LeanHttpUser

HERE = Path(__file__).resolve().parent
_THINK = os.environ.get("OMNIGRID_THINK", "0.5,1.5").split(",")
_WAIT = between(float(_THINK[0]), float(_THINK[1]))
_PATH = "/v1/skus/cost-1/stock"


class FastBrowser(FastHttpUser):
    wait_time = _WAIT

    @task
    def browse(self) -> None:
        self.client.get(_PATH, headers={"X-Channel": "app"}, name="stock")


class LeanBrowser(LeanHttpUser):
    wait_time = _WAIT

    @task
    def browse(self) -> None:
        self.request("GET", _PATH, name="stock", channel="app")


def run(cls: str, base: str, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    prefix = out / cls
    cmd = [
        *(sys.executable, "-m", "locust", "-f", __file__, cls, "--headless", "--host", base),
        *("-u", str(args.users), "-r", str(args.spawn_rate), "-t", f"{int(args.duration)}s"),
        *("--csv", str(prefix), "--loglevel", "WARNING", "--stop-timeout", "5"),
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    env = {**os.environ, "OMNIGRID_THINK": args.think}
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    with (out / f"{cls}_stats.csv").open() as f:
        row = next(r for r in csv.DictReader(f) if r["Name"] == "Aggregated")
    requests = int(row["Request Count"])
    return {
        "client": cls,
        "requests": requests,
        "failures": int(row["Failure Count"]),
        "rps": float(row["Requests/s"]),
        "p50_ms": float(row["50%"]),
        "p99_ms": float(row["99%"]),
        "cpu_s": round(cpu, 2),
        "cpu_us_per_request": round(cpu / max(requests, 1) * 1e6),
    }


def main(argv: list[str] | None = None) -> int:
    from loadtest.procs import omnigrid_server

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("-u", "--users", type=int, default=1_000)
    p.add_argument("-r", "--spawn-rate", type=float, default=500.0)
    p.add_argument("-d", "--duration", type=float, default=40.0)
    p.add_argument("--think", default="0.5,1.5", help="min,max seconds")
    args = p.parse_args(argv)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    tmp = Path(tempfile.mkdtemp(prefix="omnigrid-cost-"))
    server = omnigrid_server(tmp, tmp / "grid.log")
    server.start(300)
    try:
        put = urllib.request.Request(
            server.url + "/v1/skus/cost-1/stock",
            data=b'{"on_hand": 10}',
            headers={"X-Channel": "pos", "Content-Type": "application/json"},
            method="PUT",
        )
        urllib.request.urlopen(put, timeout=10).close()  # locust's gevent patch rules out httpx
        rows = [run(cls, server.url, args, tmp) for cls in ("FastBrowser", "LeanBrowser")]
    finally:
        server.stop()
    fast, lean = rows
    ratio = fast["cpu_us_per_request"] / max(lean["cpu_us_per_request"], 1)
    print(f"{'client':<12} {'requests':>9} {'req/s':>7} {'p50':>6} {'p99':>6} {'CPU µs/req':>11}")
    for r in rows:
        print(
            f"{r['client']:<12} {r['requests']:>9,} {r['rps']:>7.0f} {r['p50_ms']:>6.0f} "
            f"{r['p99_ms']:>6.0f} {r['cpu_us_per_request']:>11,}"
        )
    print(f"FastHttpUser costs {ratio:.1f}x the CPU per request of LeanHttpUser")
    result = {"args": vars(args), "at": stamp, "rows": rows, "ratio": round(ratio, 2)}
    path = HERE / "results" / f"client-cost-{stamp}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
