"""Processes die; acknowledged writes do not.

A shard process killed with SIGKILL comes back by itself (Ray restarts it) and
replays its journal; a whole grid killed and started again on the same stores
does the same.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid

import httpx
import redis

from omnigrid.actors.slots import SlotMap
from tests.conftest import REDIS_URL, Grid, new_id, write_headers


def wait_until_shard_restarted(client: httpx.Client, shard: int, old_pid: int) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            pids = {s["shard"]: s.get("pid") for s in client.get("/v1/cluster").json()["shards"]}
            if pids.get(shard) not in (None, old_pid) and client.get("/readyz").status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "the killed shard never came back"
        time.sleep(0.5)


def test_killed_shard_keeps_every_acknowledged_write(grid: Grid, client: httpx.Client) -> None:
    acked: dict[str, int] = {}
    stop = threading.Event()
    victim = client.get("/v1/cluster").json()["shards"][1]

    def writer(worker: int) -> None:
        with httpx.Client(base_url=grid.url, timeout=10) as c:
            i = 0
            while not stop.is_set():
                sku = f"kill-{worker}-{i}-{uuid.uuid4().hex[:6]}"
                try:
                    r = c.put(f"/v1/skus/{sku}/stock", json={"on_hand": i}, headers=write_headers())
                except httpx.HTTPError:
                    continue
                if r.status_code == 200:
                    acked[sku] = i
                i += 1

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    os.kill(victim["pid"], signal.SIGKILL)
    time.sleep(1.0)
    wait_until_shard_restarted(client, 1, victim["pid"])
    time.sleep(0.5)
    stop.set()
    for t in threads:
        t.join()

    owner = SlotMap.even(2).owner
    assert any(owner("stock:" + sku) == 1 for sku in acked), "writes reached the killed shard"
    lost = [
        sku
        for sku, on_hand in acked.items()
        if client.get(f"/v1/skus/{sku}/stock").json().get("on_hand") != on_hand
    ]
    assert lost == [], f"{len(lost)} of {len(acked)} acknowledged writes were lost"


def fill(client: httpx.Client) -> tuple[str, str, str]:
    sku, uid = new_id("sku"), new_id("u")
    client.put(f"/v1/skus/{sku}/stock", json={"on_hand": 10}, headers=write_headers("pos"))
    rid = client.post(
        f"/v1/skus/{sku}/reservations",
        json={"qty": 4},
        headers=write_headers("app", **{"Idempotency-Key": "res-1"}),
    ).json()["reservation_id"]
    client.post(f"/v1/carts/{uid}/lines", json={"sku": sku, "qty": 2}, headers=write_headers("h5"))
    return sku, uid, rid


def check_after_restart(grid: Grid, sku: str, uid: str, rid: str) -> None:
    with httpx.Client(base_url=grid.url, timeout=10) as c:
        stock = c.get(f"/v1/skus/{sku}/stock").json()
        assert (stock["on_hand"], stock["reserved"], stock["version"]) == (10, 4, 2)
        cart = c.get(f"/v1/carts/{uid}").json()
        assert cart["version"] == 1 and cart["lines"][0]["added_via"] == "h5"
        assert c.get(f"/v1/skus/{sku}/reservations/{rid}").json()["status"] == "held"
        # the idempotency record survived: the retry returns the first answer
        again = c.post(
            f"/v1/skus/{sku}/reservations",
            json={"qty": 4},
            headers=write_headers("app", **{"Idempotency-Key": "res-1"}),
        )
        assert again.status_code == 201 and again.json()["reservation_id"] == rid
        assert c.get(f"/v1/skus/{sku}/stock").json()["reserved"] == 4


def test_whole_grid_killed_and_restarted_on_the_embedded_store() -> None:
    grid = Grid()
    try:
        with httpx.Client(base_url=grid.url, timeout=10) as c:
            sku, uid, rid = fill(c)
        grid.kill()
        grid.start()
        check_after_restart(grid, sku, uid, rid)
    finally:
        grid.stop()


def test_whole_grid_killed_and_restarted_on_redis() -> None:
    namespace = "t" + uuid.uuid4().hex[:10]
    r = redis.Redis.from_url(REDIS_URL)
    r.ping()  # fails loudly when Redis is not there
    grid = Grid(OMNIGRID_REDIS_URL=REDIS_URL, OMNIGRID_NAMESPACE=namespace)
    try:
        with httpx.Client(base_url=grid.url, timeout=10) as c:
            sku, uid, rid = fill(c)
        # every write went through the Redis journal; counted as added, not as still
        # there, since the write-behind may already have stored and trimmed them
        streams = [f"og:{namespace}:journal:{shard}" for shard in (0, 1)]
        added = sum(r.xinfo_stream(k)["entries-added"] for k in streams if r.exists(k))
        assert added == 3
        grid.kill()
        grid.start()
        check_after_restart(grid, sku, uid, rid)
    finally:
        grid.stop()
        for key in r.scan_iter(f"og:{namespace}:*"):
            r.delete(key)
