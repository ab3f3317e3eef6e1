"""The harness's report: locust's CSVs summarised, a plot of the run, the verdict.

``loadtest/harness.py`` runs the load and checks the grid; this turns what it
gathered (locust's statistics, the connections held, the hold's readings, the
check) into the one-screen verdict and ``locust-over-time.png``.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path
from typing import Any


def stats(out: Path) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    with (out / "locust_stats.csv").open() as f:
        for row in csv.DictReader(f):
            if row["Name"] == "Aggregated":
                summary = {
                    "requests": int(row["Request Count"]),
                    "failures": int(row["Failure Count"]),
                    "rps": float(row["Requests/s"]),
                    "p50_ms": float(row["50%"]),
                    "p95_ms": float(row["95%"]),
                    "p99_ms": float(row["99%"]),
                    "max_ms": float(row["Max Response Time"]),
                }
    failures: dict[str, int] = {}
    path = out / "locust_failures.csv"
    if path.exists():
        with path.open() as f:
            for row in csv.DictReader(f):
                kind = row["Error"][:80]
                failures[kind] = failures.get(kind, 0) + int(row["Occurrences"])
    summary["failures_by_kind"] = failures
    return summary


def plot(out: Path, title: str, connections: list[tuple[float, int]], p99_goal_ms: float) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = []
    with (out / "locust_stats_history.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r["Name"] == "Aggregated"]
    t0 = int(rows[0]["Timestamp"]) if rows else 0
    t = [int(r["Timestamp"]) - t0 for r in rows]

    def col(name: str) -> list[float]:
        return [float(r[name]) if r[name] not in ("", "N/A") else float("nan") for r in rows]

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    top.plot(t, col("Requests/s"), label="requests/s")
    top.plot(t, col("Failures/s"), label="failures/s", color="red")
    users = top.twinx()
    users.plot(t, col("User Count"), label="users (locust)", color="grey", linestyle="--")
    if connections:
        held = [n for _, n in connections]
        users.plot([s for s, _ in connections], held, label="connections held", color="green")
    users.set_ylabel("users, connections")
    users.legend(loc="lower right")
    top.set_ylabel("requests/s")
    top.legend(loc="upper left")
    for name in ("50%", "95%", "99%"):
        bottom.plot(t, col(name), label=f"p{name[:-1]}")
    if p99_goal_ms > 0:
        bottom.axhline(
            p99_goal_ms, color="grey", linestyle=":", label=f"goal p99 {p99_goal_ms:g} ms"
        )
    bottom.set_yscale("log")
    bottom.set_ylabel("latency (ms)")
    bottom.set_xlabel("seconds")
    bottom.legend(loc="upper right")
    fig.suptitle(title)
    fig.tight_layout()
    path = out / "locust-over-time.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def correctness_lines(c: dict[str, Any]) -> list[str]:
    """What the check found: nothing oversold, every acknowledged write present."""
    unanswered = c.get("unanswered_at_stop", {})
    return [
        f"oversold SKUs {len(c['oversold'])} of {c['skus_checked']:,}   "
        f"acknowledged commits missing {len(c['lost_commits'])}   "
        f"commits applied without an answer {c['commits_without_answer']}",
        f"lost cart writes {len(c['lost_cart_writes'])} of {c['carts_checked']:,} carts   "
        f"applied without an answer {c['cart_writes_without_answer']}",
        f"in flight or cut off at stop: cart writes {unanswered.get('cart_writes', 0)}, "
        f"commits {unanswered.get('commits', 0)} units (at most what was applied without an "
        "answer)",
    ]


def verdict(args: argparse.Namespace, s: dict[str, Any], c: dict[str, Any]) -> str:
    fail_rate = s["failures"] / s["requests"] if s.get("requests") else float("nan")
    tallies_ok = c.get("final_tallies", 0) >= args.processes
    goal = args.p99_goal_ms  # 0: latency reported, not judged (correctness-only runs)
    floor = bool(c.get("floor"))
    ok = (
        tallies_ok
        and (floor or not (c["oversold"] or c["lost_cart_writes"] or c["lost_commits"]))
        and fail_rate < 0.001
        and (goal <= 0 or s["p99_ms"] < goal)
    )
    lines = [
        "=" * 72,
        f"VERDICT: {'PASS' if ok else 'FAIL'}   users {args.users:,} held {args.hold:.0f} s "
        f"(spawned at {args.spawn_rate:.0f}/s, settled {args.settle:.0f} s; figures: the hold)",
        f"requests {s['requests']:,}   {s['rps']:,.0f}/s   failures {s['failures']:,} "
        f"({fail_rate:.3%}; goal < 0.1%)",
        f"latency p50 {s['p50_ms']:.0f} ms   p95 {s['p95_ms']:.0f} ms   p99 {s['p99_ms']:.0f} ms "
        + (f"(goal < {goal:g})" if goal > 0 else "(not judged: --p99-goal-ms 0)")
        + f"   max {s['max_ms']:.0f} ms   connections held at most "
        f"{s.get('connections_max', 0):,}",
    ]
    if floor:
        lines.append("THE FLOOR (loadtest/floor.py behind nginx): no state, nothing to check")
    else:
        lines += correctness_lines(c)
    inside = s.get("inside_grid")
    if inside:
        lines.append(
            f"inside the grid (its own histogram, the hold): {inside['over_25ms']:,.0f} of "
            f"{inside['requests']:,.0f} requests over 25 ms ({inside['share']:.2%})"
        )
    elif "inside_grid" in s and not floor:
        lines.append(
            "inside the grid: not measured (/metrics not readable, or its two readings "
            "did not cover the same processes, or a count went backwards)"
        )
    if s.get("locust_cpu_us_per_request") is not None:
        grid = s.get("grid_cpu_us_per_request")
        lines.append(
            "CPU per request over the hold: grid "
            + (f"{grid:,.0f} µs ({s['grid_cores']:.2f} cores)" if grid is not None else "n/a")
            + f", generator {s['locust_cpu_us_per_request']:,.0f} µs "
            f"({s['locust_cores']:.2f} cores)"
        )
    if not tallies_ok:
        lines.append(
            f"INCOMPLETE: final tallies from {c.get('final_tallies', 0)} of {args.processes} "
            "locust workers (a worker stopped before writing what it saw acknowledged)"
        )
    ramp = s.get("ramp")
    if ramp:
        lines.append(
            f"spawning and settling: requests {ramp['requests']:,}   "
            f"failures {ramp['failures']:,}   "
            f"p50 {ramp['p50_ms']:.0f} ms   p95 {ramp['p95_ms']:.0f} ms   "
            f"p99 {ramp['p99_ms']:.0f} ms"
        )
    for kind, count in sorted(s["failures_by_kind"].items(), key=lambda kv: -kv[1])[:6]:
        lines.append(f"  failure x{count}: {kind}")
    lines.append("=" * 72)
    return "\n".join(lines)
