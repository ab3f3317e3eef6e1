"""Issue 5: locust journeys across channels against a grid, with a correctness verdict.

    python loadtest/harness.py --users 2000 --spawn-rate 100 --hold 120
    python loadtest/harness.py --url http://127.0.0.1:8000 --users 500 --hold 60 --think 2,5
    python loadtest/harness.py --url http://api-1:8000,http://api-2:8000 -u 20000 --processes 8

One command: raises its open-file limit to the hard limit, starts ``omnigrid
serve`` (unless ``--url``), seeds a SKU catalogue (plus a flash sale's hot SKUs
with little stock), runs locust headless and distributed (``--processes``: one
master and that many workers), then checks the grid against what the users saw
acknowledged: no SKU oversold (committed never above its stock, counted from
the grid and from the users' tally) and every acknowledged cart change present.
Statistics restart ``--settle`` seconds after every user is spawned (for the
requests queued while spawning to drain), so the verdict's figures are those of
the held load; the ramp's own are kept beside them. It prints a one-screen
verdict and writes the locust CSV/HTML reports, a JSON summary and a PNG of
throughput, users, connections held and p50/p95/p99 over the whole run under
loadtest/results/locust-<date>/ (or ``--out``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
import psutil

from loadtest.harness_report import plot, stats, verdict
from loadtest.procs import (
    Server,
    baseline_front_server,
    cpu_seconds,
    descendants,
    free_port,
    histogram_buckets,
    omnigrid_server,
)

HERE = Path(__file__).resolve().parent


def log(msg: str) -> None:
    print(f"[{datetime.now():%H:%M:%S}] {msg}", flush=True)


def raise_open_files() -> str:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return f"open files: soft {soft} -> {hard} (hard limit; each user holds one connection)"


async def _each(base: str, calls: list[tuple[str, str, Any]]) -> list[Any]:
    """Every (method, path, JSON body) call against the grid, 32 at a time; their answers."""
    limit = asyncio.Semaphore(32)
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:

        async def one(method: str, path: str, body: Any) -> Any:
            async with limit:
                r = await client.request(method, path, json=body, headers={"X-Channel": "pos"})
                r.raise_for_status()
                return r.json()

        return await asyncio.gather(*(one(*call) for call in calls))


async def seed(
    base: str, run: str, skus: int, hot: int, on_hand: int, hot_on_hand: int
) -> dict[str, Any]:
    """SKUs named after the run, so runs against one grid never share stock."""
    catalogue = {f"{run}-cat-{i:05d}": on_hand for i in range(skus)}
    flash = {f"{run}-flash-{i}": hot_on_hand for i in range(hot)}
    stock = {**catalogue, **flash}
    await _each(base, [("PUT", f"/v1/skus/{s}/stock", {"on_hand": q}) for s, q in stock.items()])
    return {"skus": list(catalogue), "hot_skus": list(flash), "on_hand": stock}


def established(ports: set[int], grid_side: bool) -> int:
    """TCP connections established to these ports, counted by ``ss`` (the kernel filters).

    A grid on this machine: counted on its side (source port). A grid elsewhere:
    the connections this machine holds to it (destination port). Parsing
    /proc/net/tcp instead cost this process 15% of a core at 100,000 connections.
    """
    side = "sport" if grid_side else "dport"
    where = " or ".join(f"{side} = :{p}" for p in sorted(ports))
    out = subprocess.run(
        ["ss", "-Htn", "state", "established", f"( {where} )"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out.count("\n")


def watch_connections(
    targets: list[str], stop: threading.Event, samples: list[tuple[float, int]]
) -> None:
    ports = {urlsplit(t).port or 80 for t in targets}
    local = all((urlsplit(t).hostname or "").startswith("127.") for t in targets)
    whose = "held by the grid" if local else "this machine holds to the grid"
    started = time.monotonic()
    while not stop.wait(10.0):
        samples.append((round(time.monotonic() - started), established(ports, local)))
        log(f"connections {whose}: {samples[-1][1]:,}")


def run_seconds(args: argparse.Namespace) -> int:
    """Locust's run time: spawning every user, settling, then holding them for ``--hold``."""
    spawning = math.ceil(args.users / args.spawn_rate)
    return spawning + int(args.settle) + int(args.hold)  # type: ignore[no-any-return]


