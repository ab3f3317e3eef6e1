"""A kind defined only in the tests (tests/kinds/counter.py) gets everything a kind
gets, from its one module, with no change to the grid's code.

In-process (no Ray): routes, ETags, idempotency, If-Match, its refusals as problem
documents, bad input, and the OpenAPI document (schemathesis checks the counter's
routes against it). On a real grid (``OMNIGRID_KIND_MODULES``): journaling and
crash recovery, its live stream and its webhooks.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from omnigrid.actors import kinds
from tests.api.test_live import Stream
from tests.api.test_openapi import CHECKS
from tests.api.test_webhooks import Receiver, register
from tests.conftest import Grid, new_id, write_headers
from tests.inprocess import in_process_app, in_process_client
from tests.kinds import counter

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def counter_kind() -> Iterator[None]:
    """The counter kind, registered in this process for this module's tests only."""
    kinds.register(counter.KIND)
    try:
        yield
    finally:
        kinds.unregister(counter.KIND)


@pytest.fixture()
def local(counter_kind: None) -> Iterator[httpx.Client]:
    with in_process_client() as client:
        yield client


def test_a_new_kind_gets_routes_etags_idempotency_and_if_match(local: httpx.Client) -> None:
    cid = new_id("c")
    assert local.get(f"/v1/counters/{cid}").json()["value"] == 0
    put = local.put(f"/v1/counters/{cid}", json={"value": 5}, headers=write_headers("pos"))
    assert (put.status_code, put.headers["etag"], put.json()["value"]) == (200, '"1"', 5)
    once = write_headers("app", **{"Idempotency-Key": "k1"})
    first = local.post(f"/v1/counters/{cid}/increments", json={"by": 2}, headers=once)
    again = local.post(f"/v1/counters/{cid}/increments", json={"by": 2}, headers=once)
    assert first.json() == again.json() and first.json()["value"] == 7
    reused = local.post(f"/v1/counters/{cid}/increments", json={"by": 3}, headers=once)
    assert (reused.status_code, reused.json()["code"]) == (422, "idempotency_key_reused")
    stale = local.put(
        f"/v1/counters/{cid}", json={"value": 1}, headers=write_headers("app", **{"If-Match": "1"})
    )
    assert (stale.status_code, stale.json()["code"]) == (412, "version_conflict")
    current = local.put(
        f"/v1/counters/{cid}", json={"value": 1}, headers=write_headers("app", **{"If-Match": "2"})
    )
    assert (current.status_code, current.headers["etag"]) == (200, '"3"')


def test_its_own_refusal_is_a_problem_document_with_its_title(local: httpx.Client) -> None:
    cid = new_id("c")
    local.put(f"/v1/counters/{cid}", json={"value": 999}, headers=write_headers())
    r = local.post(f"/v1/counters/{cid}/increments", json={"by": 2}, headers=write_headers())
    assert r.status_code == 409
    assert r.headers["content-type"] == "application/problem+json"
    problem = r.json()
    assert (problem["code"], problem["title"]) == ("counter_overflow", "Counter overflow")
    assert local.get(f"/v1/counters/{cid}").json()["value"] == 999


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b'{"value": -1}', 422),
        (b'{"value": 1001}', 422),
        (b'{"value": true}', 422),
        (b'{"value": 1.5}', 422),
        (b'{"value": 1, "extra": 1}', 422),
        (b"{}", 422),
        (b"[1]", 400),
        (b"{not json", 400),
    ],
)
def test_bad_input_to_a_new_kind_is_refused_and_changes_nothing(
    local: httpx.Client, body: bytes, status: int
) -> None:
    cid = new_id("c")
    local.put(f"/v1/counters/{cid}", json={"value": 3}, headers=write_headers())
    r = local.put(f"/v1/counters/{cid}", content=body, headers=write_headers())
    assert (r.status_code, r.json()["code"]) == (status, "invalid_request"), r.text
    assert local.get(f"/v1/counters/{cid}").json() | {"updated_at": None} == {
        "cid": cid,
        "value": 3,
        "version": 1,
        "updated_at": None,
    }


def test_a_new_kind_is_in_the_openapi_document(local: httpx.Client) -> None:
    doc = local.get("/openapi.json").json()
    increments = doc["paths"]["/v1/counters/{cid}/increments"]["post"]
    body = increments["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    schemas = doc["components"]["schemas"]
    assert schemas[body.rsplit("/", 1)[1]]["properties"]["by"]["maximum"] == counter.MAX_VALUE
    assert "409" in increments["responses"]
    assert "counter_overflow" in schemas["Problem"]["properties"]["code"]["enum"]
    stream = doc["paths"]["/v1/streams/counters/{cid}"]["get"]["responses"]["200"]
    assert set(stream["content"]) == {"text/event-stream"}
    assert "counter" in schemas["WebhookCreate"]["properties"]["events"]["items"]["enum"]


@pytest.fixture()
def counter_schema(counter_kind: None) -> Any:
    return schemathesis.openapi.from_asgi("/openapi.json", in_process_app())


COUNTER_SCHEMA = schemathesis.pytest.from_fixture("counter_schema").include(
    path_regex="^/v1/counters/"
)


@COUNTER_SCHEMA.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_the_new_kinds_answers_match_its_document(case: Any) -> None:
    case.call_and_validate(checks=CHECKS)


# -- on a real grid ----------------------------------------------------------------


@pytest.fixture(scope="module")
def counter_grid() -> Iterator[Grid]:
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    g = Grid(OMNIGRID_KIND_MODULES="tests.kinds.counter", PYTHONPATH=path,
             OMNIGRID_WEBHOOK_BACKOFF_S="0.2")  # fmt: skip
    try:
        yield g
    finally:
        g.stop()


def test_a_new_kind_streams_sends_webhooks_and_survives_a_crash(counter_grid: Grid) -> None:
    receiver = Receiver()
    cids = [new_id("c") for _ in range(8)]  # on both shards
    try:
        with httpx.Client(base_url=counter_grid.url, timeout=10) as client:
            register(client, receiver.url, ["counter"])
            stream = Stream(f"{counter_grid.url}/v1/streams/counters/{cids[0]}")
            try:
                for cid in cids:
                    r = client.put(
                        f"/v1/counters/{cid}", json={"value": 10}, headers=write_headers()
                    )
                    assert r.status_code == 200, r.text
                    r = client.post(
                        f"/v1/counters/{cid}/increments", json={"by": 5}, headers=write_headers()
                    )
                    assert r.json()["value"] == 15
                events = [stream.next(), stream.next()]
                assert [(e["event"], e["id"]) for e in events] == [
                    ("counter", "counter:1"),
                    ("counter", "counter:2"),
                ]
                assert events[1]["data"]["value"] == 15
            finally:
                stream.close()
            delivered = {
                (body["key"], body["version"])
                for _, raw in receiver.wait_for(2 * len(cids))
                for body in (orjson.loads(raw),)
                if body["event"] == "counter"
            }
            assert {(f"counter:{cid}", 2) for cid in cids} <= delivered
        counter_grid.kill()  # SIGKILL: only the journal has the newest changes
        counter_grid.start()
        with httpx.Client(base_url=counter_grid.url, timeout=10) as client:
            for cid in cids:
                view = client.get(f"/v1/counters/{cid}").json()
                assert (view["value"], view["version"]) == (15, 2), view
            audit = client.post("/v1/cluster/audit").json()
            assert audit["mismatched"] == 0 and audit["checked"] >= len(cids)
    finally:
        receiver.stop()
