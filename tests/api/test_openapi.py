"""The OpenAPI document is exact: schemathesis drives every documented route of the
ASGI app in-process (no Ray) and checks each answer's status code, content type
and body against ``/openapi.json``; a route whose document drifts from its
behaviour fails here. The event streams never end, so their documents are
checked as documents, and their refusals over HTTP.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.inprocess import in_process_app

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


APP = in_process_app()
SCHEMA = schemathesis.openapi.from_asgi("/openapi.json", APP).exclude(path_regex="^/v1/streams/")


@SCHEMA.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_answer_matches_the_document(case: Any) -> None:
    case.call_and_validate(checks=CHECKS)


def test_streams_are_documented_as_event_streams_with_their_refusals() -> None:
    async def scenario() -> None:
        transport = httpx.ASGITransport(app=APP)  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="http://grid") as c:
            doc = (await c.get("/openapi.json")).json()
            for path in ("/v1/streams/users/{uid}", "/v1/streams/skus/{sku}"):
                answers = doc["paths"][path]["get"]["responses"]
                assert list(answers["200"]["content"]) == ["text/event-stream"]
                assert list(answers["400"]["content"]) == ["application/problem+json"]
            metrics = doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
            assert list(metrics) == ["text/plain; version=0.0.4; charset=utf-8"]
            # what the document says a malformed id gets, it gets
            bad = await c.get("/v1/streams/users/not%20an%20id")
            assert bad.status_code == 400
            assert bad.headers["content-type"] == "application/problem+json"
            assert bad.json()["code"] == "invalid_request"

    asyncio.run(scenario())
