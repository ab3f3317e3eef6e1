"""Issue 16, item 2: the grid's CPU per request with and without the nginx front.

    python loadtest/front_bench.py [--rate 1000] [--idle 15000] [--seconds 20]

Starts one grid per shape in turn (default: 6 shard processes serving the port
themselves, the shape 100,000 connections force without a front; 2 shards alone;
2 shards behind ``omnigrid serve --front nginx``), each on a fresh data directory;
``baseline-nginx`` is the Redis baseline (two processes of ``loadtest/baseline.py``
and a Redis of its own) behind the same nginx (``loadtest/baseline_front.py``);
``floor-nginx`` is two processes of an app that does nothing (``loadtest/floor.py``)
behind it: the stack's own cost, under any service's.
For each: seeds carts, opens ``--idle`` keep-alive connections that each sent one
request and then hold still (the shoppers thinking), measures the whole
``omnigrid serve`` tree's CPU for ``--seconds`` idle, then offers cart reads and
then cart adds at a fixed ``--rate`` (h2load / a paced client) and measures again.
CPU per request is counted from outside: every process under ``omnigrid serve``
(shards, nginx, Ray's own), all of it and net of the idle reading. Writes
loadtest/results/front-<stamp>.json and a PNG.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx

from loadtest import tools
from loadtest.procs import baseline_front_server, cpu_seconds, descendants, omnigrid_server

RESULTS = Path(__file__).resolve().parent / "results"
CARTS = 2_000
SKUS = 500
WARM_UP_S = 3.0


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def tree_cpu(root: int) -> float:
    return cpu_seconds([root, *descendants(root)])


async def seed(url: str) -> None:
    async with httpx.AsyncClient(timeout=60, headers={"X-Channel": "pos"}) as c:
        for i in range(SKUS):
            r = await c.put(f"{url}/v1/skus/{tools.sku_name(i)}/stock", json={"on_hand": 10**8})
            assert r.status_code == 200, r.text
        for i in range(CARTS):
            body = {"sku": tools.sku_name(i % SKUS), "qty": 1}
            r = await c.post(f"{url}/v1/carts/{tools.read_cart_uid(i)}/lines", json=body)
            assert r.status_code in (200, 201), r.text


async def hold_idle(host: str, port: int, count: int, held: list[asyncio.StreamWriter]) -> None:
    """``count`` connections that each read a cart once, then stay open and silent."""
    request = f"GET /v1/carts/idle HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    sem = asyncio.Semaphore(200)

    async def one() -> None:
        async with sem:
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(
                next(
                    ln.split(b":")[1]
                    for ln in head.split(b"\r\n")
                    if ln.lower().startswith(b"content-length")
                )
            )
            await reader.readexactly(length)
            held.append(writer)

    await asyncio.gather(*(one() for _ in range(count)))


def measure_shape(
    name: str, shards: int, env: dict[str, str], args: argparse.Namespace
) -> dict[str, Any]:
    data = Path(tempfile.mkdtemp(prefix=f"front-{name}-"))
    env = {"OMNIGRID_KEEPALIVE_S": "600", **env}
    server = (
        baseline_front_server(data, data / "serve.log", floor=name == FLOOR, env=env)
        if name in (BASELINE, FLOOR)
        else omnigrid_server(data, data / "serve.log", shards=shards, env=env)
    )
    server.start()
    root = server.proc.pid if server.proc else 0
    host, port = "127.0.0.1", int(server.url.rsplit(":", 1)[1])
    out: dict[str, Any] = {"shape": name, "shards": shards, "env": env}
    held: list[asyncio.StreamWriter] = []
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(seed(server.url))
        log(f"{name}: holding {args.idle} idle connections")
        loop.run_until_complete(hold_idle(host, port, args.idle, held))
        time.sleep(WARM_UP_S)
        c0 = tree_cpu(root)
        time.sleep(args.seconds)
        idle_cores = (tree_cpu(root) - c0) / args.seconds
        out["idle_cores"] = round(idle_cores, 3)
        log(f"{name}: idle {idle_cores:.3f} cores")

        uris = data / "uris.txt"
        uris.write_text(
            "".join(f"{server.url}/v1/carts/{tools.read_cart_uid(i)}\n" for i in range(CARTS))
        )
        out["cart_read"] = at_fixed_rate(root, uris, args, data / "h2load.log", idle_cores)
        log(f"{name}: cart reads {out['cart_read']}")

        uris.write_text(
            "".join(f"{server.url}/v1/carts/{tools.cart_add_uid(i)}/lines\n" for i in range(CARTS))
        )
        body = data / "add.json"
        body.write_text(json.dumps({"sku": tools.sku_name(1), "qty": 1}))
        out["cart_add"] = at_fixed_rate(
            root,
            uris,
            args,
            data / "h2load-add.log",
            idle_cores,
            body=body,
            headers=("Content-Type: application/json", "X-Channel: app"),
        )
        log(f"{name}: cart adds {out['cart_add']}")
    finally:
        for writer in held:
            writer.close()
        loop.close()
        server.stop()
    return out


def at_fixed_rate(
    root: int,
    uris: Path,
    args: argparse.Namespace,
    log_path: Path,
    idle_cores: float,
    body: Path | None = None,
    headers: tuple[str, ...] = (),
) -> dict[str, Any]:
    """h2load at ``args.rate`` over ``uris``; the grid tree's CPU per request."""
    c0 = tree_cpu(root)
    t0 = time.monotonic()
    res = tools.run_h2load(
        uris,
        rate=args.rate,
        connections=args.conns,
        duration_s=args.seconds,
        warmup_s=0.0,
        log_path=log_path,
        body=body,
        headers=headers,
    )
    spent, wall = tree_cpu(root) - c0, time.monotonic() - t0
    out = _per_request(res.requests, res.non_2xx, spent, wall, idle_cores)
    out["p50_ms"] = res.latency_ms.get("p50")
    out["p99_ms"] = res.latency_ms.get("p99")
    return out


