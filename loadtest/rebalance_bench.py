"""Issue 15 benchmark: the grid while slots move, a big slot's hand-over, shard counts.

    python loadtest/rebalance_bench.py [--conns 32] [--steady 10] [--entities 10000]

One grid (``omnigrid serve --shards 2``, the embedded store), one run:

1. **A big slot.** ``--entities`` SKUs whose keys all hash to one slot that a
   ``scale 3`` moves; the job's ``longest_freeze_ms`` is that slot's hand-over.
2. **During a scale.** A closed loop of ``--conns`` keep-alive connections (raw
   asyncio sockets, prebuilt requests: the client costs little of the two cores)
   sends stock reservations and cart reads over 2,000 SKUs and carts. After
   ``--steady`` seconds, ``scale 4``; once it is done and ``--steady`` more
   seconds have passed, ``scale 2``, then ``--steady`` seconds more. Throughput
   and p99 while each job moves slots are compared with the steady window
   before it, and with the slower of the two shapes around it (4 shards on two
   cores forward more: 3 keys in 4 live elsewhere, against 1 in 2).
3. **Shard counts.** The same load for ``--steady`` seconds at 2, 4 and 6 shards
   (scaled online between them).

Writes loadtest/results/rebalance-<stamp>.json and rebalance-<stamp>.png.
"""

from __future__ import annotations

import argparse
import asyncio
import binascii
import itertools
import json
import os
import string
import sys
import tempfile
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx

from loadtest.procs import omnigrid_server
from omnigrid.actors.slots import SLOT_COUNT, SlotMap, slot_of

RESULTS = Path(__file__).resolve().parent / "results"
KEYS = 2_000
WARM_UP_S = 8.0


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def request(method: str, path: str, body: bytes = b"") -> bytes:
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: grid\r\nX-Channel: app\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class Load:
    """A closed loop over keep-alive connections: (finished at, seconds, ok) per request."""

    def __init__(self, host: str, port: int, conns: int) -> None:
        self.host, self.port, self.conns = host, port, conns
        self.samples: list[tuple[float, float, bool]] = []
        self.statuses: Counter[str] = Counter()
        self.running = True
        reserve = b'{"qty": 1, "ttl_s": 5}'
        self.requests = [
            request("POST", f"/v1/skus/b{i}/reservations", reserve) if i % 2 else
            request("GET", f"/v1/carts/c{i}")
            for i in range(KEYS)
        ]  # fmt: skip

    async def _one(self, n: int) -> None:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        i = n
        while self.running:
            i = (i + 7919) % KEYS
            t0 = time.monotonic()
            ok = False
            try:
                writer.write(self.requests[i])
                status_line = await reader.readline()
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                await reader.readexactly(length)
                status = status_line.split(b" ")[1]
                ok = status[:1] == b"2"
                self.statuses[status.decode()] += 1
            except (OSError, asyncio.IncompleteReadError, IndexError) as e:
                self.statuses[type(e).__name__] += 1
                writer.close()
                await asyncio.sleep(0.05)
                reader, writer = await asyncio.open_connection(self.host, self.port)
            now = time.monotonic()
            self.samples.append((now, now - t0, ok))
        writer.close()

    async def run(self) -> None:
        await asyncio.gather(*(self._one(n) for n in range(self.conns)))


def names_in_slot(prefix: str, slot: int, count: int) -> list[str]:
    """``count`` SKU names whose key (``prefix`` + name) hashes to ``slot``.

    CRC-16 with no final xor is linear: crc(A + B) = crc(B) ^ crc(zeros, from crc(A))
    for a fixed length of B, so each stem needs a table lookup, not 16,384 tries."""
    alphabet = string.ascii_letters + string.digits
    by_crc: dict[int, list[str]] = {}
    for tail in itertools.product(alphabet, repeat=3):
        text = "".join(tail)
        by_crc.setdefault(binascii.crc_hqx(text.encode(), 0) % SLOT_COUNT, []).append(text)
    names: list[str] = []
    stem = 0
    while len(names) < count:
        head = f"big{stem}-"
        shifted = binascii.crc_hqx(b"\0\0\0", binascii.crc_hqx((prefix + head).encode(), 0))
        names += [head + tail for tail in by_crc.get((shifted ^ slot) % SLOT_COUNT, [])]
        stem += 1
    assert all(slot_of(prefix + n) == slot for n in names)
    return names[:count]


