"""Issue 4 benchmark: from a write's acknowledgement to its event on another connection's
stream, with thousands of streams open and the issue-A write load running.

    python loadtest/stream_bench.py                       # 10,000 streams, 30 s
    python loadtest/stream_bench.py --streams 2000 -d 10 --rate 50

Starts ``omnigrid serve --shards 2`` (or uses ``--url``), seeds SKUs, opens
``--streams`` SSE connections (one uid each, over raw asyncio sockets), runs wrk's
cart-add scenario on other uids as background load, and meanwhile writes at
``--rate`` to uids whose streams are open, timing each write's answer and each
event's arrival. Writes: loadtest/results/streams-<date>.json and streams-latency.png.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
import orjson

from loadtest import seed, tools
from loadtest.procs import Server, omnigrid_server

RESULTS = Path(__file__).resolve().parent / "results"
SKUS = 1_000


def log(msg: str) -> None:
    print(f"[{datetime.now():%H:%M:%S}] {msg}", flush=True)


class Streams:
    """Thousands of SSE connections; records when each (uid, version) arrives."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.arrived: dict[tuple[str, int], float] = {}
        self.open = 0
        self.failed = 0
        self.tasks: list[asyncio.Task[None]] = []

    async def open_one(self, uid: str) -> None:
        try:
            reader, writer = await asyncio.open_connection(self.host, self.port)
            writer.write(
                f"GET /v1/streams/users/{uid} HTTP/1.1\r\nHost: bench\r\n"
                "Accept: text/event-stream\r\n\r\n".encode()
            )
            status = await reader.readline()
            if b" 200 " not in status:
                self.failed += 1
                return
            self.open += 1
            while True:
                line = await reader.readline()
                if not line:
                    return
                if line.startswith(b"id: "):  # "cart:3,member:2": the cart's version
                    at = dict(p.split(":", 1) for p in line[4:].decode().strip().split(","))
                    if "cart" in at:
                        self.arrived[(uid, int(at["cart"]))] = time.perf_counter()
        except (OSError, asyncio.IncompleteReadError):
            self.failed += 1

    async def open_all(self, uids: list[str], per_second: int) -> None:
        for start in range(0, len(uids), per_second // 10 or 1):
            for uid in uids[start : start + (per_second // 10 or 1)]:
                self.tasks.append(asyncio.ensure_future(self.open_one(uid)))
            await asyncio.sleep(0.1)
        deadline = time.monotonic() + 60
        while self.open + self.failed < len(uids) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)


async def probe(
    base: str, uids: list[str], rate: float, duration: float
) -> dict[tuple[str, int], float]:
    """Write at ``rate`` to uids with open streams; when was each version acknowledged."""
    acked: dict[tuple[str, int], float] = {}
    async with httpx.AsyncClient(base_url=base, timeout=10) as client:
        end = time.monotonic() + duration
        while time.monotonic() < end:
            uid = random.choice(uids)
            sku = tools.sku_name(random.randrange(SKUS))
            r = await client.post(
                f"/v1/carts/{uid}/lines",
                json={"sku": sku, "qty": 1},
                headers={"X-Channel": "app"},
            )
            now = time.perf_counter()
            if r.status_code == 200:
                acked[(uid, r.json()["version"])] = now
            await asyncio.sleep(1.0 / rate)
    return acked


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def run(args: argparse.Namespace, base: str) -> dict[str, Any]:
    host, port = base.removeprefix("http://").split(":")
    streams = Streams(host, int(port))
    uids = [f"st-{i}" for i in range(args.streams)]
    log(f"opening {args.streams:,} streams")
    await streams.open_all(uids, args.open_rate)
    log(f"{streams.open:,} streams open, {streams.failed} failed")
    script = Path(tempfile.mkdtemp()) / "cart_add.lua"
    script.write_text(tools.wrk_script("cart_add", skus=SKUS, users=100_000, carts=1, ttl=900))
    wrk = subprocess.Popen(
        ["wrk", "-t1", f"-c{args.load_connections}", f"-d{int(args.duration) + 2}s", "-s",
         str(script), base],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    await asyncio.sleep(1.0)
    log(f"probing at {args.rate}/s for {args.duration:.0f} s, wrk -c{args.load_connections} load")
    acked = await probe(base, uids[: streams.open], args.rate, args.duration)
    await asyncio.sleep(2.0)
    wrk_out, _ = wrk.communicate(timeout=60)
    load = tools.parse_wrk(wrk_out)
    latencies = [
        max(0.0, streams.arrived[key] - at) * 1000
        for key, at in acked.items()
        if key in streams.arrived
    ]
    missing = [key for key in acked if key not in streams.arrived]
    for task in streams.tasks:
        task.cancel()
    return {
        "streams_open": streams.open,
        "streams_failed": streams.failed,
        "writes_acked": len(acked),
        "events_matched": len(latencies),
        "events_missing": len(missing),
        "background_load_rps": load.ok_rps,
        "latency_ms": {
            "p50": percentile(latencies, 0.5),
            "p90": percentile(latencies, 0.9),
            "p99": percentile(latencies, 0.99),
            "max": max(latencies, default=float("nan")),
        },
        "samples_ms": latencies,
    }


def plot(result: dict[str, Any], path: Path, stamp: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = result["samples_ms"]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.hist(samples, bins=60, color="tab:blue")
    for label, value, style in (("p50", result["latency_ms"]["p50"], "--"),
                                ("p99", result["latency_ms"]["p99"], ":")):  # fmt: skip
        ax.axvline(value, color="black", linestyle=style, label=f"{label} {value:.1f} ms")
    ax.set_xlabel("write acknowledged -> event on another connection's stream (ms)")
    ax.set_ylabel("writes")
    ax.set_title(
        f"{result['streams_open']:,} streams open, background cart adds "
        f"{result['background_load_rps']:,.0f}/s ({stamp})"
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--url", help="a running grid (else one is started)")
    p.add_argument("--streams", type=int, default=10_000)
    p.add_argument("--open-rate", type=int, default=1_000, help="streams opened per second")
    p.add_argument("--rate", type=float, default=100.0, help="probe writes per second")
    p.add_argument("-d", "--duration", type=float, default=30.0)
    p.add_argument("--load-connections", type=int, default=16, help="wrk cart_add connections")
    args = p.parse_args(argv)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    server: Server | None = None
    tmp = Path(tempfile.mkdtemp(prefix="omnigrid-sbench-"))
    try:
        if args.url:
            base = args.url.rstrip("/")
        else:
            server = omnigrid_server(tmp, RESULTS / "logs" / "streams.log")
            server.start(180)
            base = server.url
        seed.seed_server(base, skus=SKUS, carts=0, on_hand=10**9, hot_on_hand=10**9)
        result = asyncio.run(run(args, base))
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    result["args"] = vars(args)
    out = RESULTS / f"streams-{stamp}.json"
    out.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    plot(result, RESULTS / "streams-latency.png", stamp)
    lat = result["latency_ms"]
    log(
        f"{result['streams_open']:,} streams; {result['events_matched']:,} of "
        f"{result['writes_acked']:,} events timed ({result['events_missing']} missing); "
        f"p50 {lat['p50']:.1f} ms, p99 {lat['p99']:.1f} ms, max {lat['max']:.1f} ms; "
        f"background {result['background_load_rps']:,.0f}/s"
    )
    log(f"wrote {out} and {RESULTS / 'streams-latency.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