def grid_latency(base: str) -> dict[str, Any] | None:
    """The grid's own request histogram (its ``/metrics``, every process): requests and
    how many took under 25 ms inside the grid, and which shards answered; None if the
    grid does not show it (a grid with keys wants a signed request)."""
    try:
        answer = httpx.get(base + "/metrics", timeout=30)
    except httpx.HTTPError:
        return None
    if answer.status_code != 200:
        return None
    name = "omnigrid_http_request_duration_seconds"
    buckets = histogram_buckets(answer.text, name)
    shards = set(re.findall(rf'^{name}_bucket{{.*?shard="(\d+)"', answer.text, re.MULTILINE))
    return {
        "requests": buckets.get(float("inf"), 0.0),
        "within_25ms": buckets.get(0.025, 0.0),
        "shards": sorted(shards),
    }


def latency_over_hold(first: dict[str, Any] | None, last: dict[str, Any] | None) -> Any:
    """Requests over 25 ms inside the grid between two readings (the hold); None when
    the two readings cannot be compared: a process missing from one of them (it did
    not answer the process that gathered /metrics in time) or a count gone backwards
    (a process restarted)."""
    if first is None or last is None:
        return None
    requests = last["requests"] - first["requests"]
    within = last["within_25ms"] - first["within_25ms"]
    if first.get("shards") != last.get("shards") or requests < 0 or within < 0:
        return None
    over = requests - within
    return {"requests": requests, "over_25ms": over, "share": over / requests if requests else 0}


def tree_cpu_s(pid: int | None) -> float | None:
    """CPU seconds (user + system) of a process and every descendant now alive."""
    if pid is None or not psutil.pid_exists(pid):
        return None
    return cpu_seconds([pid, *descendants(pid)])


class HoldMeter:
    """Readings as the hold begins and just before it ends: the grid's own latency
    histogram, and the CPU of the grid's process tree (a grid the harness started)
    and of locust's, for CPU per request beside the generator's."""

    def __init__(self, base: str, grid_pid: int | None, begins_s: float, ends_s: float) -> None:
        self.base, self.grid_pid = base, grid_pid
        self.locust_pid: int | None = None
        self.readings: list[dict[str, Any]] = []
        self._timers = [threading.Timer(t, self._read) for t in (begins_s, max(begins_s, ends_s))]
        for timer in self._timers:
            timer.start()

    def _read(self) -> None:
        self.readings.append(
            {
                "at": time.monotonic(),
                "latency": grid_latency(self.base),
                "grid_cpu_s": tree_cpu_s(self.grid_pid),
                "locust_cpu_s": tree_cpu_s(self.locust_pid),
            }
        )

    def stop(self) -> None:
        for timer in self._timers:
            timer.cancel()

    def result(self, requests: int) -> dict[str, Any]:
        """What happened between the two readings (``requests``: locust's, in the hold)."""
        if len(self.readings) < 2:
            return {}
        first, last = self.readings[0], self.readings[-1]
        out: dict[str, Any] = {
            "inside_grid": latency_over_hold(first["latency"], last["latency"]),
            "seconds": last["at"] - first["at"],
        }
        rate = requests / out["seconds"] if out["seconds"] > 0 else 0
        for side in ("grid", "locust"):
            a, b = first[f"{side}_cpu_s"], last[f"{side}_cpu_s"]
            if a is not None and b is not None and rate > 0:
                out[f"{side}_cpu_us_per_request"] = (b - a) / out["seconds"] / rate * 1e6
                out[f"{side}_cores"] = (b - a) / out["seconds"]
        return out


