"""Turn benchmark results into a table, a JSON file and PNG plots."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import orjson

SERVERS = ("baseline", "omnigrid")
FLOW_GOAL = {"checkout_pay": 1.5}  # the goal for paid orders/s, omnigrid/baseline


def _f(x: float | None, fmt: str = "{:.0f}") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return fmt.format(x)


def _ratio(num: float | None, den: float | None) -> float | None:
    if not num or not den or math.isnan(num) or math.isnan(den):
        return None
    return num / den


def ratios(results: dict[str, Any]) -> dict[str, Any]:
    """omnigrid/baseline for throughput (2xx req/s); baseline/omnigrid for fixed-rate p99."""
    out: dict[str, Any] = {"throughput": {}, "fixed_rate_p99": None}
    b, o = results.get("baseline", {}), results.get("omnigrid", {})
    for name in b.get("scenarios", {}):
        bs, os_ = b["scenarios"][name], o.get("scenarios", {}).get(name)
        if bs.get("flow") is not None:  # the checkout flows: see flows()
            continue
        if os_:
            out["throughput"][name] = _ratio(os_.get("ok_rps"), bs.get("ok_rps"))
    bf, of = b.get("fixed_rate"), o.get("fixed_rate")
    if bf and of:
        out["fixed_rate_p99"] = _ratio(bf["latency_ms"].get("p99"), of["latency_ms"].get("p99"))
    return out


def flows(results: dict[str, Any]) -> dict[str, Any]:
    """Per checkout flow: each server's paid orders/s, checkout and pay latency, non-2xx
    and failures, and the ratios omnigrid/baseline (paid/s: higher is better; p99:
    lower is better)."""
    out: dict[str, Any] = {}
    for server in SERVERS:
        for name, entry in results.get(server, {}).get("scenarios", {}).items():
            fl = entry.get("flow")
            if fl is None:
                continue
            out.setdefault(name, {})[server] = {
                "paid_per_s": fl["paid_per_s"],
                "checkouts_per_s": fl["checkouts_per_s"],
                "paid_of_checkouts": fl["paid_of_checkouts"],
                "checkout_ms": fl["checkout_ms"],
                "pay_ms": fl["pay_ms"],
                "non_2xx": entry.get("non_2xx"),
                "socket_errors": sum(entry.get("socket_errors", {}).values()),
                "failures": fl["failures"],
            }
    for name, row in out.items():
        b, o = row.get("baseline"), row.get("omnigrid")
        if b and o:
            row["paid_per_s_ratio"] = _ratio(o["paid_per_s"], b["paid_per_s"])
            for kind in ("checkout", "pay"):
                for pct in ("p50", "p99"):
                    row[f"{kind}_{pct}_ratio"] = _ratio(
                        o[f"{kind}_ms"].get(pct), b[f"{kind}_ms"].get(pct)
                    )
        if name in FLOW_GOAL:
            row["goal_paid_per_s_ratio"] = FLOW_GOAL[name]
            ratio = row.get("paid_per_s_ratio")
            row["goal_met"] = None if ratio is None else ratio >= FLOW_GOAL[name]
    return out


def flows_table(fl: dict[str, Any]) -> list[str]:
    if not fl:
        return []
    head = (
        f"{'flow':<15}{'server':<10}{'paid/s':>8}{'checkout p50/p99 ms':>21}"
        f"{'pay p50/p99 ms':>16}{'non-2xx':>9}  failures"
    )
    lines = [
        "Checkout flows (wrk -c64: checkout, then pay that order; paid orders per second)",
        head,
        "-" * len(head),
    ]
    for name, row in fl.items():
        for server in SERVERS:
            r = row.get(server)
            if not r:
                continue
            ck, pay = r["checkout_ms"], r["pay_ms"]
            fails = ", ".join(f"{k}: {v}" for k, v in sorted(r["failures"].items())) or "-"
            lines.append(
                f"{name:<15}{server:<10}{_f(r['paid_per_s']):>8}"
                f"{_f(ck.get('p50'), '{:.1f}') + '/' + _f(ck.get('p99'), '{:.1f}'):>21}"
                f"{_f(pay.get('p50'), '{:.1f}') + '/' + _f(pay.get('p99'), '{:.1f}'):>16}"
                f"{_f(r['non_2xx']):>9}  {fails}"
            )
        if row.get("paid_per_s_ratio") is not None:
            goal = ""
            if row.get("goal_met") is not None:
                met = "met" if row["goal_met"] else "NOT met"
                goal = f" (goal >= {row['goal_paid_per_s_ratio']:.1f}x: {met})"

            def pair(kind: str, row: dict[str, Any] = row) -> str:
                p50, p99 = row[f"{kind}_p50_ratio"], row[f"{kind}_p99_ratio"]
                return f"{_f(p50, '{:.2f}x')}/{_f(p99, '{:.2f}x')}"

            lines.append(
                f"{'':<15}{'o/b':<10}{_f(row['paid_per_s_ratio'], '{:.2f}x'):>8}"
                f"{pair('checkout'):>21}{pair('pay'):>16}{goal}"
            )
    lines.append(
        "  (o/b = omnigrid/baseline: for paid/s higher is better, for latency lower is better)"
    )
    return lines


def table(results: dict[str, Any], rat: dict[str, Any]) -> str:
    b, o = results.get("baseline", {}), results.get("omnigrid", {})
    names = [
        n
        for n in dict.fromkeys([*b.get("scenarios", {}), *o.get("scenarios", {})])
        if (b.get("scenarios", {}).get(n) or o["scenarios"][n]).get("flow") is None
    ]
    head = (
        f"{'scenario':<15}{'baseline rps':>13}{'omnigrid rps':>13}{'ratio':>7}"
        f"{'baseline p50/p99 ms':>22}{'omnigrid p50/p99 ms':>22}{'non-2xx b/o':>14}"
    )
    lines = [
        "Saturation (wrk -c64, 2xx responses per second; ratio = omnigrid/baseline)",
        head,
        "-" * len(head),
    ]
    for n in names:
        bs, os_ = b.get("scenarios", {}).get(n, {}), o.get("scenarios", {}).get(n, {})

        def lat(s: dict[str, Any]) -> str:
            lm = s.get("latency_ms", {})
            return f"{_f(lm.get('p50'), '{:.1f}')}/{_f(lm.get('p99'), '{:.1f}')}"

        lines.append(
            f"{n:<15}{_f(bs.get('ok_rps')):>13}{_f(os_.get('ok_rps')):>13}"
            f"{_f(rat['throughput'].get(n), '{:.2f}x'):>7}{lat(bs):>22}{lat(os_):>22}"
            f"{_f(bs.get('non_2xx')) + '/' + _f(os_.get('non_2xx')):>14}"
        )
    if not names:  # only the checkout flows ran
        lines = []
    fl = flows_table(flows(results))
    if fl:
        lines += ["", *fl] if lines else fl
    bf, of = b.get("fixed_rate"), o.get("fixed_rate")
    if bf or of:
        rate = (bf or of or {}).get("offered_rps", 0)
        lines += ["", f"Fixed offered rate: {rate:.0f} cart reads/s (h2load --rps, HTTP/1.1)"]
        for name, fr in (("baseline", bf), ("omnigrid", of)):
            if fr:
                lm = fr["latency_ms"]
                lines.append(
                    f"  {name:<9} achieved {fr['achieved_rps']:.0f}/s"
                    f"  p50 {_f(lm.get('p50'), '{:.1f}')}"
                    f" ms  p99 {_f(lm.get('p99'), '{:.1f}')} ms  p99.9 "
                    f"{_f(lm.get('p99.9'), '{:.1f}')} ms  non-2xx {fr['non_2xx']}"
                    + ("  (SATURATED)" if fr.get("saturated") else "")
                )
        if rat.get("fixed_rate_p99"):
            lines.append(f"  p99 ratio baseline/omnigrid: {rat['fixed_rate_p99']:.2f}x")
    sweeps = {n: results.get(n, {}).get("sweep", []) for n in SERVERS}
    if any(sweeps.values()):
        lines += [
            "",
            "Latency vs offered load (cart reads; achieved/s p50/p99 ms; * = rate not kept)",
        ]
        rates = sorted({r["offered_rps"] for s in sweeps.values() for r in s})
        lines.append(f"{'offered/s':>10}" + "".join(f"{n:>26}" for n in SERVERS))
        for rate in rates:
            cells = []
            for n in SERVERS:
                pt = next((r for r in sweeps[n] if r["offered_rps"] == rate), None)
                if pt is None:
                    cells.append(f"{'-':>26}")
                    continue
                lm = pt["latency_ms"]
                cell = (
                    f"{pt['achieved_rps']:.0f}/s {_f(lm.get('p50'), '{:.1f}')}/"
                    f"{_f(lm.get('p99'), '{:.1f}')}" + ("*" if pt["saturated"] else "")
                )
                cells.append(f"{cell:>26}")
            lines.append(f"{rate:>10.0f}" + "".join(cells))
    for n in SERVERS:
        err = results.get(n, {}).get("error")
        if err:
            lines += ["", f"{n}: ERROR {err}"]
    return "\n".join(lines)


def write_json(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))


def plot_latency(results: dict[str, Any], path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    drew = False
    for name, color in zip(SERVERS, ("tab:gray", "tab:blue"), strict=True):
        pts = sorted(results.get(name, {}).get("sweep", []), key=lambda r: r["offered_rps"])
        if not pts:
            continue
        drew = True
        x = [p["offered_rps"] for p in pts]
        for pct, style in (("p99", "-"), ("p50", "--")):
            y = [p["latency_ms"].get(pct, math.nan) for p in pts]
            ax.plot(x, y, style, color=color, marker="o", label=f"{name} {pct}")
        sat = [p for p in pts if p["saturated"]]
        if sat:
            ax.scatter(
                [p["offered_rps"] for p in sat],
                [p["latency_ms"].get("p99", math.nan) for p in sat],
                marker="x",
                s=90,
                color="red",
                zorder=5,
            )
    if not drew:
        plt.close(fig)
        return False
    ax.set_yscale("log")
    ax.set_xlabel("offered load, cart reads/s (open loop, h2load --rps)")
    ax.set_ylabel("latency, ms (log scale)")
    ax.set_title("Cart read latency vs offered load (x = offered rate not kept)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def plot_ratios(rat: dict[str, Any], path: Path) -> bool:
    items = [(k, v) for k, v in rat.get("throughput", {}).items() if v]
    if not items:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.bar([k for k, _ in items], [v for _, v in items], color="tab:blue")
    ax.axhline(1.0, color="black", linewidth=1)
    for i, (_, v) in enumerate(items):
        ax.text(i, v, f"{v:.2f}x", ha="center", va="bottom")
    ax.set_ylabel("throughput omnigrid / baseline")
    ax.set_title("Saturation throughput ratio (wrk -c64, 2xx/s)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def plot_flows(fl: dict[str, Any], path: Path) -> bool:
    """Paid orders/s per flow and server (left), checkout and pay p50/p99 (right)."""
    names = [n for n, row in fl.items() if any(row.get(s) for s in SERVERS)]
    if not names:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"baseline": "tab:gray", "omnigrid": "tab:blue"}
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.38
    for k, server in enumerate(SERVERS):
        xs = [i + (k - 0.5) * width for i in range(len(names))]
        ys = [(fl[n].get(server) or {}).get("paid_per_s", 0.0) for n in names]
        left.bar(xs, ys, width, label=server, color=colors[server])
        for x, y in zip(xs, ys, strict=True):
            if y:
                left.text(x, y, f"{y:.0f}", ha="center", va="bottom", fontsize=8)
    for i, n in enumerate(names):
        ratio = fl[n].get("paid_per_s_ratio")
        if ratio:
            top = max((fl[n].get(s) or {}).get("paid_per_s", 0.0) for s in SERVERS)
            left.text(i, top * 1.08, f"{ratio:.2f}x", ha="center", fontweight="bold")
    left.set_xticks(range(len(names)), names)
    left.set_ylabel("paid orders per second")
    left.set_title("Checkout + pay, wrk -c64 (label: omnigrid/baseline)")
    left.margins(y=0.2)
    left.legend()
    groups = [(n, kind) for n in names for kind in ("checkout", "pay")]
    for k, server in enumerate(SERVERS):
        xs = [i + (k - 0.5) * width for i in range(len(groups))]
        rows = [(fl[n].get(server) or {}).get(f"{kind}_ms", {}) for n, kind in groups]
        p99 = [r.get("p99", 0.0) for r in rows]
        p50 = [r.get("p50", 0.0) for r in rows]
        right.bar(xs, p99, width, color=colors[server], alpha=0.45, label=f"{server} p99")
        right.bar(xs, p50, width, color=colors[server], label=f"{server} p50")
    right.set_xticks(range(len(groups)), [f"{n}\n{kind}" for n, kind in groups], fontsize=8)
    right.set_ylabel("latency, ms")
    right.set_title("Latency per request type (p50 solid, p99 light)")
    right.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
