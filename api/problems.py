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


def problem_bytes(status: int, code: str, detail: str, instance: str | None = None) -> bytes:
    return orjson.dumps(problem(status, code, detail, instance))


def from_error(err: GridError, instance: str | None = None) -> tuple[int, bytes]:
    return err.status, problem_bytes(err.status, err.code, err.detail, instance)


def retry_after(status: int) -> bool:
    return status in (429, 503)
