"""Issue 2 benchmark: omnigrid against a plain FastAPI + Redis service, same run, same box.

For each server (one at a time): start it (or use --*-url), seed it over HTTP, run the
wrk scenarios (closed loop, -c64) and then cart reads at fixed offered rates (h2load,
open loop). Prints a table, writes loadtest/results/bench-<date>.json and PNG plots.
The checkout flows (checkout_pay: three random SKUs; flash_checkout: one unit of the
hot SKU) check out and pay, and are reported as paid orders per second with checkout
and pay latency each.

    python loadtest/bench.py                      # full run, both servers (~7 min)
    python loadtest/bench.py --only baseline -d 3 --warmup 1 --sweep 1000,2000
    python loadtest/bench.py --scenarios checkout_pay,flash_checkout --no-rate
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loadtest import report, seed, tools
from loadtest.procs import Server, free_port, http_status

REPO = Path(__file__).resolve().parent.parent
RAY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--only", choices=report.SERVERS, help="benchmark one server only")
    p.add_argument("--baseline-url", help="use a running baseline (no start, no flush)")
    p.add_argument("--omnigrid-url", help="use a running omnigrid (no start)")
    p.add_argument("-d", "--duration", type=float, default=15.0, help="seconds per scenario")
    p.add_argument("--warmup", type=float, default=3.0, help="wrk warm-up seconds per scenario")
    p.add_argument(
        "--scenarios", default=",".join(tools.SCENARIOS), help="comma list of %(default)s"
    )
    p.add_argument("-c", "--connections", type=int, default=64, help="wrk connections")
    p.add_argument("-t", "--threads", type=int, default=2, help="wrk threads")
    p.add_argument("--skus", type=int, default=10_000, help="SKUs seeded")
    p.add_argument("--users", type=int, default=100_000, help="uids cart_add draws from")
    p.add_argument("--carts", type=int, default=5_000, help="carts seeded with 3-5 lines")
    p.add_argument("--on-hand", type=int, default=1_000_000, help="stock per SKU")
    p.add_argument("--hot-on-hand", type=int, default=100_000_000, help="stock of flash-1")
    p.add_argument("--seed-concurrency", type=int, default=32)
    p.add_argument(
        "--ttl",
        type=int,
        default=900,
        help="reservation ttl_s in the reserve scenarios (900, the contract's default hold, "
        "keeps their expiry out of the fixed-rate run; 60 puts an expiry wave inside it)",
    )
    p.add_argument("--rate", type=float, default=3000.0, help="fixed offered cart reads/s")
    p.add_argument(
        "--sweep",
        default="1000,2000,3000,4000,5000,6000,8000",
        help="offered rates for the latency curve ('' to skip)",
    )
    p.add_argument("--sweep-duration", type=float, default=8.0, help="seconds per sweep point")
    p.add_argument("--rate-warmup", type=float, default=2.0)
    p.add_argument(
        "--rate-connections",
        type=int,
        default=100,
        help="h2load connections (rate per connection = rate / this)",
    )
    p.add_argument("--uris", type=int, default=500, help="distinct cart URIs for h2load")
    p.add_argument("--no-rate", action="store_true", help="skip fixed-rate and sweep")
    p.add_argument("--workers", type=int, default=2, help="baseline uvicorn workers")
    p.add_argument("--shards", type=int, default=2, help="omnigrid --shards")
    p.add_argument("--omnigrid-cmd", default="omnigrid")
    p.add_argument(
        "--omnigrid-env",
        action="append",
        default=[],
        metavar="KEY=VAL",
        help="extra environment for omnigrid, e.g. OMNIGRID_REDIS_URL=...",
    )
    p.add_argument(
        "--flows-only",
        action="store_true",
        help="only the checkout flows: --scenarios checkout_pay,flash_checkout --no-rate",
    )
    p.add_argument(
        "--baseline-redis-url",
        default=os.environ.get("BASELINE_REDIS_URL", "redis://127.0.0.1:6379/0"),
    )
    p.add_argument("--ready-timeout", type=float, default=120.0)
    p.add_argument(
        "--keep-data",
        action="store_true",
        help="leave the baseline's bl:* keys in Redis afterwards",
    )
    p.add_argument("--results-dir", type=Path, default=REPO / "loadtest" / "results")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--seed-timeout", type=float, default=300.0, help="seconds for all seeding")
    args = p.parse_args(argv)
    if args.flows_only:
        args.scenarios, args.no_rate = ",".join(tools.FLOW_SCENARIOS), True
    unknown = set(args.scenarios.split(",")) - set(tools.ALL_SCENARIOS) - {""}
    if unknown:
        p.error(f"unknown scenarios {sorted(unknown)}; choose from {list(tools.ALL_SCENARIOS)}")
    return args


def _log(msg: str) -> None:
    print(f"[{datetime.now():%H:%M:%S}] {msg}", flush=True)


def _make_server(name: str, args: argparse.Namespace, tmp: Path, stamp: str) -> Server:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ)
    logs = args.results_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    if name == "baseline":
        env["BASELINE_REDIS_URL"] = args.baseline_redis_url
        cmd = [
            sys.executable,
            "-m",
            "uvicorn",
            "loadtest.baseline:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(args.workers),
            "--http",
            "httptools",
            "--loop",
            "uvloop",
            "--no-access-log",
        ]
        return Server(
            name,
            cmd,
            url=url,
            ready_path="/readyz",
            cwd=REPO,
            env=env,
            log_path=logs / f"baseline-{stamp}.log",
        )
    exe = shutil.which(args.omnigrid_cmd)
    if exe is None:
        raise RuntimeError(f"{args.omnigrid_cmd!r} not found on PATH (pip install . first)")
    env[RAY_ENV] = "0"
    env.setdefault("OMNIGRID_DATA_DIR", str(tmp / "omnigrid-data"))
    for kv in args.omnigrid_env:
        key, _, val = kv.partition("=")
        env[key] = val
    cmd = [exe, "serve", "--host", "127.0.0.1", "--port", str(port), "--shards", str(args.shards)]
    return Server(
        name,
        cmd,
        url=url,
        ready_path="/readyz",
        cwd=tmp,
        env=env,
        log_path=logs / f"omnigrid-{stamp}.log",
    )


PROBE_TTL_S = 60


def _probe_call(scenario: str) -> seed.Call:
    sku0 = tools.sku_name(0)
    return {
        "cart_add": seed.Call(
            "POST", f"/v1/carts/{tools.cart_add_uid(0)}/lines", {"sku": sku0, "qty": 1}
        ),
        "cart_read": seed.Call("GET", f"/v1/carts/{tools.read_cart_uid(0)}"),
        "reserve_spread": seed.Call(
            "POST", f"/v1/skus/{sku0}/reservations", {"qty": 1, "ttl_s": PROBE_TTL_S}
        ),
        "reserve_hot": seed.Call(
            "POST", f"/v1/skus/{tools.HOT_SKU}/reservations", {"qty": 1, "ttl_s": PROBE_TTL_S}
        ),
        "resolve_known": seed.Call(
            "POST",
            "/v1/identities/resolve",
            {"identifiers": [{"type": "phone", "value": tools.known_phone(0)}], "create": False},
        ),
        "points_earn": seed.Call(
            "POST",
            f"/v1/members/{tools.cart_add_uid(0)}/points/earn",
            {"points": 1, "reason": "probe", "external_id": "probe"},
        ),
        # the flows: a checkout of the scenario's shape (left pending; 15 minutes' hold)
        "checkout_pay": seed.Call(
            "POST",
            "/v1/checkouts",
            {
                "uid": tools.cart_add_uid(0),
                "lines": [{"sku": tools.sku_name(i), "qty": 1} for i in (10, 20, 30)],
                "fulfilment": "delivery",
            },
        ),
        "flash_checkout": seed.Call(
            "POST",
            "/v1/checkouts",
            {
                "uid": tools.cart_add_uid(0),
                "lines": [{"sku": tools.HOT_SKU, "qty": 1}],
                "fulfilment": "delivery",
            },
        ),
    }[scenario]


def _hot_stock(base: str) -> dict[str, Any] | None:
    status, body = asyncio.run(
        seed.probe(base, seed.Call("GET", f"/v1/skus/{tools.HOT_SKU}/stock"))
    )
    try:
        doc = json.loads(body) if status == 200 else None
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def _hot_commits(
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
    runs: list[tools.WrkResult | None],
) -> dict[str, Any]:
    """Exactly-once check of the flash flow: the hot SKU's on_hand must have dropped by
    at least the pays answered 200 (each committed once) and at most the pays sent (a
    pay in flight when wrk stopped may still have been applied)."""
    flows = [r.flow for r in runs if r is not None and r.flow is not None]
    paid = sum(f["paid"] for f in flows)
    sent = sum(f["pays_sent"] for f in flows)
    out: dict[str, Any] = {"paid_answered": paid, "pays_sent": sent, "before": before}
    out["after"] = after
    if before is None or after is None:
        out["ok"] = False
        out["why"] = "stock not readable"
        return out
    drop = int(before["on_hand"]) - int(after["on_hand"])
    out["on_hand_drop"] = drop
    out["ok"] = paid <= drop <= sent
    return out


def _scenarios(args: argparse.Namespace) -> list[str]:
    return [s.strip() for s in args.scenarios.split(",") if s.strip()]


def run_scenarios(base: str, args: argparse.Namespace, tmp: Path, out: dict[str, Any]) -> None:
    for scenario in _scenarios(args):
        if scenario in tools.FLOW_SCENARIOS and "flow_probe" not in out:
            # the baseline has no Idempotency-Key (see baseline.py): not probed there
            out["flow_probe"] = seed.probe_flow(base, idempotency=out["name"] != "baseline")
            for problem in out["flow_probe"]["problems"]:
                _log(f"  WARNING checkout probe: {problem}")
        script = tmp / f"{scenario}.lua"
        script.write_text(
            tools.wrk_script(
                scenario, skus=args.skus, users=args.users, carts=args.carts, ttl=args.ttl
            )
        )
        hot_before = _hot_stock(base) if scenario == "flash_checkout" else None
        status, body = asyncio.run(seed.probe(base, _probe_call(scenario)))
        if not 200 <= status < 300:
            _log(f"  WARNING probe {scenario}: {status} {body[:200]}")
        warm: tools.WrkResult | None = None
        if args.warmup > 0:
            warm = tools.run_wrk(
                base,
                script,
                duration_s=args.warmup,
                connections=args.connections,
                threads=args.threads,
            )
        res = tools.run_wrk(
            base,
            script,
            duration_s=args.duration,
            connections=args.connections,
            threads=args.threads,
        )
        entry = res.as_dict()
        entry["probe"] = {"status": status, "body": body}
        if scenario == "reserve_hot":
            _, entry["hot_stock_after"] = asyncio.run(
                seed.probe(base, seed.Call("GET", f"/v1/skus/{tools.HOT_SKU}/stock"))
            )
        if scenario == "flash_checkout" and res.flow is not None:
            entry["hot_commits"] = _hot_commits(hot_before, _hot_stock(base), [warm, res])
            if not entry["hot_commits"]["ok"]:
                _log(f"  WARNING {tools.HOT_SKU} commits: {entry['hot_commits']}")
        out["scenarios"][scenario] = entry
        lm = res.latency_ms
        if res.flow is not None:
            fl, ck, pay = res.flow, res.flow["checkout_ms"], res.flow["pay_ms"]
            _log(
                f"  {scenario:<15} {fl['paid_per_s']:8.0f} paid/s  checkout p50/p99 "
                f"{ck.get('p50', 0):5.1f}/{ck.get('p99', 0):6.1f} ms  pay p50/p99 "
                f"{pay.get('p50', 0):5.1f}/{pay.get('p99', 0):6.1f} ms  non-2xx {res.non_2xx}"
                f"  sock-err {sum(res.socket_errors.values())}"
                + (f"  failures {fl['failures']}" if fl["failures"] else "")
            )
            continue
        _log(
            f"  {scenario:<15} {res.ok_rps:8.0f} 2xx/s  p50 {lm.get('p50', 0):6.1f} ms  "
            f"p99 {lm.get('p99', 0):6.1f} ms  non-2xx {res.non_2xx}  "
            f"sock-err {sum(res.socket_errors.values())}"
        )


def run_rates(base: str, args: argparse.Namespace, tmp: Path, out: dict[str, Any]) -> None:
    uri_file = tmp / "cart-uris.txt"
    n = max(1, min(args.uris, args.carts))
    step = max(1, args.carts // n)
    uri_file.write_text(
        "".join(f"{base}/v1/carts/{tools.read_cart_uid(i * step)}\n" for i in range(n))
    )
    rates = sorted({float(r) for r in args.sweep.split(",") if r.strip()} | {args.rate})
    for rate in rates:
        fixed = rate == args.rate
        res = tools.run_h2load(
            uri_file,
            rate=rate,
            connections=args.rate_connections,
            duration_s=args.duration if fixed else args.sweep_duration,
            warmup_s=args.rate_warmup,
            log_path=tmp / f"h2load-{rate:.0f}.log",
        )
        d = res.as_dict()
        out["sweep"].append(d)
        if fixed:
            out["fixed_rate"] = d
        lm = res.latency_ms
        _log(
            f"  rate {rate:6.0f}/s achieved {res.achieved_rps:6.0f}/s  p50 {lm['p50']:6.1f} ms"
            f"  p99 {lm['p99']:6.1f} ms  non-2xx {res.non_2xx}"
            + ("  SATURATED" if res.saturated else "")
        )


def bench_server(
    name: str, args: argparse.Namespace, tmp: Path, stamp: str, out: dict[str, Any]
) -> None:
    given = args.baseline_url if name == "baseline" else args.omnigrid_url
    server: Server | None = None
    started_baseline = False
    try:
        if given:
            base = given.rstrip("/")
            if http_status(base + "/readyz") != 200:
                raise RuntimeError(f"{base}/readyz does not answer 200")
        else:
            server = _make_server(name, args, tmp, stamp)
            if name == "baseline":
                from loadtest.baseline import flush

                asyncio.run(flush(args.baseline_redis_url))
                started_baseline = True
            _log(f"{name}: starting {' '.join(server.cmd)}")
            out["startup_s"] = server.start(args.ready_timeout)
            out["log"] = str(server.log_path)
            base = server.url
            _log(f"{name}: ready at {base} after {out['startup_s']:.1f}s")
        out["url"] = base
        _log(f"{name}: seeding {args.skus} SKUs + {args.carts} carts")
        out["seed"] = seed.seed_server(
            base,
            skus=args.skus,
            carts=args.carts,
            on_hand=args.on_hand,
            hot_on_hand=args.hot_on_hand,
            concurrency=args.seed_concurrency,
            timeout_s=args.seed_timeout,
        )
        _log(
            f"{name}: seeded in {out['seed']['stock']['seconds']:.1f}s + "
            f"{out['seed']['cart_lines']['seconds']:.1f}s"
        )
        if set(tools.FLOW_SCENARIOS) & set(_scenarios(args)):
            out["seed"]["products"] = seed.seed_products(base, args.skus, args.seed_concurrency)
            _log(f"{name}: {args.skus + 1} products priced")
        if "resolve_known" in args.scenarios.split(","):
            out["seed"]["identities"] = seed.seed_identities(
                base, args.carts, args.seed_concurrency
            )
            _log(f"{name}: {args.carts} shoppers' phones resolved")
        run_scenarios(base, args, tmp, out)
        if not args.no_rate:
            run_rates(base, args, tmp, out)
    except Exception as exc:  # record, keep going with the other server
        out["error"] = f"{type(exc).__name__}: {exc}"
        _log(f"{name}: ERROR {out['error']}")
    finally:
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)  # let cleanup finish
        try:
            if server is not None:
                _log(f"{name}: stopping")
                server.stop()
            if started_baseline and not args.keep_data:
                from loadtest.baseline import flush

                asyncio.run(flush(args.baseline_redis_url))
        finally:
            signal.signal(signal.SIGINT, old)


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    try:
        out["omnigrid"] = importlib.metadata.version("omnigrid")
    except importlib.metadata.PackageNotFoundError:
        out["omnigrid"] = None
    git = subprocess.run(
        ["git", "-C", str(REPO), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
        check=False,
    )
    out["git"] = git.stdout.strip() or None
    for tool, flag in (("wrk", "-v"), ("h2load", "--version")):
        proc = subprocess.run([tool, flag], capture_output=True, text=True, check=False)
        out[tool] = (
            (proc.stdout or proc.stderr).splitlines()[0] if proc.stdout or proc.stderr else None
        )
    return out


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    missing = tools.missing_tools()
    if missing:
        print(f"missing tools: {', '.join(missing)}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started ignoring it
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    servers = [args.only] if args.only else list(report.SERVERS)
    doc: dict[str, Any] = {
        "started_at": datetime.now().isoformat(timespec="seconds"),
        "host": {"cpus": os.cpu_count(), "platform": sys.platform, "python": sys.version},
        "params": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "tools": {
            "saturation": "wrk (closed loop)",
            "fixed_rate": "h2load --h1 --rps (per-connection rate, -m 1)",
            "flows": "wrk (closed loop), checkout and pay timed apart in the wrk script",
        },
        "results": {},
    }
    doc["versions"] = _versions()
    t0 = time.monotonic()
    code = 0
    with tempfile.TemporaryDirectory(prefix="omnigrid-bench-") as tmpname:
        tmp = Path(tmpname)
        try:
            for name in servers:
                out: dict[str, Any] = {
                    "name": name,
                    "scenarios": {},
                    "sweep": [],
                    "fixed_rate": None,
                    "error": None,
                }
                doc["results"][name] = out
                out["loadavg_before"] = os.getloadavg()  # other work on the box skews it
                bench_server(name, args, tmp, stamp, out)
                out["loadavg_after"] = os.getloadavg()
        except KeyboardInterrupt:
            _log("interrupted; servers stopped, writing partial results")
            doc["interrupted"] = True
            code = 130
    doc["elapsed_s"] = time.monotonic() - t0
    doc["ratios"] = report.ratios(doc["results"])
    doc["flows"] = report.flows(doc["results"])
    out_json = args.results_dir / f"bench-{stamp}.json"
    report.write_json(out_json, doc)
    print()
    print(report.table(doc["results"], doc["ratios"]))
    print()
    print(f"results: {out_json}")
    if not args.no_plot:
        lat_png = args.results_dir / "latency-vs-load.png"
        if report.plot_latency(doc["results"], lat_png):
            print(f"plot:    {lat_png}")
        ratio_png = args.results_dir / "throughput-ratio.png"
        if report.plot_ratios(doc["ratios"], ratio_png):
            print(f"plot:    {ratio_png}")
        flows_png = args.results_dir / "checkout-flows.png"
        if report.plot_flows(doc["flows"], flows_png):
            print(f"plot:    {flows_png}")
    if any(r.get("error") for r in doc["results"].values()):
        code = code or 1
    return code


if __name__ == "__main__":
    sys.exit(main())
