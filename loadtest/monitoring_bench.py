"""What sync monitoring costs: the same grid with it on and off, in turns.

    python loadtest/monitoring_bench.py [-d 10] [--rounds 2] [--shards 2]

Each round starts a grid with sync monitoring on (the default: per-channel
figures, sync lag, deliveries per change, alert evaluation) and one with
``OMNIGRID_SYNC_MONITORING=0``, one after the other, and measures the v1 cart
reads and stock reservations of loadtest/auth_bench.py (wrk, unsigned) on each,
with a live stream open on 50 of the reserved SKUs, so that deliveries are
measured too. Two
figures per scenario: throughput, and the grid's own CPU per request (the load
generator shares the cores, so the second shows the grid's cost alone). The
medians over the rounds and their on/off ratios are printed and written to
loadtest/results/monitoring-<stamp>.json. Goal: monitoring costs under 3 %.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
from datetime import datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx

from loadtest.auth_bench import SCENARIOS, SKUS, grid_server, measure, seed

REPO = Path(__file__).resolve().parent.parent
STREAMS = 50  # SKUs with a live stream open: every reservation of them is a delivery


def watch(url: str, stop: threading.Event) -> threading.Thread:
    """Streams on the first SKUs, read until ``stop``: deliveries to measure."""

    def read(sku: str) -> None:
        try:
            with (
                httpx.Client(timeout=httpx.Timeout(5.0, read=None)) as c,
                c.stream("GET", f"{url}/v1/streams/skus/{sku}") as r,
            ):
                for _ in r.iter_lines():
                    if stop.is_set():
                        return
        except httpx.HTTPError:
            pass

    def run() -> None:
        threads = [
            threading.Thread(target=read, args=(f"u-s-{i}",), daemon=True)
            for i in range(min(STREAMS, SKUS))
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def one_grid(monitoring: bool, seconds: float, shards: int) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="monitoring-bench-"))
    server = grid_server(tmp, shards, OMNIGRID_SYNC_MONITORING="1" if monitoring else "0")
    server.start()
    stop = threading.Event()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            seed(c, "u-")
        watch(server.url, stop)
        print(f"monitoring {'on' if monitoring else 'off'}:", flush=True)
        return measure(server.url, tmp, None, seconds)
    finally:
        stop.set()
        server.stop()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("-d", "--duration", type=float, default=10)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--shards", type=int, default=2)
    args = p.parse_args()
    runs: dict[str, list[dict[str, Any]]] = {"on": [], "off": []}
    for _ in range(args.rounds):
        for state in ("on", "off"):
            runs[state].append(one_grid(state == "on", args.duration, args.shards))
    summary: dict[str, Any] = {}
    for name in SCENARIOS:
        row: dict[str, Any] = {}
        for state in ("on", "off"):
            row[f"ok_rps_{state}"] = statistics.median(r[name]["ok_rps"] for r in runs[state])
            row[f"cpu_us_{state}"] = statistics.median(
                r[name]["grid_cpu_us_per_request"] for r in runs[state]
            )
        row["throughput_on_off"] = row["ok_rps_on"] / row["ok_rps_off"]
        row["cpu_cost"] = row["cpu_us_on"] / row["cpu_us_off"] - 1
        summary[name] = row
        print(
            f"{name}: throughput on/off {row['throughput_on_off']:.3f}x; grid CPU per request "
            f"{row['cpu_us_on']:.0f} us on, {row['cpu_us_off']:.0f} us off: monitoring costs "
            f"{100 * row['cpu_cost']:+.1f} % (goal < 3 %)"
        )
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out = REPO / "loadtest" / "results" / f"monitoring-{stamp}.json"
    out.write_text(json.dumps({"params": vars(args), "runs": runs, "summary": summary}, indent=2))
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
