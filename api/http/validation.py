"""Reading what a channel sent: ids, headers and JSON bodies, strictly.

Nothing here trusts the input. Every refusal is a ``GridError`` with a detail
that says what was wrong, so a buggy channel learns what to fix; nothing
reaches an entity before it has passed.
"""

from __future__ import annotations

from typing import Any

import orjson

from omnigrid.actors.declaration import ID_RE
from omnigrid.actors.errors import GridError, InvalidRequest, MalformedRequest

MAX_BODY_BYTES = 64 * 1024


def identifier(value: str, what: str) -> str:
    if ID_RE.fullmatch(value) is None:
        raise MalformedRequest(f"{what} must match ^[A-Za-z0-9_.:-]{{1,64}}$")
    return value


def idempotency_key(raw: bytes | None) -> str | None:
    if raw is None:
        return None
    if not 1 <= len(raw) <= 128 or any(b < 0x20 or b > 0x7E for b in raw):
        raise MalformedRequest("Idempotency-Key must be 1-128 printable ASCII characters")
    return raw.decode("ascii")


def clerk(raw: bytes | None, channel: str) -> str | None:
    """``X-Clerk``: the till's clerk acting for a shopper, on a ``pos`` write only."""
    if raw is None:
        return None
    if channel != "pos":
        raise InvalidRequest("X-Clerk is for writes from the pos channel")
    return identifier(raw.decode("latin-1"), "X-Clerk")


def if_match(raw: bytes | None) -> int | None:
    """``If-Match: 7``, ``"7"`` or ``W/"7"``; ``*`` matches any version."""
    if raw is None:
        return None
    text = raw.decode("latin-1").strip()
    if text == "*":
        return None
    text = text.removeprefix("W/").strip('"')
    if not text.isdigit() or len(text) > 18:
        raise MalformedRequest("If-Match must be an entity version, an integer")
    return int(text)


def json_object(body: bytes) -> dict[str, Any]:
    """Parse a request body that must be one JSON object (an empty body is ``{}``)."""
    if not body.strip():
        return {}
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise MalformedRequest(f"the body is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise MalformedRequest("the body must be a JSON object")
    return value


def fields(body: dict[str, Any], required: set[str], optional: set[str] = frozenset()) -> None:  # type: ignore[assignment]
    unknown = body.keys() - required - optional
    if unknown:
        raise InvalidRequest(f"unknown field(s): {', '.join(sorted(unknown))}")
    missing = required - body.keys()
    if missing:
        raise InvalidRequest(f"missing field(s): {', '.join(sorted(missing))}")


def integer(
    body: dict[str, Any], name: str, low: int, high: int, default: int | None = None
) -> int:
    value = body.get(name, default)
    # bool is an int in Python; in JSON it is not a number.
    if type(value) is not int:
        raise InvalidRequest(f"{name} must be an integer")
    if not low <= value <= high:
        raise InvalidRequest(f"{name} must be between {low} and {high}")
    return value


def text(body: dict[str, Any], name: str, max_chars: int) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > max_chars:
        raise InvalidRequest(f"{name} must be a string of at most {max_chars} characters")
    return value


def sku_field(body: dict[str, Any]) -> str:
    value = body.get("sku")
    if not isinstance(value, str) or ID_RE.fullmatch(value) is None:
        raise InvalidRequest("sku must be a string matching ^[A-Za-z0-9_.:-]{1,64}$")
    return value


def too_large() -> GridError:
    return GridError("payload_too_large", f"request bodies are limited to {MAX_BODY_BYTES} bytes")
