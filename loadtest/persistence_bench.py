"""Issue 3 benchmark: what durability costs, how far the store lags, how big and how
fast a grid of a million carts is.

    python loadtest/persistence_bench.py throughput   # journal off/on, sync/async, stores
    python loadtest/persistence_bench.py scale        # 1M five-line carts + 100k SKUs

``throughput`` starts omnigrid once per configuration, seeds it, runs wrk (cart add,
reservations spread over SKUs) and reads the write-behind lag histogram from
``/metrics``. ``scale`` writes a million carts and 100,000 SKUs straight into the store
(SQLite or PostgreSQL), starts a grid on it, and reports recovery time and the resident
memory of every process of the grid; then it journals events without storing them and
times their replay. Results: a table, loadtest/results/persistence-<date>.json, PNGs.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson

from loadtest import seed, tools
from loadtest.procs import Server, descendants, histogram_buckets, omnigrid_server

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "loadtest" / "results"
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
REDIS_URL = "redis://127.0.0.1:6379/0"

# name -> environment; "none" is the journal off (the write-behind alone)
CONFIGS: dict[str, dict[str, str]] = {
    "none": {"OMNIGRID_DURABILITY": "none"},
    "sync": {},
    "async": {"OMNIGRID_DURABILITY": "async"},
    "sync-full": {"OMNIGRID_JOURNAL_SYNC": "full"},
    "redis+pg": {"OMNIGRID_REDIS_URL": REDIS_URL, "OMNIGRID_POSTGRES_DSN": "<db>"},
    # the journal without the write-behind running during the measurement
    "sync-nowb": {"OMNIGRID_WRITEBEHIND_INTERVAL_S": "1000"},
    "none-nowb": {"OMNIGRID_DURABILITY": "none", "OMNIGRID_WRITEBEHIND_INTERVAL_S": "1000"},
}


def log(msg: str) -> None:
    print(f"[{datetime.now():%H:%M:%S}] {msg}", flush=True)


def fresh_database(name: str) -> str:
    import psycopg

    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.execute(f"CREATE DATABASE {name}")
    return f"postgresql://postgres@127.0.0.1:5432/{name}"


def namespace_of(tag: str) -> str:
    return "bench" + tag.replace("+", "").replace("-", "")


def forget_redis_namespace(url: str, namespace: str) -> None:
    """A fresh start: an earlier run's journal would be replayed into a fresh database."""
    import redis

    r = redis.Redis.from_url(url)
    for key in r.scan_iter(f"og:{namespace}:*", count=10_000):
        r.delete(key)


def grid(env: dict[str, str], data_dir: Path, shards: int, logs: Path, tag: str) -> Server:
    full = {"OMNIGRID_NAMESPACE": namespace_of(tag), **env, "OMNIGRID_LOG_LEVEL": "info"}
    return omnigrid_server(data_dir, logs / f"persistence-{tag}.log", shards, full, tag)


def histogram_quantiles(metrics: str, name: str) -> dict[str, Any]:
    """p50/p99 (upper bucket bounds) of a histogram summed over every process."""
    buckets = histogram_buckets(metrics, name)
    if not buckets or not buckets.get(float("inf")):
        return {}
    total = buckets[float("inf")]
    out: dict[str, Any] = {"count": total}
    out["cdf"] = [[b, buckets[b] / total] for b in sorted(buckets) if b != float("inf")]
    for label, q in (("p50", 0.5), ("p99", 0.99)):
        out[label] = next(b for b in sorted(buckets) if buckets[b] >= q * total)
    return out


def metrics_text(base: str) -> str:
    import httpx

    return httpx.get(base + "/metrics", timeout=30).text


