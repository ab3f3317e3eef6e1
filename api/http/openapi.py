"""``/openapi.json`` and ``/docs``: the route table (api/http/routes.py), documented.

The document is built from the table, not from stubs: each route's path and
header parameters, its body and answer schemas (msgspec generates them from
the same classes that check the bodies), and the problem documents it can
answer. FastAPI serves the document and the ``/docs`` page; it never serves
an endpoint.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec
from fastapi import FastAPI

from omnigrid.actors.declaration import ID_PATTERN
from omnigrid.actors.errors import CODES
from omnigrid.actors.kinds import kinds
from omnigrid.api.http.behaviour import MAX_TIMELINE
from omnigrid.api.http.routes import Route, all_routes

REF = "#/components/schemas/{name}"
# Event streams check their id and their capacity before they start.
STREAM_REFUSALS = ("invalid_request", "overloaded", "unavailable")
WRITE_REFUSALS = ("unknown_channel", "version_conflict", "payload_too_large",
                  "idempotency_key_reused")  # fmt: skip
COMMON_REFUSALS = ("invalid_request", "overloaded", "unavailable")
# Query parameters: (name, minimum, maximum) per route.
QUERY_LIMITS = {"dead_letters": ("limit", 1, 1000), "timeline": ("limit", 1, MAX_TIMELINE)}


def _problem_type() -> type[msgspec.Struct]:
    codes: Any = Literal[tuple(sorted(CODES))]  # every registered kind's codes too
    return msgspec.defstruct(
        "Problem",
        [
            ("type", str),
            ("title", str),
            ("status", int),
            ("detail", str),
            ("code", codes),
            ("instance", str | None, None),
        ],
        kw_only=True,
    )


def _refusals(route: Route) -> list[str]:
    codes = list(route.refusals)
    if route.stream:
        codes += STREAM_REFUSALS
    elif route.handler is not None:
        codes += COMMON_REFUSALS
        if route.is_write:
            codes += WRITE_REFUSALS
    if route.scope is not None:  # once the grid has keys: unsigned, or not this key's
        codes += ("unauthenticated", "forbidden")
    return codes


def _parameters(route: Route) -> list[dict[str, Any]]:
    params: list[dict[str, Any]] = [
        {"name": part[1:-1], "in": "path", "required": True,
         "schema": {"type": "string", "pattern": ID_PATTERN}}
        for part in route.segments
        if part.startswith("{")
    ]  # fmt: skip
    if route.is_write and route.handler is not None:
        params += [
            {"name": "X-Channel", "in": "header", "required": True,
             "description": "the channel making the change", "schema": {"type": "string"}},
            {"name": "Idempotency-Key", "in": "header", "required": False,
             "description": "retry-safe key, remembered 24 h",
             "schema": {"type": "string", "minLength": 1, "maxLength": 128}},
            {"name": "If-Match", "in": "header", "required": False,
             "description": "the entity version the change expects",
             "schema": {"type": "string"}},
        ]  # fmt: skip
    for name, schema in route.query:
        params.append({"name": name, "in": "query", "required": False, "schema": schema})
    if route.name in QUERY_LIMITS:
        name, low, high = QUERY_LIMITS[route.name]
        params.append({"name": name, "in": "query", "required": False,
                       "schema": {"type": "integer", "minimum": low, "maximum": high}})  # fmt: skip
    if route.stream:
        example = ",".join(f"{kind.name}:<version>" for kind in route.stream)
        cursor = {"type": "string", "description": f"the last event's id ({example})"}
        params += [
            {"name": "Last-Event-ID", "in": "header", "required": False, "schema": cursor},
            {"name": "last_event_id", "in": "query", "required": False, "schema": cursor},
        ]
    return params


def _operation(route: Route, schema_of: dict[Any, dict[str, Any]], problem: Any) -> dict[str, Any]:
    answer_schema = schema_of[route.answer] if route.answer is not None else {}
    responses: dict[str, Any] = {
        str(route.status): {
            "description": route.summary,
            "content": {route.media_type: {"schema": answer_schema}},
        }
    }
    by_status: dict[int, set[str]] = {}
    codes = _refusals(route)
    for code in codes:
        by_status.setdefault(CODES[code][0], set()).add(code)
    if "invalid_request" in codes:  # a malformed id, header or JSON body
        by_status.setdefault(400, set()).add("invalid_request")
    if route.name == "readyz":
        by_status[503] = {"unavailable"}
    for status, names in sorted(by_status.items()):
        responses[str(status)] = {
            "description": "problem document: " + ", ".join(sorted(names)),
            "content": {"application/problem+json": {"schema": schema_of[problem]}},
        }
    operation: dict[str, Any] = {
        "operationId": route.name,
        "summary": route.summary,
        "tags": [route.kind.name if route.kind is not None else "grid"],
        "parameters": _parameters(route),
        "responses": responses,
    }
    if route.body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": schema_of[route.body]}},
        }
    return operation


def document(routes: tuple[Route, ...] | None = None) -> dict[str, Any]:
    routes = all_routes() if routes is None else routes
    problem = _problem_type()
    types = list(dict.fromkeys([problem] + [t for r in routes for t in (r.body, r.answer) if t]))
    schemas, components = msgspec.json.schema_components(types, ref_template=REF)
    schema_of = dict(zip(types, schemas, strict=True))
    if "WebhookCreate" in components:  # the kinds registered in this process
        events = components["WebhookCreate"]["properties"]["events"]
        events["items"] = {"enum": [kind.name for kind in kinds()]}
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(
            route, schema_of, problem
        )
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "omnigrid",
            "version": "1",
            "description": "The live state grid behind every retail channel (contract v1).",
        },
        "paths": paths,
        "components": {"schemas": components},
    }


def docs_app(routes: tuple[Route, ...] | None = None) -> FastAPI:
    """Serves ``/openapi.json`` and the ``/docs`` page for these routes (default: the
    kinds registered now and the grid's own)."""
    app = FastAPI(
        title="omnigrid",
        version="1",
        description="The live state grid behind every retail channel (contract v1).",
    )
    doc = document(routes)
    app.openapi = lambda: doc  # type: ignore[method-assign]
    return app
