"""Issue 15 benchmark: what a second Ray node adds, nodes on one machine.

    python loadtest/nodes_bench.py [--conns 32] [--seconds 15] [--shards 4]

Runs the same grid twice, each time on a Ray cluster of network namespaces
(loadtest/netns.py; needs root): ``--shards`` shards on one node, then on two
(Ray spreads them). The closed-loop load of loadtest/rebalance_bench.py (stock
reservations and cart reads) goes to every node's HTTP port. Both nodes share
this machine's two cores, so a second node adds no CPU here: the run measures
what spreading costs (half the forwarded commands cross nodes over TCP instead
of a Unix socket), not what a second host would add. Writes
loadtest/results/nodes-<stamp>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
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

from loadtest.netns import Netns, RayNodes
from loadtest.procs import wait_ready
from loadtest.rebalance_bench import KEYS, WARM_UP_S, Load, log, window

RESULTS = Path(__file__).resolve().parent / "results"
PORT = 8000


async def measure(urls: list[str], args: argparse.Namespace) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=60, headers={"X-Channel": "pos"}) as c:
        for i in range(KEYS):
            r = await c.put(f"{urls[i % len(urls)]}/v1/skus/b{i}/stock", json={"on_hand": 10**7})
            assert r.status_code == 200, r.text
    loads = [Load(url.split("//")[1].split(":")[0], PORT, args.conns // len(urls)) for url in urls]
    runners = [asyncio.get_running_loop().create_task(load.run()) for load in loads]
    await asyncio.sleep(WARM_UP_S)
    t0 = time.monotonic()
    await asyncio.sleep(args.seconds)
    for load in loads:
        load.running = False
    await asyncio.gather(*runners)
    samples = [s for load in loads for s in load.samples]
    return window(samples, t0, t0 + args.seconds)


def one_cluster(nodes: int, args: argparse.Namespace) -> dict[str, Any]:
    net = Netns(nodes)
    ray = RayNodes(net)
    proc = None
    try:
        net.up()
        ray.start()
        ray.wait_alive(nodes)  # else Ray may place every shard on the head
        argv = [sys.executable, "-m", "omnigrid.api.runtime.cli", "serve", "--host", "0.0.0.0"]
        argv += ["--port", str(PORT), "--shards", str(args.shards), "--insecure"]
        argv += ["--data-dir", tempfile.mkdtemp(prefix="omnigrid-nodes-bench-")]
        env = {**ray.env, "RAY_ADDRESS": ray.address}
        proc = subprocess.Popen(
            net.command(0, argv), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        urls = [f"http://{net.ip(i)}:{PORT}" for i in range(nodes)]
        wait_ready(urls, 180, lambda: proc is not None and proc.poll() is None)
        shards = httpx.get(urls[0] + "/v1/cluster", timeout=10).json()["shards"]
        result = asyncio.run(measure(urls, args))
        result["nodes"] = nodes
        result["shards_per_node"] = [
            sum(1 for s in shards if s["node_id"] == n) for n in {s["node_id"] for s in shards}
        ]
        return result
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        net.down()
        ray.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--conns", type=int, default=32)
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--shards", type=int, default=4)
    args = p.parse_args(argv)
    out: dict[str, Any] = {"command": "python loadtest/nodes_bench.py " + " ".join(sys.argv[1:])}
    for nodes in (1, 2):
        log(f"{args.shards} shards on {nodes} node(s)")
        out[f"{nodes}_nodes"] = one_cluster(nodes, args)
        log(f"   {out[f'{nodes}_nodes']}")
    out["rps_ratio_2_to_1"] = round(out["2_nodes"]["rps"] / out["1_nodes"]["rps"], 3)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"nodes-{stamp}.json"
    path.write_text(json.dumps(out, indent=2))
    print(f"two nodes / one node, same machine: {out['rps_ratio_2_to_1']}; results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