def _per_request(
    requests: int, bad: int, spent: float, wall: float, idle_cores: float
) -> dict[str, Any]:
    return {
        "requests": requests,
        "non_2xx": bad,
        "cpu_us_per_request": round(spent / max(1, requests) * 1e6, 1),
        "net_of_idle_us": round((spent - idle_cores * wall) / max(1, requests) * 1e6, 1),
    }


BASELINE = "baseline-nginx"
FLOOR = "floor-nginx"
SHAPES = {
    "6-shards": (6, {}),
    "2-shards": (2, {}),
    "nginx-2-shards": (2, {"OMNIGRID_FRONT": "nginx", "OMNIGRID_FRONT_WORKERS": "2"}),
    BASELINE: (2, {}),  # two baseline processes in the shards' place
    FLOOR: (2, {}),  # two processes of an app that does nothing (loadtest/floor.py)
}
DEFAULT_SHAPES = ("6-shards", "2-shards", "nginx-2-shards")


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    names = [r["shape"] for r in results]
    width = 0.38
    for k, (op, color) in enumerate((("cart_read", "tab:blue"), ("cart_add", "tab:orange"))):
        xs = [i + (k - 0.5) * width for i in range(len(names))]
        ys = [r[op]["cpu_us_per_request"] for r in results]
        ax.bar(xs, ys, width, label=op, color=color)
        for x, y in zip(xs, ys, strict=True):
            ax.text(x, y, f"{y:.0f}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("grid CPU µs per request (whole tree)")
    ax.set_title("CPU per request at a fixed rate, idle connections held")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rate", type=float, default=1000.0, help="requests per second offered")
    p.add_argument("--conns", type=int, default=50, help="connections carrying the load")
    p.add_argument("--idle", type=int, default=15_000, help="idle keep-alive connections held")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--shapes", default=",".join(DEFAULT_SHAPES), help=",".join(SHAPES))
    args = p.parse_args(argv)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    missing = tools.missing_tools(("h2load",))
    if missing:
        print(f"missing: {missing} (apt-get install nghttp2-client)", file=sys.stderr)
        return 2
    results = []
    for name in args.shapes.split(","):
        shards, env = SHAPES[name]
        results.append(measure_shape(name, shards, env, args))
    out = {
        "command": "python loadtest/front_bench.py " + " ".join(argv or sys.argv[1:]),
        "rate": args.rate,
        "idle": args.idle,
        "seconds": args.seconds,
        "results": results,
    }
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"front-{stamp}.json"
    path.write_text(json.dumps(out, indent=2))
    plot(results, path.with_suffix(".png"))
    print(f"{'shape':16} {'read µs':>9} {'net':>7} {'add µs':>9} {'net':>7} {'idle cores':>10}")
    for r in results:
        print(
            f"{r['shape']:16} {r['cart_read']['cpu_us_per_request']:9.0f} "
            f"{r['cart_read']['net_of_idle_us']:7.0f} {r['cart_add']['cpu_us_per_request']:9.0f} "
            f"{r['cart_add']['net_of_idle_us']:7.0f} {r['idle_cores']:10.3f}"
        )
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
