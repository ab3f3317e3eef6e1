"""Metrics, the OpenAPI document and the command line."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
from prometheus_client.parser import text_string_to_metric_families

from omnigrid.api.http.routes import all_routes
from tests.api.test_contract import stock
from tests.conftest import new_id, write_headers


def test_metrics_cover_every_process(client: httpx.Client) -> None:
    sku = stock(client, 100)
    for channel in ("pos", "app"):
        for _ in range(10):
            # a connection each: the processes share the port (SO_REUSEPORT), so twenty
            # connections reach both (one kept connection reaches one process only)
            httpx.post(
                f"{client.base_url}/v1/carts/{new_id('u')}/lines",
                json={"sku": sku, "qty": 1},
                headers=write_headers(channel),
            )
    client.get(f"/v1/skus/{new_id('nope')}/stock")
    text = client.get("/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    requests = families["omnigrid_http_requests"].samples
    shards = {s.labels["shard"] for s in requests}
    assert shards == {"0", "1"}, "both processes' metrics are merged"
    channels = {s.labels["channel"] for s in requests if s.labels["route"] == "add_line"}
    assert {"pos", "app"} <= channels
    errors = families["omnigrid_http_errors"].samples
    assert any(s.labels["code"] == "unknown_sku" for s in errors)
    assert "omnigrid_http_request_duration_seconds" in families
    assert {s.labels["shard"] for s in families["omnigrid_shard_queue_depth"].samples} == {"0", "1"}
    assert "omnigrid_shard_forward_batch_size" in families
    assert "omnigrid_shard_entities" in families


def test_openapi_documents_every_route(client: httpx.Client) -> None:
    doc = client.get("/openapi.json").json()
    for route in all_routes():
        operation = doc["paths"][route.path][route.method.lower()]
        if route.name in ("put_stock", "adjust_stock", "reserve", "add_line", "set_line"):
            assert "requestBody" in operation, route.name
        if route.handler is not None:
            problems = [a for s, a in operation["responses"].items() if s >= "400"]
            assert problems and all("application/problem+json" in a["content"] for a in problems)
    schemas = doc["components"]["schemas"]
    assert schemas["LineAdd"]["additionalProperties"] is False
    assert set(schemas["CartLine"]["properties"]) == {
        "sku",
        "qty",
        "added_via",
        "added_by_clerk",
        "updated_via",
        "updated_at",
        "available",
        "in_stock",
        "unit_price",
    }
    assert client.get("/docs").status_code == 200


def test_cli_help_lists_serve_and_settings() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "omnigrid.api.runtime.cli", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "serve" in out and "OMNIGRID_SHARDS" in out and "RAY_ADDRESS" in out
    bad = subprocess.run(
        [sys.executable, "-m", "omnigrid.api.runtime.cli", "serve", "--shards", "0"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "shards must be at least 1" in bad.stderr


def test_cluster_status_shows_every_shard(client: httpx.Client) -> None:
    url = str(client.base_url)
    run = [sys.executable, "-m", "omnigrid.api.runtime.cli", "cluster", "status", "--url", url]
    shown = subprocess.run(run, capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0].startswith("slot map version") and lines[0].endswith("2 shards")
    assert [line.split(":")[0].strip() for line in lines[1:3]] == ["shard 0", "shard 1"]
    assert all("8192 slots" in line and "journal ok" in line for line in lines[1:3])
    assert len(lines) == 4 and lines[3].endswith(": shards 0, 1")  # one node runs both
    as_json = subprocess.run([*run, "--json"], capture_output=True, text=True, timeout=60)
    view = json.loads(as_json.stdout)
    assert len(view["shards"]) == 2 and len(view["nodes"]) == 1
    assert view["front"] is None  # the shards hold the connections themselves
    # the only node runs shard 0, the coordinator: a drain is refused, nothing moves
    node = view["nodes"][0]["node_id"]
    drain = [*run[:-3], "drain", node[:12], "--url", url]
    refused = subprocess.run(drain, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "409" in refused.stderr, refused
    assert not json.loads(subprocess.run([*run, "--json"], capture_output=True).stdout)["nodes"][0][
        "drained"
    ]
    away = subprocess.run([*run[:-1], "http://127.0.0.1:1"], capture_output=True, text=True)
    assert away.returncode == 2 and "cannot reach" in away.stderr