def run_throughput(args: argparse.Namespace, tmp: Path, out: dict[str, Any]) -> None:
    logs = RESULTS / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    for name in args.configs.split(","):
        env = dict(CONFIGS[name])
        if env.get("OMNIGRID_POSTGRES_DSN") == "<db>":
            env["OMNIGRID_POSTGRES_DSN"] = fresh_database("omnigrid_bench")
        if env.get("OMNIGRID_REDIS_URL"):
            forget_redis_namespace(env["OMNIGRID_REDIS_URL"], namespace_of(name))
        server = grid(env, tmp / name, args.shards, logs, name)
        (tmp / name).mkdir(parents=True, exist_ok=True)
        result: dict[str, Any] = {"env": env}
        out["throughput"][name] = result
        try:
            log(f"{name}: starting")
            server.start(180)
            seed.seed_server(server.url, skus=args.skus, carts=0, on_hand=10**9, hot_on_hand=10**9)
            for scenario in args.scenarios.split(","):
                script = tmp / f"{scenario}.lua"
                script.write_text(
                    tools.wrk_script(scenario, skus=args.skus, users=args.users, carts=1, ttl=900)
                )
                tools.run_wrk(server.url, script, duration_s=args.warmup)
                res = tools.run_wrk(server.url, script, duration_s=args.duration)
                result[scenario] = {
                    "ok_rps": res.ok_rps,
                    "non_2xx": res.non_2xx,
                    "latency_ms": res.latency_ms,
                }
                log(f"{name}: {scenario} {res.ok_rps:,.0f}/s p99 {res.latency_ms.get('p99')} ms")
            time.sleep(1.0)
            result["writebehind_lag_s"] = histogram_quantiles(
                metrics_text(server.url), "omnigrid_writebehind_lag_seconds"
            )
            lag = result["writebehind_lag_s"]
            log(f"{name}: write-behind lag p50 {lag.get('p50')} s, p99 {lag.get('p99')} s")
        except Exception as e:
            result["error"] = f"{type(e).__name__}: {e}"
            log(f"{name}: ERROR {result['error']}")
        finally:
            server.stop()


