"""Two versions of omnigrid in one run: ``bench.py --only omnigrid`` for each, in turn.

The versions alternate (A B A B ...) so that the machine's drift falls on both;
each scenario's figure is the median of its rounds. Writes a JSON and a PNG
under loadtest/results/before-after-<stamp>/ and prints a table.

    # the "before" checkout, installed into a venv of its own:
    git worktree add /tmp/before <commit>
    python -m venv --system-site-packages /tmp/before-venv
    /tmp/before-venv/bin/pip install --no-deps -e /tmp/before
    python loadtest/before_after.py --before /tmp/before-venv/bin/omnigrid --rounds 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
METRICS = ("ok_rps", "p50", "p99")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--before", required=True, help="the older version's omnigrid command")
    p.add_argument("--after", default="omnigrid", help="the newer version's omnigrid command")
    p.add_argument("--rounds", type=int, default=2, help="runs of each version, alternating")
    p.add_argument("-d", "--duration", type=float, default=10.0, help="seconds per scenario")
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--results-dir", type=Path, default=REPO / "loadtest" / "results")
    return p.parse_args(argv)


def run_bench(cmd: str, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, str(REPO / "loadtest" / "bench.py"), "--only", "omnigrid"]
    argv += ["--omnigrid-cmd", cmd, "--no-rate", "--no-plot", "--results-dir", str(out)]
    argv += ["-d", str(args.duration), "--warmup", str(args.warmup)]
    subprocess.run(argv, check=True)
    (report,) = sorted(out.glob("bench-*.json"))
    scenarios: dict[str, Any] = json.loads(report.read_text())["results"]["omnigrid"]["scenarios"]
    return scenarios


def figures(scenario: dict[str, Any]) -> dict[str, float]:
    latency = scenario["latency_ms"]
    return {"ok_rps": scenario["ok_rps"], "p50": latency["p50"], "p99": latency["p99"]}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = args.results_dir / f"before-after-{stamp}"
    rounds: dict[str, list[dict[str, Any]]] = {"before": [], "after": []}
    for i in range(args.rounds):
        for name in ("before", "after"):
            cmd = args.before if name == "before" else args.after
            started = time.monotonic()
            print(f"[round {i + 1}/{args.rounds}] {name}: {cmd}", flush=True)
            rounds[name].append(run_bench(cmd, base / f"{name}-{i + 1}", args))
            print(f"[round {i + 1}/{args.rounds}] {name} took {time.monotonic() - started:.0f} s")
    table: dict[str, dict[str, dict[str, float]]] = {}
    for name, runs in rounds.items():
        for scenario in runs[0]:
            per_run = [figures(run[scenario]) for run in runs if "latency_ms" in run[scenario]]
            table.setdefault(scenario, {})[name] = {
                m: statistics.median(f[m] for f in per_run) for m in METRICS
            }
    doc = {"params": vars(args) | {"results_dir": str(args.results_dir)}, "medians": table}
    (base / "before-after.json").write_text(json.dumps(doc, indent=2))
    print(f"\n{'scenario':<16}{'before ok/s':>12}{'after ok/s':>12}{'ratio':>7}"
          f"{'p50 ms b/a':>14}{'p99 ms b/a':>14}")  # fmt: skip
    for scenario, row in table.items():
        b, a = row["before"], row["after"]
        print(
            f"{scenario:<16}{b['ok_rps']:>12.0f}{a['ok_rps']:>12.0f}"
            f"{a['ok_rps'] / b['ok_rps']:>7.2f}"
            f"{b['p50']:>7.2f}/{a['p50']:<6.2f}{b['p99']:>7.2f}/{a['p99']:<6.2f}"
        )
    plot(table, base / "before-after.png")
    print(f"results: {base}")
    return 0


def plot(table: dict[str, dict[str, dict[str, float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = list(table)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.38
    for offset, name in ((-width / 2, "before"), (width / 2, "after")):
        xs = [i + offset for i in range(len(scenarios))]
        ax1.bar(xs, [table[s][name]["ok_rps"] for s in scenarios], width, label=name)
        ax2.bar(xs, [table[s][name]["p99"] for s in scenarios], width, label=name)
    for ax, title in ((ax1, "throughput (ok req/s, wrk -c64)"), (ax2, "p99 latency (ms)")):
        ax.set_xticks(range(len(scenarios)), scenarios)
        ax.set_title(title)
        ax.legend()
    fig.suptitle("omnigrid before and after one declaration per kind (issue 11), same run")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    raise SystemExit(main())
