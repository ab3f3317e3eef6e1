"""RFC 9457 problem documents: the only shape an error leaves the grid in."""

from __future__ import annotations

from typing import Any

import orjson

from omnigrid.actors.errors import CODES, GridError

PROBLEM_TYPE_BASE = "https://omnigrid.dev/problems/"
PROBLEM_CONTENT_TYPE = b"application/problem+json"

# Seconds a client should wait before retrying a 429 or 503.
RETRY_AFTER_S = 1


def problem(status: int, code: str, detail: str, instance: str | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "type": PROBLEM_TYPE_BASE + code,
        "title": CODES[code][1] if code in CODES else code.replace("_", " ").capitalize(),
        "status": status,
        "detail": detail,
        "code": code,
    }
    if instance is not None:
        doc["instance"] = instance
    return doc


Headers = list[tuple[bytes, bytes]]


def problem_response(
    status: int,
    code: str,
    detail: str,
    instance: str | None = None,
    extra: dict[str, Any] | None = None,
) -> tuple[int, bytes, Headers]:
    """The one way a problem leaves the grid: status, body, headers (the content type,
    and ``Retry-After`` on a 429 or 503). ``extra`` adds members (readiness details)."""
    doc = problem(status, code, detail, instance)
    if extra:
        doc.update(extra)
    headers = [(b"content-type", PROBLEM_CONTENT_TYPE)]
    if status in (429, 503):
        headers.append((b"retry-after", b"%d" % RETRY_AFTER_S))
    return status, orjson.dumps(doc), headers


def error_response(err: GridError, instance: str | None = None) -> tuple[int, bytes, Headers]:
    return problem_response(err.status, err.code, err.detail, instance, err.extra)
