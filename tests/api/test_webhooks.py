"""Webhooks against real receivers (HTTP servers on threads), and the behaviour log."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from omnigrid.api.runtime.signing import HEADER, verify
from tests.conftest import Grid, free_port, new_id, write_headers

WAIT_S = 15.0


class Receiver:
    """An HTTP server that records deliveries and answers as told."""

    def __init__(self, answers: list[int] | None = None, hang_s: float = 0.0) -> None:
        self.answers = list(answers or [])  # status per delivery in turn; then 200
        self.hang_s = hang_s
        self.got: list[tuple[dict[str, str], bytes]] = []
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                receiver.got.append(({k.lower(): v for k, v in self.headers.items()}, body))
                if receiver.hang_s:
                    time.sleep(receiver.hang_s)
                status = receiver.answers.pop(0) if receiver.answers else 200
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, count: int) -> list[tuple[dict[str, str], bytes]]:
        deadline = time.monotonic() + WAIT_S
        while len(self.got) < count:
            assert time.monotonic() < deadline, f"{len(self.got)} of {count} deliveries arrived"
            time.sleep(0.05)
        return self.got

    def stop(self) -> None:
        self.server.shutdown()


@pytest.fixture(scope="module")
def hooks_grid() -> Iterator[Grid]:
    g = Grid(OMNIGRID_WEBHOOK_BACKOFF_S="0.2", OMNIGRID_WEBHOOK_MAX_ATTEMPTS="3")
    try:
        yield g
    finally:
        g.stop()


@pytest.fixture()
def hc(hooks_grid: Grid) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=hooks_grid.url, timeout=10) as c:
        yield c


def register(client: httpx.Client, url: str, events: list[str]) -> dict[str, Any]:
    r = client.post("/v1/webhooks", json={"url": url, "events": events}, headers=write_headers())
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    time.sleep(2.5)  # every process reloads the registrations every 2 s
    return body


def test_deliveries_are_signed_and_carry_the_event(hc: httpx.Client) -> None:
    receiver = Receiver()
    try:
        hook = register(hc, receiver.url, ["cart"])
        assert hook["secret"].startswith("whsec_") and hook["events"] == ["cart"]
        listed = hc.get("/v1/webhooks").json()["webhooks"]
        assert any(h["id"] == hook["id"] and "secret" not in h for h in listed)
        sku, uid = new_id("sku"), new_id("u")
        hc.put(f"/v1/skus/{sku}/stock", json={"on_hand": 5}, headers=write_headers("pos"))
        hc.post(f"/v1/carts/{uid}/lines", json={"sku": sku, "qty": 2}, headers=write_headers("h5"))
        headers, body = next(
            (h, b) for h, b in receiver.wait_for(1) if orjson.loads(b)["key"] == f"cart:{uid}"
        )
        event = orjson.loads(body)
        assert (event["id"], event["op"], event["channel"], event["version"]) == (
            f"cart:{uid}:1",
            "cart.add",
            "h5",
            1,
        )
        assert event["data"]["lines"][0]["qty"] == 2
        assert headers["omnigrid-event-id"] == event["id"]
        signature = headers[HEADER.lower()]
        assert verify(hook["secret"], signature, body)
        assert not verify(hook["secret"], signature, body + b" ")  # tampered
        assert not verify("whsec_other", signature, body)
        assert not verify(hook["secret"], signature, body, now=time.time() + 301)  # replayed late
        assert hc.delete(f"/v1/webhooks/{hook['id']}", headers=write_headers()).status_code == 200
    finally:
        receiver.stop()


def test_a_failing_receiver_gets_retries_then_a_dead_letter(hc: httpx.Client) -> None:
    flaky, broken = Receiver(answers=[500]), Receiver(answers=[500, 503, 500])
    try:
        flaky_hook = register(hc, flaky.url, ["stock"])
        broken_hook = register(hc, broken.url, ["stock"])
        sku = new_id("sku")
        hc.put(f"/v1/skus/{sku}/stock", json={"on_hand": 5}, headers=write_headers("pos"))
        mine = f"stock:{sku}:1"
        # at least once: the flaky receiver sees the same event id again after its 500
        deadline = time.monotonic() + WAIT_S
        while sum(orjson.loads(b)["id"] == mine for _, b in flaky.got) < 2:
            assert time.monotonic() < deadline, "no retry after a 500"
            time.sleep(0.05)
        attempts = [h["omnigrid-attempt"] for h, b in flaky.got if orjson.loads(b)["id"] == mine]
        assert attempts[:2] == ["1", "2"]
        # three tries, then a dead letter, visible through the API
        while True:
            letters = hc.get(f"/v1/webhooks/{broken_hook['id']}/dead-letters").json()
            if any(d["event_id"] == mine for d in letters["dead_letters"]):
                break
            assert time.monotonic() < deadline, "no dead letter after the last try"
            time.sleep(0.1)
        letter = next(d for d in letters["dead_letters"] if d["event_id"] == mine)
        assert letter["attempts"] == 3 and letter["last_error"] == "HTTP 500"
        assert letter["body"]["data"]["on_hand"] == 5
        for hook in (flaky_hook, broken_hook):
            hc.delete(f"/v1/webhooks/{hook['id']}", headers=write_headers())
    finally:
        flaky.stop()
        broken.stop()


def test_a_hanging_receiver_never_holds_up_writes(hc: httpx.Client) -> None:
    hanging = Receiver(hang_s=20.0)
    try:
        hook = register(hc, hanging.url, ["cart", "stock"])
        sku = new_id("sku")
        assert hc.put(
            f"/v1/skus/{sku}/stock", json={"on_hand": 100}, headers=write_headers("pos")
        ).is_success
        hanging.wait_for(1)  # the sender is now stuck on it
        for _ in range(20):
            r = hc.post(
                f"/v1/carts/{new_id('u')}/lines",
                json={"sku": sku, "qty": 1},
                headers=write_headers(),
            )
            assert r.status_code == 200
        hc.delete(f"/v1/webhooks/{hook['id']}", headers=write_headers())
    finally:
        hanging.stop()


@pytest.mark.parametrize(
    "body",
    [
        {"url": "ftp://example.com/x", "events": ["cart"]},
        {"url": "not a url", "events": ["cart"]},
        {"url": "http://example.com/" + "x" * 3000, "events": ["cart"]},
        {"url": "http://example.com/x", "events": []},
        {"url": "http://example.com/x", "events": ["orders"]},
        {"url": "http://example.com/x"},
        {"url": "http://example.com/x", "events": ["cart"], "secret": "mine"},
    ],
)
def test_a_bad_registration_is_refused(client: httpx.Client, body: dict[str, Any]) -> None:
    r = client.post("/v1/webhooks", json=body, headers=write_headers())
    assert r.status_code == 422 and r.json()["code"] == "invalid_request"


def test_deleting_an_unknown_webhook_is_404(client: httpx.Client) -> None:
    r = client.delete("/v1/webhooks/wh_nope", headers=write_headers())
    assert r.status_code == 404 and r.json()["code"] == "not_found"


# -- the behaviour log -------------------------------------------------------------------


def test_behaviour_and_cart_changes_make_one_timeline(client: httpx.Client) -> None:
    uid, sku = new_id("u"), new_id("sku")
    client.put(f"/v1/skus/{sku}/stock", json={"on_hand": 5}, headers=write_headers("pos"))
    r = client.post(
        "/v1/events",
        json={
            "uid": uid,
            "events": [
                {"type": "search", "query": "red shoes", "at": "2026-01-01T10:00:00Z"},
                {"type": "view", "sku": sku, "at": 1767261660, "event_id": "v-1"},
            ],
        },
        headers=write_headers("app"),
    )
    assert r.status_code == 202 and r.json()["accepted"] == 2
    client.post(f"/v1/carts/{uid}/lines", json={"sku": sku, "qty": 1}, headers=write_headers("h5"))
    visit = {"type": "store_visit", "store_id": "sh-01", "event_id": "v-2"}
    purchase = {"type": "purchase", "sku": sku, "qty": 1, "amount": 99.5, "ref": "till-7"}
    client.post(
        "/v1/events", json={"uid": uid, "events": [visit, purchase]}, headers=write_headers("pos")
    )
    # a retried batch with the same event ids adds nothing
    client.post(
        "/v1/events",
        json={
            "uid": uid,
            "events": [{"type": "view", "sku": sku, "at": 1767261660, "event_id": "v-1"}],
        },
        headers=write_headers("app"),
    )
    deadline = time.monotonic() + WAIT_S
    while True:  # the cart change reaches the event log with the write-behind
        items = client.get(f"/v1/users/{uid}/timeline").json()["items"]
        if any(i["source"] == "grid" for i in items):
            break
        assert time.monotonic() < deadline, "the cart change never reached the timeline"
        time.sleep(0.1)
    path = [(i["source"], i["type"], i["channel"]) for i in items]
    assert path == [
        ("channel", "search", "app"),
        ("channel", "view", "app"),
        ("grid", "cart.add", "h5"),
        ("channel", "store_visit", "pos"),
        ("channel", "purchase", "pos"),
    ]
    assert items[2]["version"] == 1 and items[4]["amount"] == 99.5
    assert [i["type"] for i in client.get(f"/v1/users/{uid}/timeline?limit=2").json()["items"]] == [
        "store_visit",
        "purchase",
    ]


@pytest.mark.parametrize(
    "events",
    [
        [{"type": "teleport"}],
        [{"type": "view", "sku": "bad sku"}],
        [{"type": "view", "at": "yesterday"}],
        [{"type": "view", "at": "2999-01-01T00:00:00Z"}],
        [{"type": "view", "at": "2026-01-01T10:00:00"}],
        [{"type": "view", "channel": "fax"}],
        [{"type": "purchase", "amount": -1}],
        [{"type": "purchase", "qty": True}],
        [{"type": "view", "colour": "red"}],
        [{"type": "view"}, "not an object"],
        [{"type": "view"}] * 501,
    ],
)
def test_a_bad_behaviour_batch_stores_nothing(client: httpx.Client, events: list[Any]) -> None:
    uid = new_id("u")
    good = {"type": "view", "event_id": "fine"}
    r = client.post(
        "/v1/events", json={"uid": uid, "events": [good, *events]}, headers=write_headers()
    )
    assert r.status_code == 422, r.text
    assert client.get(f"/v1/users/{uid}/timeline").json()["items"] == []


def test_an_empty_or_uidless_behaviour_batch_is_refused(client: httpx.Client) -> None:
    bodies = (({"uid": "u1", "events": []}, 422), ({"events": [{"type": "view"}]}, 422), ([1], 400))
    for body, status in bodies:
        r = client.post("/v1/events", json=body, headers=write_headers())
        assert (r.status_code, r.json()["code"]) == (status, "invalid_request"), body
    r = client.post("/v1/events", json={"uid": "u1", "events": [{"type": "view"}]})
    assert r.status_code == 400 and r.json()["code"] == "unknown_channel"


def test_timeline_refuses_a_bad_limit(client: httpx.Client) -> None:
    assert client.get("/v1/users/u1/timeline?limit=0").status_code == 422
    assert client.get("/v1/users/u1/timeline?limit=abc").status_code == 422
    assert client.get("/v1/users/bad%20uid/timeline").status_code == 400


def test_order_moves_are_order_webhook_events_and_bookkeeping_is_not(hc: httpx.Client) -> None:
    receiver = Receiver()
    try:
        hook = register(hc, receiver.url, ["order"])
        time.sleep(3.0)  # every process, busy or not, has reloaded the registrations
        sku, uid = new_id("sku"), new_id("u")
        hc.put(f"/v1/products/{sku}", json={"title": "t", "price": 500}, headers=write_headers())
        hc.put(f"/v1/skus/{sku}/stock", json={"on_hand": 5}, headers=write_headers("pos"))
        body = {"uid": uid, "lines": [{"sku": sku, "qty": 1}]}
        oid = hc.post("/v1/checkouts", json=body, headers=write_headers("app")).json()["order_id"]
        hc.post(f"/v1/orders/{oid}/pay", json={"payment_ref": "p"}, headers=write_headers("h5"))
        deadline = time.monotonic() + WAIT_S

        def mine() -> list[dict[str, Any]]:
            bodies = [orjson.loads(b) for _, b in receiver.got]
            return sorted(
                (e for e in bodies if e["key"] == f"order:{oid}"), key=lambda e: e["version"]
            )

        while len(mine()) < 2:
            assert time.monotonic() < deadline, receiver.got
            time.sleep(0.05)
        time.sleep(1.0)  # anything more would have come by now
        ops = [(e["op"], e["data"]["status"], e["channel"]) for e in mine()]
        # no begin, no "sent": the saga's bookkeeping is not news
        assert ops == [("order.priced", "pending", "app"), ("order.pay", "paid", "h5")]
        assert hc.delete(f"/v1/webhooks/{hook['id']}", headers=write_headers()).status_code == 200
    finally:
        receiver.stop()


def test_a_slow_receiver_does_not_hold_up_another(hc: httpx.Client) -> None:
    """Each send is a task of its own: a receiver taking 4 s per delivery delays its
    own deliveries, not a fast receiver's of the same changes."""
    slow, fast = Receiver(hang_s=4.0), Receiver()
    hooks = []
    try:
        hooks = [register(hc, slow.url, ["cart"]), register(hc, fast.url, ["cart"])]
        sku, uid = new_id("sku"), new_id("u")
        hc.put(f"/v1/skus/{sku}/stock", json={"on_hand": 50}, headers=write_headers())
        started = time.monotonic()
        for _ in range(3):
            r = hc.post(
                f"/v1/carts/{uid}/lines", json={"sku": sku, "qty": 1}, headers=write_headers("app")
            )
            assert r.status_code == 200, r.text
            time.sleep(0.3)  # three rounds of the sender: the slow sends stay in flight
        mine = [b for _, b in fast.wait_for(3) if orjson.loads(b)["key"] == f"cart:{uid}"]
        took = time.monotonic() - started
        assert len(mine) == 3 and took < 3.5, took  # before the slow one answered once
        # and every change reaches the slow one too, none waiting for another to finish
        deadline = time.monotonic() + 15
        while True:
            got = {
                orjson.loads(b)["version"]
                for _, b in slow.got
                if orjson.loads(b)["key"] == f"cart:{uid}"
            }
            if got == {1, 2, 3}:
                break
            assert time.monotonic() < deadline, got
            time.sleep(0.1)
    finally:
        for hook in hooks:
            hc.delete(f"/v1/webhooks/{hook['id']}", headers=write_headers())
        slow.stop()
        fast.stop()