def run_locust(
    args: argparse.Namespace, base: str, out: Path, env: dict[str, str], meter: HoldMeter
) -> int:
    cmd = [
        *(sys.executable, "-m", "locust", "-f", str(HERE / "locustfile.py")),
        *("--headless", "--host", base, "--processes", str(args.processes)),
        *("-u", str(args.users), "-r", str(args.spawn_rate), "-t", f"{run_seconds(args)}s"),
        *("--csv", str(out / "locust"), "--csv-full-history", "--html", str(out / "report.html")),
        *("--stop-timeout", "10", "--loglevel", "WARNING"),
    ]
    log("running " + " ".join(cmd[2:]))
    with (out / "locust.log").open("wb") as logfile:
        proc = subprocess.Popen(cmd, env=env, stdout=logfile, stderr=subprocess.STDOUT)
        meter.locust_pid = proc.pid
        try:
            return proc.wait()
        except BaseException:
            proc.kill()
            raise


def wait_for_final_tallies(tally_dir: Path, workers: int, timeout_s: float = 30.0) -> None:
    """Until every worker's final tally is there (a worker may outlive locust's master
    by the seconds it takes to stop its users), or ``timeout_s``: the check then says
    INCOMPLETE."""
    deadline = time.monotonic() + timeout_s
    finals = 0
    while time.monotonic() < deadline:
        finals = final_tallies(tally_dir)
        if finals >= workers:
            return
        time.sleep(0.5)
    log(f"final tallies: {finals} of {workers} workers after {timeout_s:.0f} s")


def final_tallies(tally_dir: Path) -> int:
    """How many workers have written their final tally."""
    finals = 0
    for path in tally_dir.glob("tally-*.json"):
        with contextlib.suppress(OSError, ValueError):
            finals += bool(json.loads(path.read_text()).get("final"))
    return finals


def check(base: str, seeded: dict[str, Any], tally_dir: Path) -> dict[str, Any]:
    """The grid against the users' tally: oversold SKUs and lost cart writes."""
    carts: dict[str, dict[str, Any]] = {}
    committed: dict[str, int] = {}
    tallies = sorted(tally_dir.glob("tally-*.json"))
    final, unanswered = 0, {"cart_writes": 0, "commits": 0}
    for path in tallies:
        part = json.loads(path.read_text())
        carts.update(part["carts"])
        for sku, qty in part["committed"].items():
            committed[sku] = committed.get(sku, 0) + qty
        final += bool(part.get("final"))
        for kind, count in part.get("unanswered", {}).items():
            unanswered[kind] = unanswered.get(kind, 0) + count
    stock, cart_views = asyncio.run(_read_all(base, list(seeded["on_hand"]), list(carts)))
    oversold, short, unacked = [], [], 0
    lost, unacked_carts = [], 0
    for sku, initial in seeded["on_hand"].items():
        view = stock[sku]
        sold_in_grid = initial - view["on_hand"]
        if view["on_hand"] < 0 or view["reserved"] > view["on_hand"]:
            oversold.append(sku)
        if committed.get(sku, 0) > initial:
            oversold.append(sku)
        if committed.get(sku, 0) > sold_in_grid:
            short.append(sku)  # a commit acknowledged that the grid does not hold
        unacked += max(0, sold_in_grid - committed.get(sku, 0))
    for uid, acked in carts.items():
        view = cart_views[uid]
        lines = {line["sku"]: line["qty"] for line in view["lines"]}
        behind = view["version"] < acked["version"]
        if behind or (view["version"] == acked["version"] and lines != acked["lines"]):
            lost.append(uid)
        elif view["version"] > acked["version"]:
            unacked_carts += 1  # applied, but its answer never reached the user
    return {
        "tallies": len(tallies),
        "final_tallies": final,
        "unanswered_at_stop": unanswered,
        "skus_checked": len(seeded["on_hand"]),
        "oversold": sorted(set(oversold)),
        "lost_commits": short,
        "commits_without_answer": unacked,
        "carts_checked": len(carts),
        "lost_cart_writes": lost,
        "cart_writes_without_answer": unacked_carts,
    }


