"""Signed against unsigned requests, one grid, one run: what verifying costs.

    python loadtest/auth_bench.py [-d 10] [--shards 2]

Starts a grid with no key and measures cart reads and stock reservations with wrk
(unsigned); then creates an admin key (closing the grid) and measures the same
scenarios signed. wrk cannot compute an HMAC, so every signed request is made
beforehand (a fresh nonce each, a ts now) and wrk's Lua replays each once, in
order. Prints both rates and their ratio, and writes
loadtest/results/auth-<stamp>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
import psutil

from loadtest.procs import Server, cpu_seconds, free_port
from loadtest.tools import run_wrk
from omnigrid.api.client import GridAuth

REPO = Path(__file__).resolve().parent.parent
CARTS, SKUS = 500, 500
# method, path template, body; {p}: the phase's own entities (unsigned u-, signed s-), so
# neither phase finds the other's reservations in its stock
SCENARIOS: dict[str, tuple[str, str, bytes]] = {
    "cart_read": ("GET", "/v1/carts/{p}c-{i}", b""),
    "reserve": ("POST", "/v1/skus/{p}s-{i}/reservations", b'{"qty": 1, "ttl_s": 60}'),
}

LUA = """
-- each wrk thread takes every other row: a signed row (its nonce) is sent once only
local threads = 0
function setup(thread)
  thread:set("tid", threads)
  threads = threads + 1
end
local lines = {}
for line in io.lines("%(file)s") do lines[#lines + 1] = line end
local n = 0
request = function()
  local row = lines[((n * 2 + tid) %% #lines) + 1]
  n = n + 1
  local path, auth = row:match("([^\\t]*)\\t(.*)")
  local headers = {["X-Channel"] = "app", ["Content-Type"] = "application/json"}
  if auth ~= "" then headers["Authorization"] = auth end
  return wrk.format("%(method)s", path, headers, %(body)s)
end
"""


def script(tmp: Path, name: str, tag: str, rows: list[tuple[str, str]]) -> Path:
    method, _, body = SCENARIOS[name]
    data = tmp / f"{name}-{tag}.tsv"
    data.write_text("".join(f"{path}\t{auth}\n" for path, auth in rows))
    lua = tmp / f"{name}-{tag}.lua"
    body_lua = "nil" if not body else json.dumps(body.decode())
    lua.write_text(LUA % {"file": data, "method": method, "body": body_lua})
    return lua


def grid_cpu_s() -> float:
    """CPU seconds the grid's shard processes have used so far: what one request costs
    the grid itself, apart from the load generator on the same cores."""
    return cpu_seconds(
        proc.pid
        for proc in psutil.process_iter(["cmdline"])
        if any("ShardProcess" in part for part in proc.info["cmdline"] or ())
    )


def measure(url: str, tmp: Path, auth: GridAuth | None, seconds: float) -> dict[str, Any]:
    out = {}
    for name, (method, template, body) in SCENARIOS.items():
        count = 12_000 * max(1, round(seconds))  # more than wrk can send: each used once
        rows = []
        for n in range(count):
            prefix = "s-" if auth else "u-"
            path = template.format(p=prefix, i=n % (CARTS if "carts" in template else SKUS))
            rows.append((path, auth.header(method, path, body) if auth else ""))
        lua = script(tmp, name, "signed" if auth else "unsigned", rows)
        cpu_before = grid_cpu_s()
        result = run_wrk(url, lua, duration_s=seconds)
        cpu_us = (grid_cpu_s() - cpu_before) / max(1, result.requests) * 1e6
        out[name] = {
            "grid_cpu_us_per_request": cpu_us,
            "ok_rps": result.ok_rps,
            "rps": result.rps,
            "non_2xx": result.non_2xx,
            "latency_ms": result.latency_ms,
        }
        print(
            f"  {name:10s} {'signed' if auth else 'unsigned':8s} {result.ok_rps:8.0f} ok/s "
            f"(non-2xx {result.non_2xx}) p99 {result.latency_ms.get('p99')} "
            f"grid CPU {cpu_us:.0f} us/request",
            flush=True,
        )
    return out


def grid_server(tmp: Path, shards: int, **env: str) -> Server:
    """A grid of its own on a free port, its data under ``tmp`` (not started)."""
    port = free_port()
    cmd = ["omnigrid", "serve", "--host", "127.0.0.1", "--port", str(port)]
    return Server(
        "omnigrid",
        [*cmd, "--shards", str(shards)],
        url=f"http://127.0.0.1:{port}",
        ready_path="/readyz",
        cwd=tmp,
        env={
            **os.environ,
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
            "OMNIGRID_DATA_DIR": str(tmp / "data"),
            **env,
        },
        log_path=tmp / "omnigrid.log",
    )


def seed(c: httpx.Client, phase: str) -> None:
    """A phase's SKUs, stocked, and its carts, a line each."""
    for i in range(SKUS):
        c.put(
            f"/v1/skus/{phase}s-{i}/stock",
            json={"on_hand": 10_000_000},
            headers={"X-Channel": "pos"},
        )
    for i in range(CARTS):
        c.post(
            f"/v1/carts/{phase}c-{i}/lines",
            json={"sku": f"{phase}s-{i}", "qty": 1},
            headers={"X-Channel": "app"},
        )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("-d", "--duration", type=float, default=10)
    p.add_argument("--shards", type=int, default=2)
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="auth-bench-"))
    server = grid_server(tmp, args.shards)
    server.start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            for phase in ("u-", "s-"):
                seed(c, phase)
            unsigned = measure(server.url, tmp, None, args.duration)
            made = c.post(
                "/v1/admin/keys",
                json={"name": "bench", "scopes": ["admin"]},
                headers={"X-Channel": "app"},
            ).json()
            auth = GridAuth(made["key_id"], made["secret"])
            signed = measure(server.url, tmp, auth, args.duration)
    finally:
        server.stop()
    ratios = {n: signed[n]["ok_rps"] / unsigned[n]["ok_rps"] for n in SCENARIOS}
    cpu = "grid_cpu_us_per_request"
    capacity = {n: unsigned[n][cpu] / signed[n][cpu] for n in SCENARIOS}
    for name, ratio in ratios.items():
        print(
            f"{name}: signed/unsigned = {ratio:.2f}x (goal >= 0.85); grid capacity "
            f"(unsigned/signed CPU per request) {capacity[name]:.2f}x"
        )
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out = REPO / "loadtest" / "results" / f"auth-{stamp}.json"
    out.write_text(
        json.dumps(
            {
                "params": vars(args),
                "unsigned": unsigned,
                "signed": signed,
                "ratio": ratios,
                "capacity_ratio": capacity,
            },
            indent=2,
        )
    )
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