def window(samples: list[tuple[float, float, bool]], t0: float, t1: float) -> dict[str, float]:
    inside = [s for s in samples if t0 <= s[0] < t1]
    lat = sorted(s[1] for s in inside)
    span = max(t1 - t0, 1e-9)
    return {
        "seconds": round(span, 2),
        "rps": round(sum(1 for s in inside if s[2]) / span, 1),
        "errors": sum(1 for s in inside if not s[2]),
        "p50_ms": round(lat[len(lat) // 2] * 1000, 2) if lat else 0.0,
        "p99_ms": round(lat[int(len(lat) * 0.99)] * 1000, 2) if lat else 0.0,
    }


async def job(c: httpx.AsyncClient, shards: int) -> dict[str, Any]:
    """Run a scale job to its end: the job, when it started, and when slots began and
    ended moving."""
    started = time.monotonic()
    job_id = (await c.post("/v1/cluster/scale", json={"shards": shards})).json()["job_id"]
    moving_from = None
    while True:
        state: dict[str, Any] = (await c.get(f"/v1/cluster/jobs/{job_id}")).json()
        if moving_from is None and state["slots_moved"] > 0:
            moving_from = time.monotonic() - 0.05  # the first chunk began before it was seen
        if state["state"] != "running":
            state["moving"] = (moving_from or time.monotonic(), time.monotonic())
            state["asked_at"] = started
            return state
        await asyncio.sleep(0.05)


async def seed(c: httpx.AsyncClient, paths: list[str], body: dict[str, Any]) -> None:
    sem = asyncio.Semaphore(32)

    async def one(path: str) -> None:
        async with sem:
            r = await c.put(path, json=body)
            assert r.status_code == 200, r.text

    await asyncio.gather(*(one(p) for p in paths))


async def scenario(url: str, args: argparse.Namespace) -> dict[str, Any]:
    port = int(url.rsplit(":", 1)[1])
    out: dict[str, Any] = {}
    headers = {"X-Channel": "pos"}
    async with httpx.AsyncClient(base_url=url, timeout=120, headers=headers) as c:
        await seed(c, [f"/v1/skus/b{i}/stock" for i in range(KEYS)], {"on_hand": 1_000_000})
        if "1" in args.parts:
            await big_slot(c, args, out)
        if "2" in args.parts:
            await during_scale(c, port, args, out)
        if "3" in args.parts:
            await shard_counts(c, port, args, out)
    return out


async def big_slot(c: httpx.AsyncClient, args: argparse.Namespace, out: dict[str, Any]) -> None:
    log(f"1. a slot holding {args.entities} entities, moved by scale 3 (from even(2))")
    moving = sorted(SlotMap.even(2).evened(3))
    slot = moving[len(moving) // 2]
    names = names_in_slot("stock:", slot, args.entities)
    await seed(c, [f"/v1/skus/{n}/stock" for n in names], {"on_hand": 5})
    big = await job(c, 3)
    out["big_slot"] = {"slot": slot, "entities": args.entities, "job": big}
    log(f"   longest hand-over {big['longest_freeze_ms']} ms ({big['entities_moved']} moved)")
    await job(c, 2)  # back to the shape part 1 starts from


async def during_scale(
    c: httpx.AsyncClient, port: int, args: argparse.Namespace, out: dict[str, Any]
) -> None:
    log("2. steady, scale 4, steady, scale 2, steady, under load")
    load = Load("127.0.0.1", port, args.conns)
    runner = asyncio.get_running_loop().create_task(load.run())
    await asyncio.sleep(WARM_UP_S)  # the reservations held reach their steady number
    t0 = time.monotonic()
    await asyncio.sleep(args.steady)
    up = await job(c, 4)
    await asyncio.sleep(args.steady)
    down = await job(c, 2)
    await asyncio.sleep(args.steady)
    load.running = False
    await runner

    def steady_before(t: float) -> dict[str, float]:  # up to the job's request
        return window(load.samples, t - args.steady + 1, t)

    def steady_after(t: float) -> dict[str, float]:
        return window(load.samples, t + 1, t + args.steady)

    phases = {
        "steady_2_shards": steady_before(up["asked_at"]),
        "scale_up_moving": window(load.samples, *up["moving"]),
        "steady_4_shards": steady_before(down["asked_at"]),
        "scale_down_moving": window(load.samples, *down["moving"]),
        "steady_2_shards_again": steady_after(down["moving"][1]),
    }
    around = {
        "scale_up_moving": ("steady_2_shards", "steady_4_shards"),
        "scale_down_moving": ("steady_4_shards", "steady_2_shards_again"),
    }
    for name, (before, after) in around.items():
        moving = phases[name]
        moving["rps_ratio_to_before"] = round(moving["rps"] / phases[before]["rps"], 3)
        moving["p99_ratio_to_before"] = round(moving["p99_ms"] / phases[before]["p99_ms"], 3)
        slower = min(phases[before]["rps"], phases[after]["rps"])
        moving["rps_ratio_to_slower_shape"] = round(moving["rps"] / slower, 3)
    out["during_scale"] = {
        "phases": phases,
        "jobs": [up, down],
        "t0": t0,
        "statuses": dict(load.statuses),
    }
    out["timeline"] = [(round(t - t0, 3), round(d * 1000, 2), ok) for t, d, ok in load.samples]
    for name, p in phases.items():
        log(f"   {name}: {p}")


async def shard_counts(
    c: httpx.AsyncClient, port: int, args: argparse.Namespace, out: dict[str, Any]
) -> None:
    log("3. throughput at 2, 4 and 6 shards")
    counts: dict[str, Any] = {}
    for shards in (2, 4, 6):
        await job(c, shards)
        load = Load("127.0.0.1", port, args.conns)
        runner = asyncio.get_running_loop().create_task(load.run())
        await asyncio.sleep(WARM_UP_S)
        t1 = time.monotonic()
        await asyncio.sleep(args.steady)
        load.running = False
        await runner
        counts[str(shards)] = window(load.samples, t1 + 1, t1 + args.steady)
        log(f"   {shards} shards: {counts[str(shards)]}")
    out["shard_counts"] = counts


def plot(out: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timeline = out["timeline"]
    t0 = out["during_scale"]["t0"]
    end = int(timeline[-1][0]) + 1
    rps = [0] * end
    p99: list[float] = []
    for second in range(end):
        lat = sorted(d for t, d, ok in timeline if second <= t < second + 1)
        rps[second] = sum(1 for t, _, ok in timeline if second <= t < second + 1 and ok)
        p99.append(lat[int(len(lat) * 0.99)] if lat else 0.0)
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    ax1.plot(range(end), rps)
    ax1.set_ylabel("requests/s")
    ax2.plot(range(end), p99, color="tab:red")
    ax2.set_ylabel("p99 ms (per second)")
    ax2.set_xlabel("seconds")
    for jobs, label in zip(out["during_scale"]["jobs"], ("2 → 4", "4 → 2"), strict=True):
        a, b = jobs["moving"]
        for ax in (ax1, ax2):
            ax.axvspan(a - t0, b - t0, color="orange", alpha=0.3)
        ax1.text(a - t0, max(rps) * 1.02, f"slots move {label}", fontsize=8)
    fig.suptitle("omnigrid under reservations and cart reads while slots move (2 cores)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--conns", type=int, default=32)
    p.add_argument("--steady", type=float, default=10.0)
    p.add_argument("--entities", type=int, default=10_000)
    p.add_argument("--parts", default="123", help="which parts to run (e.g. 2)")
    args = p.parse_args(argv)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    RESULTS.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="rebalance-bench-") as tmp:
        server = omnigrid_server(Path(tmp), Path(tmp) / "grid.log", shards=2)
        server.start()
        try:
            out = asyncio.run(scenario(server.url, args))
        finally:
            server.stop()
    chunk = os.environ.get("OMNIGRID_MIGRATION_CHUNK_SLOTS", "default")
    out["command"] = "python loadtest/rebalance_bench.py " + " ".join(argv or sys.argv[1:])
    out["chunk_slots"] = chunk
    timeline = out.pop("timeline", None)
    (RESULTS / f"rebalance-{stamp}.json").write_text(json.dumps(out, indent=2, default=str))
    print(f"results: {RESULTS / f'rebalance-{stamp}.json'}")
    if timeline is not None:
        out["timeline"] = timeline
        plot(out, RESULTS / f"rebalance-{stamp}.png")
        phases = out["during_scale"]["phases"]
        ratios = [
            phases[k]["rps_ratio_to_before"] for k in ("scale_up_moving", "scale_down_moving")
        ]
        print(f"throughput while slots move / steady (chunks of {chunk} slots): {ratios}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
