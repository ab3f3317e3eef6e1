"""One error hierarchy for the whole grid; api/ maps it to problem documents.

Every refusal has a machine-readable ``code`` from the contract and the HTTP
status that code answers with, so a refusal can cross a process boundary as
two strings and be rebuilt on the other side.
"""

from __future__ import annotations

# The one code -> (status, problem title) table. These codes every part of the
# grid may answer; each entity kind adds its own (actors/kinds.py registers them).
COMMON_CODES: dict[str, tuple[int, str]] = {
    "invalid_request": (422, "Invalid request"),
    "unknown_channel": (400, "Unknown channel"),
    "unauthenticated": (401, "Unauthenticated"),
    "forbidden": (403, "Forbidden"),
    "not_found": (404, "Not found"),
    "method_not_allowed": (405, "Method not allowed"),
    "version_conflict": (412, "Version conflict"),
    "payload_too_large": (413, "Payload too large"),
    "idempotency_key_reused": (422, "Idempotency key reused"),
    "overloaded": (429, "Overloaded"),
    "internal_error": (500, "Internal error"),
    "unavailable": (503, "Unavailable"),
}
CODES: dict[str, tuple[int, str]] = dict(COMMON_CODES)


def register_code(code: str, status: int, title: str) -> None:
    """Add a kind's code; the same code may not mean two statuses."""
    known = CODES.get(code)
    if known is not None and known[0] != status:
        raise ValueError(f"error code {code!r} answers {known[0]} already, not {status}")
    CODES[code] = (status, title)


def forget_code(code: str) -> None:
    CODES.pop(code, None)


class GridError(Exception):
    """A request the grid refuses; it changed nothing."""

    def __init__(
        self,
        code: str,
        detail: str,
        status: int | None = None,
        extra: dict[str, object] | None = None,
    ) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.extra = extra  # more members of its problem document (a conflict's "uids")
        self.status = status if status is not None else CODES[code][0]


class InvalidRequest(GridError):
    """The request is well-formed JSON but breaks the contract's rules (422)."""

    def __init__(self, detail: str) -> None:
        super().__init__("invalid_request", detail)


class MalformedRequest(GridError):
    """The request cannot be read at all: bad JSON, bad path id, bad header (400)."""

    def __init__(self, detail: str) -> None:
        super().__init__("invalid_request", detail, status=400)


class Unavailable(GridError):
    """The owner of a key cannot be reached right now (503, retry later)."""

    def __init__(self, detail: str) -> None:
        super().__init__("unavailable", detail)


def key_reused() -> GridError:
    """An Idempotency-Key sent again with another request (422): nothing is done."""
    return GridError(
        "idempotency_key_reused", "this Idempotency-Key was used with a different request"
    )


def version_conflict(asked: int, current: int) -> GridError:
    """An If-Match naming a version the entity is no longer at (412): nothing is done."""
    return GridError("version_conflict", f"If-Match {asked} but the current version is {current}")


class Overloaded(GridError):
    """Too much is queued for an owner; the caller should back off (429)."""

    def __init__(self, detail: str) -> None:
        super().__init__("overloaded", detail)
