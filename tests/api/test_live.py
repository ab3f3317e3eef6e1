"""Live sync over real HTTP: event streams across channels and processes, resume,
restarts, and offline replay through POST /v1/sync."""

from __future__ import annotations

import os
import queue
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from omnigrid.actors.slots import SlotMap
from tests.conftest import Grid, new_id, write_headers

WAIT_S = 10.0


class Stream:
    """An SSE client on a thread: events (and heartbeats) land in a queue."""

    def __init__(
        self, url: str, last_event_id: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        self.url = url
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.heartbeats = 0
        self.status: int | None = None
        self.closed = threading.Event()
        self._stop = threading.Event()
        headers = dict(headers or {})
        if last_event_id:
            headers["Last-Event-ID"] = last_event_id
        self._thread = threading.Thread(target=self._run, args=(headers,), daemon=True)
        self._thread.start()
        deadline = time.monotonic() + WAIT_S
        while self.status is None and not self.closed.is_set():
            assert time.monotonic() < deadline, "the stream did not open"
            time.sleep(0.01)

    def _run(self, headers: dict[str, str]) -> None:
        try:
            with (
                httpx.Client(timeout=httpx.Timeout(5.0, read=None)) as client,
                client.stream("GET", self.url, headers=headers) as response,
            ):
                self.status = response.status_code
                event: dict[str, Any] = {}
                for line in response.iter_lines():
                    if self._stop.is_set():
                        return
                    if line.startswith(":"):
                        self.heartbeats += 1
                    elif line == "":
                        if "data" in event:
                            self.events.put(event)
                        event = {}
                    else:
                        name, _, value = line.partition(": ")
                        event[name] = orjson.loads(value) if name == "data" else value
        except httpx.HTTPError:
            pass
        finally:
            self.closed.set()

    def next(self, timeout: float = WAIT_S) -> dict[str, Any]:
        return self.events.get(timeout=timeout)

    def versions(self, count: int) -> list[int]:
        return [self.next()["data"]["version"] for _ in range(count)]

    def nothing_more(self, wait: float = 0.5) -> bool:
        try:
            self.events.get(timeout=wait)
        except queue.Empty:
            return True
        return False

    def close(self) -> None:
        self._stop.set()


@pytest.fixture()
def streams() -> Iterator[list[Stream]]:
    opened: list[Stream] = []
    yield opened
    for stream in opened:
        stream.close()


def add(client: httpx.Client, uid: str, sku: str, channel: str, qty: int = 1) -> httpx.Response:
    return client.post(
        f"/v1/carts/{uid}/lines", json={"sku": sku, "qty": qty}, headers=write_headers(channel)
    )


def stocked(client: httpx.Client, on_hand: int = 100) -> str:
    sku = new_id("sku")
    r = client.put(f"/v1/skus/{sku}/stock", json={"on_hand": on_hand}, headers=write_headers("pos"))
    assert r.status_code == 200
    return sku


def test_a_change_on_one_channel_reaches_another_channels_stream(
    grid: Grid, client: httpx.Client, streams: list[Stream]
) -> None:
    sku = stocked(client)
    uids = [new_id("u") for _ in range(6)]  # keys on both shards, streams on any process
    for uid in uids:
        streams.append(Stream(f"{grid.url}/v1/streams/users/{uid}"))
    sku_stream = Stream(f"{grid.url}/v1/streams/skus/{sku}")
    streams.append(sku_stream)
    assert {s.status for s in streams} == {200}
    for uid in uids:
        assert add(client, uid, sku, "miniprogram").status_code == 200
    for uid, stream in zip(uids, streams, strict=False):
        event = stream.next()
        assert event["event"] == "cart" and event["id"] == "cart:1"
        data = event["data"]
        assert (data["uid"], data["channel"], data["op"], data["version"]) == (
            uid,
            "miniprogram",
            "cart.add",
            1,
        )
        assert data["lines"][0]["sku"] == sku
    r = client.post(f"/v1/skus/{sku}/reservations", json={"qty": 3}, headers=write_headers("pos"))
    assert r.status_code == 201
    stock = sku_stream.next()
    assert stock["event"] == "stock" and stock["id"] == "stock:2"
    assert (stock["data"]["reserved"], stock["data"]["channel"]) == (3, "pos")


def test_resume_gets_exactly_the_missed_events(
    grid: Grid, client: httpx.Client, streams: list[Stream]
) -> None:
    sku, uid = stocked(client), new_id("u")
    first = Stream(f"{grid.url}/v1/streams/users/{uid}")
    streams.append(first)
    add(client, uid, sku, "app")
    assert first.next()["id"] == "cart:1"
    first.close()  # the device drops off
    for channel in ("h5", "pos", "kiosk"):
        add(client, uid, sku, channel)
    back = Stream(f"{grid.url}/v1/streams/users/{uid}", last_event_id="cart:1")
    streams.append(back)
    missed = [back.next() for _ in range(3)]
    assert [e["id"] for e in missed] == ["cart:2", "cart:3", "cart:4"]
    assert [e["data"]["channel"] for e in missed] == ["h5", "pos", "kiosk"]
    add(client, uid, sku, "web")
    assert back.next()["id"] == "cart:5"
    assert back.nothing_more(), "a duplicate or an extra event"
    # from the beginning, and with a bare version as the cursor
    again = Stream(f"{grid.url}/v1/streams/users/{uid}?last_event_id=0")
    streams.append(again)
    assert again.versions(5) == [1, 2, 3, 4, 5]


@pytest.mark.parametrize(
    ("path", "headers", "status"),
    [
        ("/v1/streams/users/bad%20uid", {}, 400),
        ("/v1/streams/users/u1", {"Last-Event-ID": "stock:3"}, 400),
        ("/v1/streams/users/u1", {"Last-Event-ID": "cart:-1"}, 400),
        ("/v1/streams/skus/s1", {"Last-Event-ID": "x" * 300}, 400),
        ("/v1/streams/robots/u1", {}, 404),
    ],
)
def test_a_bad_stream_request_gets_a_problem(
    client: httpx.Client, path: str, headers: dict[str, str], status: int
) -> None:
    r = client.get(path, headers=headers)
    assert r.status_code == status
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["code"] in ("invalid_request", "not_found")


def test_a_stream_survives_its_owner_being_killed_by_resuming() -> None:
    grid = Grid(OMNIGRID_STREAM_HEARTBEAT_S="0.3")
    opened: list[Stream] = []
    try:
        with httpx.Client(base_url=grid.url, timeout=10) as c:
            sku, uid = stocked(c), new_id("u")
            url = f"{grid.url}/v1/streams/users/{uid}"
            stream = Stream(url)
            opened.append(stream)
            add(c, uid, sku, "app")
            seen = [stream.next()["data"]["version"]]
            time.sleep(1.0)
            assert stream.heartbeats >= 2, "idle streams get heartbeats"
            owner = SlotMap.even(2).owner("cart:" + uid)
            victim = c.get("/v1/cluster").json()["shards"][owner]["pid"]
            os.kill(victim, signal.SIGKILL)
            written = 1
            deadline = time.monotonic() + 60
            while written < 4:  # writes while the owner comes back (503 meanwhile)
                assert time.monotonic() < deadline, "the owner never came back"
                try:
                    if add(c, uid, sku, "h5").status_code == 200:
                        written += 1
                except httpx.HTTPError:
                    pass
                time.sleep(0.2)
            # the client reconnects with its cursor whenever its stream ends
            while len(seen) < 4:
                if stream.closed.is_set():
                    stream = Stream(url, last_event_id=f"cart:{seen[-1]}")
                    opened.append(stream)
                try:
                    seen.append(stream.next(timeout=1.0)["data"]["version"])
                except queue.Empty:
                    continue
            assert seen == [1, 2, 3, 4]
    finally:
        for s in opened:
            s.close()
        grid.stop()


# -- POST /v1/sync ---------------------------------------------------------------------------


def sync(client: httpx.Client, body: Any, channel: str | None = "app") -> httpx.Response:
    headers = write_headers(channel) if channel else {}
    return client.post("/v1/sync", json=body, headers=headers)


def test_a_replayed_sync_batch_applies_nothing_twice(grid: Grid, client: httpx.Client) -> None:
    sku, uid, device = stocked(client, 5), new_id("u"), new_id("dev")
    batch = {
        "client_id": device,
        "ops": [
            {"op_id": "o1", "op": "cart.add", "uid": uid, "sku": sku, "qty": 2, "base_version": 0},
            {"op_id": "o2", "op": "cart.add", "uid": uid, "sku": sku, "qty": 1},
            {"op_id": "o3", "op": "cart.set", "uid": uid, "sku": sku, "qty": 1, "base_version": 0},
            {"op_id": "o4", "op": "cart.add", "uid": uid, "sku": sku, "qty": 9},
            {"op_id": "o5", "op": "cart.add", "uid": uid, "sku": "never-stocked", "qty": 1},
            {"op_id": "o6", "op": "cart.add", "uid": uid, "sku": sku, "qty": 0},
            {"op_id": "o7", "op": "cart.remove", "uid": uid, "sku": "absent"},
            {"op_id": "o8", "op": "cart.fly", "uid": uid},
            {"op": "cart.clear", "uid": uid},
        ],
    }
    first = sync(client, batch)
    assert first.status_code == 200, first.text
    got = [(r["op_id"], r["status"], r["code"]) for r in first.json()["results"]]
    assert got == [
        ("o1", "applied", None),
        ("o2", "applied", None),
        ("o3", "conflict", "version_conflict"),
        ("o4", "conflict", "insufficient_stock"),
        ("o5", "conflict", "unknown_sku"),
        ("o6", "rejected", "invalid_request"),
        ("o7", "applied", None),
        ("o8", "rejected", "invalid_request"),
        (None, "rejected", "invalid_request"),
    ]
    results = first.json()["results"]
    assert [r.get("version") for r in results[:2]] == [1, 2]
    assert results[2]["view"]["lines"][0]["qty"] == 3  # the cart as it is, for the shopper
    cart = client.get(f"/v1/carts/{uid}").json()
    assert (cart["version"], cart["lines"][0]["qty"]) == (2, 3)

    again = sync(client, batch).json()["results"]
    assert [r["status"] for r in again[:2]] == ["duplicate", "duplicate"]
    assert [r["version"] for r in again[:2]] == [1, 2]
    assert again[6]["status"] == "duplicate"
    assert client.get(f"/v1/carts/{uid}").json()["version"] == 2, "applied twice"

    # the same op_id for another op is refused, not applied
    reused = dict(batch, ops=[{"op_id": "o1", "op": "cart.clear", "uid": uid}])
    r = sync(client, reused).json()["results"][0]
    assert (r["status"], r["code"]) == ("rejected", "idempotency_key_reused")
    assert client.get(f"/v1/carts/{uid}").json()["version"] == 2


@pytest.mark.parametrize(
    ("body", "channel", "status"),
    [
        ({"client_id": "d", "ops": []}, "app", 422),
        ({"client_id": "d", "ops": [{}] * 501}, "app", 422),
        (
            {"client_id": "bad id", "ops": [{"op_id": "1", "op": "cart.clear", "uid": "u"}]},
            "app",
            422,
        ),
        ({"ops": [{"op_id": "1", "op": "cart.clear", "uid": "u"}]}, "app", 422),
        ({"client_id": "d", "ops": {"op_id": "1"}}, "app", 422),
        ({"client_id": "d", "ops": [{"op_id": "1", "op": "cart.clear", "uid": "u"}]}, None, 400),
        ({"client_id": "d", "ops": [{"op_id": "1", "op": "cart.clear", "uid": "u"}]}, "fax", 400),
        ([1, 2], "app", 400),
    ],
)
def test_a_bad_sync_batch_is_refused_whole(
    client: httpx.Client, body: Any, channel: str | None, status: int
) -> None:
    r = sync(client, body, channel)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"


def test_a_price_change_is_a_price_event_on_the_skus_stream(
    grid: Grid, client: httpx.Client, streams: list[Stream]
) -> None:
    sku = stocked(client)
    body = {"title": "Oolong", "price": 300}
    client.put(f"/v1/products/{sku}", json=body, headers=write_headers("pos"))
    streams.append(Stream(f"{grid.url}/v1/streams/skus/{sku}"))
    client.post(f"/v1/products/{sku}/price", json={"price": 280}, headers=write_headers("pos"))
    event = streams[0].next()
    assert (event["event"], event["data"]["price"]) == ("price", 280)
    assert event["id"] == "stock:1,product:2"  # every kind: the stock as the stream opened


# -- resume across kinds; a cart event is the cart view -------------------------------------


def earn(client: httpx.Client, uid: str, points: int) -> None:
    body = {"points": points, "reason": "visit", "external_id": new_id("e")}
    r = client.post(f"/v1/members/{uid}/points/earn", json=body, headers=write_headers("pos"))
    assert r.status_code == 200, r.text


def test_a_resume_from_one_kinds_cursor_misses_nothing_of_the_others(
    grid: Grid, client: httpx.Client, streams: list[Stream]
) -> None:
    sku, uid = stocked(client), new_id("u")
    first = Stream(f"{grid.url}/v1/streams/users/{uid}")
    streams.append(first)
    add(client, uid, sku, "app")
    assert first.next()["id"] == "cart:1"
    earn(client, uid, 10)
    assert first.next()["id"] == "cart:1,member:1"
    first.close()
    # a client that kept only the first id (or a cursor from before member events)
    back = Stream(f"{grid.url}/v1/streams/users/{uid}", last_event_id="cart:1")
    streams.append(back)
    event = back.next()
    assert (event["event"], event["id"], event["data"]["version"]) == (
        "member",
        "cart:1,member:1",
        1,
    )
    assert back.nothing_more(), "a duplicate or an extra event"
    # the SKU's stream: a stock cursor misses no product (price) change
    sku2 = new_id("sku")
    client.put(f"/v1/skus/{sku2}/stock", json={"on_hand": 5}, headers=write_headers("pos"))
    body = {"title": "Oolong", "price": 300}
    client.put(f"/v1/products/{sku2}", json=body, headers=write_headers("pos"))
    client.post(f"/v1/products/{sku2}/price", json={"price": 280}, headers=write_headers("pos"))
    skus = Stream(f"{grid.url}/v1/streams/skus/{sku2}", last_event_id="stock:1")
    streams.append(skus)
    got = [skus.next() for _ in range(2)]
    assert [(e["data"]["version"], e["id"]) for e in got] == [
        (1, "stock:1,product:1"),
        (2, "stock:1,product:2"),
    ]
    assert got[1]["data"]["price"] == 280
    assert skus.nothing_more()


def test_a_streams_ids_name_every_kind_as_it_stood_when_the_stream_opened(
    grid: Grid, client: httpx.Client, streams: list[Stream]
) -> None:
    sku = stocked(client)
    uids = [new_id("u") for _ in range(4)]  # keys on both shards, streams on any process
    ids: dict[str, str] = {}
    for uid in uids:
        earn(client, uid, 5)
        earn(client, uid, 5)  # the member is at version 2 before the stream opens
        stream = Stream(f"{grid.url}/v1/streams/users/{uid}")
        streams.append(stream)
        add(client, uid, sku, "app")
        event = stream.next()
        assert event["event"] == "cart"
        ids[uid] = event["id"]
        stream.close()
    assert set(ids.values()) == {"cart:1,member:2"}
    for uid in uids:
        earn(client, uid, 1)  # while nobody listens
        back = Stream(f"{grid.url}/v1/streams/users/{uid}", last_event_id=ids[uid])
        streams.append(back)
        event = back.next()  # only what it missed: not the member's changes before it opened
        assert (event["event"], event["data"]["version"], event["id"]) == (
            "member",
            3,
            "cart:1,member:3",
        )
        assert back.nothing_more(0.3)
        back.close()


def test_a_cart_event_carries_the_cart_view_with_live_stock_and_prices(
    grid: Grid, client: httpx.Client, streams: list[Stream]
) -> None:
    sku, other, uid = stocked(client, 7), stocked(client, 3), new_id("u")
    body = {"title": "Oolong", "price": 300, "channel_prices": {"app": 280}}
    assert client.put(f"/v1/products/{sku}", json=body, headers=write_headers("pos")).is_success
    stream = Stream(f"{grid.url}/v1/streams/users/{uid}", headers={"X-Channel": "app"})
    streams.append(stream)
    add(client, uid, sku, "miniprogram", qty=2)
    add(client, uid, other, "miniprogram")
    events = [stream.next(), stream.next()]
    cart = client.get(f"/v1/carts/{uid}", headers={"X-Channel": "app"}).json()
    assert cart["subtotal"] == 560 and [line["unit_price"] for line in cart["lines"]] == [280, None]
    data = events[1]["data"]
    assert {k: data[k] for k in cart} == cart, "the stream's cart is the cart view"
    assert (data["channel"], data["op"], data["version"]) == ("miniprogram", "cart.add", 2)
    line = events[0]["data"]["lines"][0]
    assert (line["available"], line["in_stock"], line["unit_price"]) == (7, True, 280)
    assert events[0]["data"]["subtotal"] == 560
    # a resume replays history with the live fields too
    back = Stream(
        f"{grid.url}/v1/streams/users/{uid}", last_event_id="cart:1", headers={"X-Channel": "app"}
    )
    streams.append(back)
    again = back.next()["data"]
    assert {k: again[k] for k in cart} == cart