def rss_mb(pids: list[int]) -> dict[str, float]:
    """Resident memory of each process (MB), by its command name."""
    out: dict[str, float] = {}
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        kb = int(re.search(r"VmRSS:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
        out[f"{comm}:{pid}"] = kb / 1024
    return out


def seed_store(args: argparse.Namespace, dsn: str, data_dir: Path) -> dict[str, Any]:
    """A million five-line carts and 100k SKUs written straight into the store."""
    from omnigrid.actors.cart import Cart, Line
    from omnigrid.actors.residency import pack_state
    from omnigrid.actors.slots import slot_of
    from omnigrid.actors.stock import Stock
    from omnigrid.persistence.store import PostgresStore, Snapshot, SqliteStore, Store

    store: Store = PostgresStore(dsn) if dsn else SqliteStore(str(data_dir / "store.sqlite3"))
    now = time.time()
    started = time.monotonic()
    chunk: list[Snapshot] = []

    def put(entity: Any) -> None:
        chunk.append(
            Snapshot(
                entity.key,
                entity.kind,
                slot_of(entity.key),
                entity.version,
                entity.updated_at,
                pack_state(entity),
                entity.view(),
            )
        )
        if len(chunk) >= 20_000:
            store.write(chunk, [], 5_000)
            chunk.clear()

    for i in range(args.skus_scale):
        stock = Stock(f"stock:s{i}", f"s{i}")
        stock.on_hand, stock.version, stock.updated_at = 1000, 1, now
        put(stock)
    for i in range(args.carts_scale):
        cart = Cart(f"cart:u{i}", f"u{i}")
        for j in range(5):
            sku = f"s{(i * 7 + j * 13) % args.skus_scale}"
            cart.lines[sku] = Line(1 + j, "miniprogram", "app", now)
        cart.version, cart.updated_at = 5, now
        put(cart)
        if i and i % 200_000 == 0:
            log(f"scale: {i:,} carts stored")
    if chunk:
        store.write(chunk, [], 5_000)
    store.close()
    return {"seconds": time.monotonic() - started}


def run_scale(args: argparse.Namespace, tmp: Path, out: dict[str, Any]) -> None:
    logs = RESULTS / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    for store_name in args.stores.split(","):
        data_dir = tmp / f"scale-{store_name}"
        data_dir.mkdir(parents=True, exist_ok=True)
        dsn = fresh_database("omnigrid_scale") if store_name == "postgres" else ""
        env = {"OMNIGRID_POSTGRES_DSN": dsn} if dsn else {}
        result: dict[str, Any] = {}
        out["scale"][store_name] = result
        log(f"scale/{store_name}: seeding {args.carts_scale:,} carts + {args.skus_scale:,} SKUs")
        result["seed"] = seed_store(args, dsn, data_dir)
        log(f"scale/{store_name}: seeded in {result['seed']['seconds']:.0f} s")
        server = grid(env, data_dir, args.shards, logs, f"scale-{store_name}")
        try:
            result["ready_s"] = server.start(1800)
            text = server.log_path.read_text()
            result["recovery_s"] = [
                float(s) for s in re.findall(r"recovered .* in ([\d.]+) s", text)
            ]
            time.sleep(5)  # let collections settle
            assert server.proc is not None
            pids = [server.proc.pid, *descendants(server.proc.pid)]
            procs = rss_mb(pids)
            result["rss_mb"] = procs
            result["rss_total_mb"] = sum(procs.values())
            result["rss_shards_mb"] = sum(v for k, v in procs.items() if "ray::Shard" in k)
            result["entities"] = histogram_free_gauge(metrics_text(server.url))
            log(
                f"scale/{store_name}: ready in {result['ready_s']:.0f} s "
                f"(shard recovery {result['recovery_s']}), RSS total "
                f"{result['rss_total_mb']:,.0f} MB, shards {result['rss_shards_mb']:,.0f} MB"
            )
            server.stop()
            if args.journal_events:
                result["replay"] = replay_phase(args, server, data_dir)
        except Exception as e:
            result["error"] = f"{type(e).__name__}: {e}"
            log(f"scale/{store_name}: ERROR {result['error']}")
        finally:
            server.stop()


def replay_phase(args: argparse.Namespace, server: Server, data_dir: Path) -> dict[str, Any]:
    """Journal changes the store does not have (as after a store outage), then restart."""
    from omnigrid.actors.slots import SlotMap
    from omnigrid.persistence.events import Event
    from omnigrid.persistence.file_journal import FileJournal

    owner = SlotMap.even(args.shards).owner
    per_shard: dict[int, list[Event]] = {}
    now = time.time()
    for i in range(args.journal_events):
        key = f"cart:u{i}"
        args_ = {"sku": f"s{(i * 11) % args.skus_scale}", "qty": 1, "available": 10**6}
        event = Event("cart", key, 6, "app", "cart.add", now, {}, args_)
        per_shard.setdefault(owner(key), []).append(event)
    for shard, events in per_shard.items():
        journal = FileJournal(str(data_dir / f"journal-shard{shard}"), "normal")
        journal.append(journal.last_seq() + 1, events)
        journal.close()
    server.log_path.write_text("")
    ready_s = server.start(1800)
    text = server.log_path.read_text()
    found = re.findall(r"recovered .* and (\d+) journaled events .* in ([\d.]+) s", text)
    out = {
        "events": args.journal_events,
        "ready_s": ready_s,
        "shards": [{"events": int(n), "seconds": float(t)} for n, t in found],
    }
    log(f"scale: {args.journal_events:,} journaled changes replayed: {out['shards']}")
    server.stop()
    return out


def histogram_free_gauge(metrics: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in metrics.splitlines():
        if line.startswith("omnigrid_shard_entities{"):
            kind = re.search(r'kind="([^"]+)"', line)
            if kind:
                out[kind.group(1)] = out.get(kind.group(1), 0) + float(line.rsplit(" ", 1)[1])
    return out


def plot(out: dict[str, Any], stamp: str) -> list[Path]:
    """Throughput per configuration and the write-behind lag's CDF, as PNGs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths: list[Path] = []
    runs = {k: v for k, v in out["throughput"].items() if "error" not in v}
    if runs:
        scenarios = [s for s in next(iter(runs.values())) if s not in ("env", "writebehind_lag_s")]
        fig, (bars, cdf) = plt.subplots(1, 2, figsize=(13, 4.8))
        width = 0.8 / len(runs)
        for i, (name, run) in enumerate(runs.items()):
            xs = [j + i * width for j in range(len(scenarios))]
            bars.bar(xs, [run[s]["ok_rps"] for s in scenarios], width, label=name)
            lag = run.get("writebehind_lag_s", {}).get("cdf")
            if lag:
                cdf.step([b for b, _ in lag], [f for _, f in lag], where="post", label=name)
        bars.set_xticks([j + 0.4 - width / 2 for j in range(len(scenarios))], scenarios)
        bars.set_ylabel("2xx responses/s (wrk -c64)")
        bars.set_title("Throughput by durability configuration")
        bars.legend(fontsize=8)
        cdf.set_xscale("log")
        cdf.set_xlabel("write-behind lag: change made -> stored (s, bucket bounds)")
        cdf.set_ylabel("fraction of changes")
        cdf.axvline(1.0, color="grey", linestyle=":", label="goal p99 < 1 s")
        cdf.axhline(0.99, color="grey", linestyle="--", linewidth=0.8)
        cdf.set_title("Write-behind lag under the same load")
        cdf.legend(fontsize=8)
        fig.suptitle(f"omnigrid persistence, {stamp}, 2 shards on a 2-core machine")
        fig.tight_layout()
        paths.append(RESULTS / "persistence-throughput.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    scale = {k: v for k, v in out["scale"].items() if "rss_mb" in v}
    if scale:
        fig, ax = plt.subplots(figsize=(8, 4.5))
        groups = ("shard processes (the entities)", "Ray's own processes", "omnigrid serve")
        colors = dict(zip(groups, ("tab:blue", "tab:gray", "tab:orange"), strict=True))
        for i, run in enumerate(scale.values()):
            sizes = dict.fromkeys(groups, 0.0)
            for proc, mb in run["rss_mb"].items():
                name = proc.rsplit(":", 1)[0]
                if name.startswith("ray::Shard"):
                    sizes[groups[0]] += mb
                elif name == "omnigrid":
                    sizes[groups[2]] += mb
                else:
                    sizes[groups[1]] += mb
            bottom = 0.0
            for group, mb in sizes.items():
                ax.bar(i, mb, bottom=bottom, color=colors[group], label=group if i == 0 else None)
                ax.text(i, bottom + mb / 2, f"{mb:,.0f} MB", ha="center", va="center", fontsize=8)
                bottom += mb
        ax.axhline(3 * 1024, color="red", linestyle=":", label="goal: 3 GB")
        ax.set_xticks(range(len(scale)), [f"{k} store" for k in scale])
        ax.set_ylabel("resident memory (MB)")
        ax.set_title("1,000,000 five-line carts + 100,000 SKUs held in the grid")
        ax.legend(fontsize=7)
        fig.tight_layout()
        paths.append(RESULTS / "persistence-memory.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("what", choices=("throughput", "scale", "all", "plot"))
    p.add_argument("--from-json", nargs="*", default=[], help="plot: result files to draw")
    p.add_argument(
        "--configs",
        default="none,sync,async,sync-full,redis+pg",
        help=f"throughput configurations among {','.join(CONFIGS)}",
    )
    p.add_argument("--scenarios", default="cart_add,reserve_spread,reserve_hot")
    p.add_argument("-d", "--duration", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--shards", type=int, default=2)
    p.add_argument("--skus", type=int, default=10_000)
    p.add_argument("--users", type=int, default=100_000)
    p.add_argument("--stores", default="sqlite,postgres", help="scale: stores to try")
    p.add_argument("--carts-scale", type=int, default=1_000_000)
    p.add_argument("--skus-scale", type=int, default=100_000)
    p.add_argument(
        "--journal-events", type=int, default=500_000, help="scale: changes replayed on restart"
    )
    args = p.parse_args(argv)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    if args.what == "plot":  # redraw from saved results (throughput and scale may differ)
        merged: dict[str, Any] = {"throughput": {}, "scale": {}}
        for path in args.from_json:
            saved = orjson.loads(Path(path).read_bytes())
            merged["throughput"].update(saved["throughput"])
            merged["scale"].update(saved["scale"])
        for png in plot(merged, Path(args.from_json[-1]).stem.removeprefix("persistence-")):
            log(f"wrote {png}")
        return 0
    out: dict[str, Any] = {"started": stamp, "args": vars(args), "throughput": {}, "scale": {}}
    tmp = Path(tempfile.mkdtemp(prefix="omnigrid-pbench-"))
    try:
        if args.what in ("throughput", "all"):
            run_throughput(args, tmp, out)
        if args.what in ("scale", "all"):
            run_scale(args, tmp, out)
    finally:
        path = RESULTS / f"persistence-{stamp}.json"
        path.write_bytes(orjson.dumps(out, option=orjson.OPT_INDENT_2))
        log(f"wrote {path}")
        for png in plot(out, stamp):
            log(f"wrote {png}")
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