async def _read_all(
    base: str, skus: list[str], uids: list[str]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Every SKU's stock and every cart (100,000 carts take a while one at a time)."""
    stock = await _each(base, [("GET", f"/v1/skus/{sku}/stock", None) for sku in skus])
    carts = await _each(base, [("GET", f"/v1/carts/{uid}", None) for uid in uids])
    return dict(zip(skus, stock, strict=True)), dict(zip(uids, carts, strict=True))


def floor_check(tally_dir: Path) -> dict[str, Any]:
    """The floor keeps nothing, so only the workers' final tallies are counted."""
    return {"floor": True, "final_tallies": final_tallies(tally_dir)}


def think_seconds(args: argparse.Namespace) -> tuple[float, float]:
    low, high = args.think.split(",")
    return float(low), float(high)


def invalid(args: argparse.Namespace) -> str | None:
    """What is wrong with the arguments, before anything starts."""
    if args.p99_goal_ms < 0:
        return "--p99-goal-ms must be 0 (not judged) or a positive number of ms"
    if args.users < 1 or args.spawn_rate <= 0 or args.hold < 0 or args.settle < 0:
        return "--users and --spawn-rate must be positive, --hold and --settle not negative"
    if args.processes < 1:
        return "--processes must be at least 1 (each locust worker tallies what it saw)"
    if args.shards < 1 or args.ports < 1 or args.skus < 1 or args.hot < 0:
        return "--shards, --ports and --skus must be at least 1, --hot not negative"
    if not 0 <= args.front_workers <= 64:
        return "--front-workers must be between 0 and 64"
    if args.floor and (args.url or not args.front_workers):
        return "--floor starts its own app behind nginx: give --front-workers, not --url"
    try:
        low, high = think_seconds(args)
    except ValueError:
        return f"--think must be min,max seconds, not {args.think!r}"
    if not 0 <= low <= high:
        return f"--think must be 0 <= min <= max, not {args.think!r}"
    return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--url",
        help="a running grid (else one is started); several API hosts comma-separated: "
        "users spread over them",
    )
    p.add_argument("-u", "--users", type=int, default=2_000)
    p.add_argument("-r", "--spawn-rate", type=float, default=100.0)
    p.add_argument("--hold", type=float, default=120.0, help="seconds every user is held")
    p.add_argument(
        "--settle",
        type=float,
        default=30.0,
        help="seconds after spawning before the hold is measured (its figures are kept apart)",
    )
    p.add_argument("--processes", type=int, default=2, help="locust worker processes")
    p.add_argument("--think", default="20,40", help="think time between actions, min,max s")
    p.add_argument("--shards", type=int, default=2, help="grid processes (each accepts HTTP)")
    p.add_argument("--ports", type=int, default=1, help="HTTP ports the started grid serves")
    p.add_argument(
        "--front-workers",
        type=int,
        default=0,
        help="put the started grid behind its nginx front with this many workers (each "
        "holds ~19,000 connections); 0: every shard process serves the ports itself",
    )
    p.add_argument(
        "--floor",
        action="store_true",
        help="instead of the grid, an app that does nothing (loadtest/floor.py) behind the "
        "same nginx: what the stack alone costs at this load (no state, nothing to check)",
    )
    p.add_argument("--skus", type=int, default=2_000)
    p.add_argument("--hot", type=int, default=5, help="flash-sale SKUs with little stock")
    p.add_argument("--hot-on-hand", type=int, default=200)
    p.add_argument(
        "--p99-goal-ms",
        type=float,
        default=100.0,
        help="the verdict's latency goal over the hold; 0 reports p99 without judging it "
        "(a correctness-only run, such as the test suite's on a busy machine)",
    )
    p.add_argument("--out", type=Path, help="report folder (default results/locust-<date>)")
    args = p.parse_args(argv)
    problem = invalid(args)
    if problem:
        p.error(problem)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    run = f"lt{stamp.replace('-', '')}"  # prefixes this run's SKUs and uids
    out = args.out or HERE / "results" / f"locust-{stamp}"
    out.mkdir(parents=True, exist_ok=True)
    log(raise_open_files())
    tmp = Path(tempfile.mkdtemp(prefix="omnigrid-harness-"))
    server: Server | None = None
    try:
        if args.url:
            targets = [u.strip().rstrip("/") for u in args.url.split(",") if u.strip()]
            base = targets[0]
        else:
            port = free_port()
            extra = [free_port() for _ in range(args.ports - 1)]
            targets = [f"http://127.0.0.1:{p}" for p in (port, *extra)]
            if args.front_workers:
                log(
                    f"grid on {len(targets)} port(s): nginx ({args.front_workers} workers) "
                    f"in front of {args.shards} shard processes"
                )
            else:
                log(f"grid on {len(targets)} port(s), {args.shards} processes accepting on each")
            # A user whose task made no request thinks twice before its next one:
            # the grid must keep an idle connection open longer than that.
            longest = think_seconds(args)[1]
            keepalive = max(75, math.ceil(2 * longest) + 10)
            log(f"grid keep-alive {keepalive} s (think time up to {longest:g} s)")
            env = {
                "OMNIGRID_EXTRA_PORTS": ",".join(map(str, extra)),
                "OMNIGRID_KEEPALIVE_S": str(keepalive),
            }
            if args.front_workers:
                env["OMNIGRID_FRONT"] = "nginx"
                env["OMNIGRID_FRONT_WORKERS"] = str(args.front_workers)
            server = (
                baseline_front_server(
                    tmp,
                    out / "grid.log",
                    floor=True,
                    workers=args.shards,
                    front_workers=args.front_workers,
                    env=env,
                    port=port,
                )
                if args.floor
                else omnigrid_server(tmp, out / "grid.log", args.shards, env, port=port)
            )
            log(f"grid ready in {server.start(300):.0f} s at {server.url}")
            base = server.url
        seeded = asyncio.run(seed(base, run, args.skus, args.hot, 1_000_000, args.hot_on_hand))
        (tmp / "seed.json").write_text(json.dumps(seeded))
        log(f"seeded {args.skus:,} SKUs and {args.hot} flash SKUs of {args.hot_on_hand}")
        think_min, think_max = think_seconds(args)
        env = {
            **os.environ,
            "OMNIGRID_SEED_FILE": str(tmp / "seed.json"),
            "OMNIGRID_TALLY_DIR": str(tmp),
            "OMNIGRID_THINK_MIN_S": str(think_min),
            "OMNIGRID_THINK_MAX_S": str(think_max),
            "OMNIGRID_TARGETS": ",".join(targets),
            "OMNIGRID_RAMP_FILE": str(out / "ramp.json"),
            "OMNIGRID_SETTLE_S": str(args.settle),
            "OMNIGRID_RUN_ID": run,
        }
        started = time.monotonic()
        samples: list[tuple[float, int]] = []
        stop = threading.Event()
        watcher = threading.Thread(target=watch_connections, args=(targets, stop, samples))
        watcher.start()
        begins = math.ceil(args.users / args.spawn_rate) + args.settle
        grid_pid = server.proc.pid if server is not None and server.proc is not None else None
        meter = HoldMeter(base, grid_pid, begins, begins + args.hold - 2)
        try:
            code = run_locust(args, base, out, env, meter)
        finally:
            stop.set()
            watcher.join()
            meter.stop()
        log(f"locust exited with {code} after {time.monotonic() - started:.0f} s")
        wait_for_final_tallies(tmp, args.processes)
        checked = floor_check(tmp) if args.floor else check(base, seeded, tmp)
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    summary = stats(out)
    with contextlib.suppress(OSError):
        summary["ramp"] = json.loads((out / "ramp.json").read_text())
    summary["connections_max"] = max((n for _, n in samples), default=0)
    summary.update(meter.result(summary.get("requests", 0)))
    title = (
        f"{args.users:,} users ({args.spawn_rate:.0f}/s, settle {args.settle:.0f} s), "
        f"held {args.hold:.0f} s"
    )
    png = plot(out, f"{title}, think {args.think} s, {stamp}", samples, args.p99_goal_ms)
    report = {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "stats": summary,
        "check": checked,
        "connections": samples,
    }
    (out / "summary.json").write_text(json.dumps(report, indent=2))
    print(verdict(args, summary, checked))
    log(f"reports in {out} ({png.name}, report.html, locust_*.csv, summary.json)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
