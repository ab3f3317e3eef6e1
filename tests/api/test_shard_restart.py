"""A shard process killed with SIGKILL comes back by itself (Ray restarts it).

Until durable persistence lands (the next issue), the restarted shard starts
empty: what it held is lost. This test shows the grid answering again, and
states that loss explicitly so the next issue turns it around.
"""

from __future__ import annotations

import os
import signal
import time

import httpx

from omnigrid.actors.slots import SlotMap
from tests.api.test_contract import stock
from tests.conftest import Grid, new_id, write_headers


def test_killed_shard_answers_again(grid: Grid, client: httpx.Client) -> None:
    skus = [stock(client, 5) for _ in range(16)]
    owner = SlotMap.even(2).owner
    kept = [s for s in skus if owner("stock:" + s) == 0]
    lost = [s for s in skus if owner("stock:" + s) == 1]
    assert kept and lost
    victim = client.get("/v1/cluster").json()["shards"][1]
    os.kill(victim["pid"], signal.SIGKILL)

    deadline = time.monotonic() + 60
    while True:
        try:
            cluster = client.get("/v1/cluster").json()
            pids = {s["shard"]: s.get("pid") for s in cluster["shards"]}
            if (
                pids.get(1) not in (None, victim["pid"])
                and client.get("/readyz").status_code == 200
            ):
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "the killed shard never came back"
        time.sleep(0.5)

    # Every key answers again, on both shards, and writes work. Requests land
    # on both processes (SO_REUSEPORT), so each key is read several times.
    for _ in range(5):
        for sku in kept:
            assert client.get(f"/v1/skus/{sku}/stock").status_code == 200, "survivor kept it"
        # State loss is expected until persistence lands: the restarted shard is empty.
        for sku in lost:
            assert client.get(f"/v1/skus/{sku}/stock").status_code == 404
    sku = new_id("after")
    r = client.put(f"/v1/skus/{sku}/stock", json={"on_hand": 1}, headers=write_headers("pos"))
    assert r.status_code == 200
    uid = new_id("u")
    r = client.post(f"/v1/carts/{uid}/lines", json={"sku": sku, "qty": 1}, headers=write_headers())
    assert r.status_code == 200
