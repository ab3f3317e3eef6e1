"""Scaling and rebalancing a real grid online (real Ray, real HTTP), under writes:
nothing acknowledged is lost, nothing is applied twice, versions stay contiguous,
reservations still expire, and a shard process killed mid-job costs nothing."""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections import Counter
from typing import Any

import httpx
import pytest

from tests.api.test_live import Stream
from tests.conftest import Grid, write_headers
from tests.inprocess import LOCAL_NODE, in_process_client

SKUS = [f"sku-{i}" for i in range(20)]
STOCK = 100_000


class Writers:
    """Threads adding cart lines and stock adjustments, each with its own Idempotency-Key,
    retried with the same key until acknowledged: what was acknowledged, counted."""

    def __init__(self, url: str, threads: int = 3, auth: httpx.Auth | None = None) -> None:
        self.url = url
        self.auth = auth
        self.stop = threading.Event()
        self.adds: Counter[tuple[str, str]] = Counter()  # (uid, sku) -> acknowledged adds
        self.adjusts: Counter[str] = Counter()  # sku -> acknowledged +1 adjustments
        self.retried: Counter[int] = Counter()  # status -> answers that were retried
        self.unexpected: list[str] = []
        self.threads = [threading.Thread(target=self._run, args=(t,)) for t in range(threads)]
        for thread in self.threads:
            thread.start()

    def _send(self, c: httpx.Client, path: str, body: dict[str, Any]) -> bool:
        headers = write_headers("pos", **{"Idempotency-Key": uuid.uuid4().hex})
        for _ in range(400):
            try:
                r = c.post(path, json=body, headers=headers)
            except httpx.TransportError:  # a connection a stopping shard closed: again
                self.retried[0] += 1
                continue
            if r.status_code == 200:
                return True
            if r.status_code not in (429, 503):
                self.unexpected.append(f"{path} {r.status_code} {r.text[:200]}")
                return False
            self.retried[r.status_code] += 1
            time.sleep(0.05)
        self.unexpected.append(f"{path}: never acknowledged")
        return False

    def _run(self, t: int) -> None:
        n = 0
        with httpx.Client(base_url=self.url, timeout=30, auth=self.auth) as c:
            while not self.stop.is_set():
                uid, sku = f"u{t}-{n % 15}", SKUS[(n * 7 + t) % len(SKUS)]
                if self._send(c, f"/v1/carts/{uid}/lines", {"sku": sku, "qty": 1}):
                    self.adds[(uid, sku)] += 1
                if self._send(c, f"/v1/skus/{sku}/stock/adjustments", {"delta": 1}):
                    self.adjusts[sku] += 1
                n += 1

    def join(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(60)


def read_job(c: httpx.Client, job_id: str) -> dict[str, Any]:
    """A job as it stands, on a fresh connection each time: the process a kept one
    went to may be the one a test just killed."""
    for _ in range(20):
        try:
            with httpx.Client(base_url=c.base_url, auth=c.auth, timeout=30) as one:
                job: dict[str, Any] = one.get(f"/v1/cluster/jobs/{job_id}").json()
                return job
        except httpx.TransportError:
            time.sleep(0.2)
    raise AssertionError("the job could not be read")


def run_job(c: httpx.Client, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """Start a job and read it until it ends: every reading."""
    started = c.post(path, json=body, headers=write_headers())
    assert started.status_code == 202, started.text
    job_id = started.json()["job_id"]
    readings = []
    deadline = time.monotonic() + 180
    while True:
        job = read_job(c, job_id)
        readings.append(job)
        if job["state"] != "running":
            return readings
        assert time.monotonic() < deadline, readings[-1]
        time.sleep(0.2)


def check_everything_acknowledged_is_there(c: httpx.Client, writers: Writers) -> None:
    assert not writers.unexpected, writers.unexpected[:5]
    carts: dict[str, dict[str, int]] = {}
    for (uid, sku), count in writers.adds.items():
        if uid not in carts:
            view = c.get(f"/v1/carts/{uid}")
            for _ in range(50):  # a 503 right after a restart says when to come back
                if view.status_code != 503:
                    break
                time.sleep(float(view.headers.get("retry-after", "0.2")) / 5)
                view = c.get(f"/v1/carts/{uid}")
            assert view.status_code == 200, (uid, view.status_code, view.text[:300])
            carts[uid] = {line["sku"]: line["qty"] for line in view.json()["lines"]}
        assert carts[uid].get(sku) == count, (uid, sku)
    for sku in SKUS:
        stock = c.get(f"/v1/skus/{sku}/stock").json()
        assert stock["on_hand"] == STOCK + writers.adjusts[sku], sku
    # every change once, versions contiguous: the sync log of a SKU's stock
    changes = c.get("/v1/ops/sync-log", params={"sku": SKUS[0], "limit": 1000}).json()["changes"]
    versions = sorted(ch["version"] for ch in changes if ch["key"] == f"stock:{SKUS[0]}")
    assert versions == list(range(1, len(versions) + 1)) and len(versions) > 1


def test_scale_2_to_4_to_2_under_writes_loses_nothing_and_applies_nothing_twice() -> None:
    grid = Grid()
    try:
        with httpx.Client(base_url=grid.url, timeout=30) as c:
            for sku in [*SKUS, "held"]:
                on_hand = 5 if sku == "held" else STOCK
                r = c.put(
                    f"/v1/skus/{sku}/stock", json={"on_hand": on_hand}, headers=write_headers()
                )
                assert r.status_code == 200
            held = c.post(
                "/v1/skus/held/reservations", json={"qty": 5, "ttl_s": 6}, headers=write_headers()
            )
            assert held.status_code == 201
            # a stream opened now is on shard 0 or 1, which stay; its SKU's owner changes
            stream = Stream(f"{grid.url}/v1/streams/skus/{SKUS[0]}")
            writers = Writers(grid.url)
            time.sleep(1)
            up = run_job(c, "/v1/cluster/scale", {"shards": 4})
            cluster = c.get("/v1/cluster").json()
            down = run_job(c, "/v1/cluster/scale", {"shards": 2})
            time.sleep(0.5)
            writers.join()

            assert up[-1]["state"] == "done" and down[-1]["state"] == "done", (up[-1], down[-1])
            assert up[-1]["slots_moved"] == up[-1]["slots_total"] == 8192
            assert any(0 < r["slots_moved"] < 8192 for r in up + down), "no progress seen"
            assert [s["shard"] for s in cluster["shards"]] == [0, 1, 2, 3]
            owned = [sum(b - a + 1 for a, b in s["slot_ranges"]) for s in cluster["shards"]]
            assert owned == [4096] * 4
            after = c.get("/v1/cluster").json()
            assert [s["shard"] for s in after["shards"]] == [0, 1]
            assert after["slot_map_version"] > cluster["slot_map_version"]
            assert c.get("/readyz").status_code == 200
            assert sum(writers.adds.values()) > 50, writers.adds
            check_everything_acknowledged_is_there(c, writers)
            final = c.get(f"/v1/skus/{SKUS[0]}/stock").json()["version"]
            seen = [stream.next()["data"]["version"]]
            while seen[-1] < final:
                seen.append(stream.next()["data"]["version"])
            assert seen == list(range(seen[0], final + 1)), "a gap or a repeat in the stream"
            stream.close()

            deadline = time.monotonic() + 30  # the reservation expired wherever it lives
            while c.get("/v1/skus/held/stock").json()["available"] != 5:
                assert time.monotonic() < deadline, "the moved reservation never expired"
                time.sleep(0.3)
            audit = c.post("/v1/cluster/audit", headers=write_headers()).json()
            assert audit["mismatched"] == 0 and audit["complete"], audit
        grid.stop()
        grid.start()  # the stored map is the grid's shape; the store has everything
        with httpx.Client(base_url=grid.url, timeout=30) as c:
            assert c.get("/v1/cluster").json()["slot_map_version"] == after["slot_map_version"]
            check_everything_acknowledged_is_there(c, writers)
    finally:
        grid.stop()


def test_a_shard_process_killed_mid_job_costs_nothing_and_the_grid_converges() -> None:
    """SIGKILL a source shard's process while slots move off it: Ray restarts it, it
    reads the stored map, the job goes on (or a rebalance finishes it), nothing is lost."""
    grid = Grid(shards=2)
    try:
        with httpx.Client(base_url=grid.url, timeout=30) as c:
            for sku in SKUS:
                r = c.put(f"/v1/skus/{sku}/stock", json={"on_hand": STOCK}, headers=write_headers())
                assert r.status_code == 200
            writers = Writers(grid.url, threads=2)
            pid = next(s["pid"] for s in c.get("/v1/cluster").json()["shards"] if s["shard"] == 1)
            started = c.post("/v1/cluster/scale", json={"shards": 3}, headers=write_headers())
            job_id = started.json()["job_id"]
            busy = c.post("/v1/cluster/rebalance", headers=write_headers())
            assert busy.status_code == 409 and busy.json()["code"] == "cluster_busy"
            deadline = time.monotonic() + 60
            while (job := read_job(c, job_id))["slots_moved"] == 0:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            os.kill(pid, signal.SIGKILL)
            assert job["state"] == "running" and job["slots_moved"] < job["slots_total"], job
            print("killed shard 1 at", job)
            deadline = time.monotonic() + 180
            while (job := read_job(c, job_id))["state"] == "running":
                assert time.monotonic() < deadline, job
                time.sleep(0.3)
            if job["state"] != "done":  # the job gave up: a rebalance finishes the move
                assert run_job(c, "/v1/cluster/rebalance", {})[-1]["state"] == "done"
            writers.join()
            shards = c.get("/v1/cluster").json()["shards"]
            assert [s["shard"] for s in shards] == [0, 1, 2]
            assert next(s["pid"] for s in shards if s["shard"] == 1) != pid  # restarted
            owned = sorted(sum(b - a + 1 for a, b in s["slot_ranges"]) for s in shards)
            assert owned == [5461, 5461, 5462]
            check_everything_acknowledged_is_there(c, writers)
    finally:
        grid.stop()


@pytest.mark.parametrize(
    "body",
    [b"", b"{}", b'{"shards": 0}', b'{"shards": 65}', b'{"shards": "4"}', b'{"shards": 2.5}',
     b'{"shards": 4, "force": true}', b"[4]", b'{"shards": null}', b"not json"],
)  # fmt: skip
def test_a_bad_scale_request_is_refused_and_starts_nothing(body: bytes) -> None:
    with in_process_client() as c:
        r = c.post("/v1/cluster/scale", content=body, headers=write_headers())
        assert r.status_code in (400, 422), r.text
        assert r.headers["content-type"] == "application/problem+json"
        extra = c.post("/v1/cluster/rebalance", json={"shards": 3}, headers=write_headers())
        assert extra.status_code == 422
        assert c.get("/v1/cluster/jobs/job_none").status_code == 404
        assert c.get("/v1/cluster/jobs/a%20b").status_code in (400, 422)


@pytest.mark.parametrize(
    "body",
    [b"", b"{}", b'{"node": ""}', b'{"node": "abc"}', b'{"node": "NOT-HEX-AT-ALL"}',
     b'{"node": 12345}', b'{"node": "' + b"a" * 65 + b'"}', b'{"node": "abcd", "now": true}',
     b'["abcd"]', b"not json"],
)  # fmt: skip
def test_a_bad_drain_request_is_refused_and_drains_nothing(body: bytes) -> None:
    with in_process_client() as c:
        r = c.post("/v1/cluster/drain", content=body, headers=write_headers())
        assert r.status_code in (400, 422), r.text
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["code"] == "invalid_request"


def test_a_drain_of_no_live_node_or_of_the_coordinators_node_is_refused() -> None:
    with in_process_client() as c:
        unknown = c.post("/v1/cluster/drain", json={"node": "abcdef12"}, headers=write_headers())
        assert unknown.status_code == 404, unknown.text
        assert "abcdef12" in unknown.json()["detail"]
        # the one node runs shard 0, which coordinates every job: it cannot leave alone
        mine = c.post("/v1/cluster/drain", json={"node": LOCAL_NODE[:12]}, headers=write_headers())
        assert mine.status_code == 409 and mine.json()["code"] == "cluster_busy", mine.text
        # nothing was marked drained: a rebalance still finds a node to place shards on
        # (a drained one would leave none: 409), and nothing to move
        job = c.post("/v1/cluster/rebalance", headers=write_headers())
        assert job.status_code == 202, job.text
        state = c.get(f"/v1/cluster/jobs/{job.json()['job_id']}").json()
        assert state["slots_total"] == 0 and state["relocated"] == {} and state["node"] is None
