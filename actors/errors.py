"""One error hierarchy for the whole grid; api/ maps it to problem documents.

Every refusal has a machine-readable ``code`` from the contract and the HTTP
status that code answers with, so a refusal can cross a process boundary as
two strings and be rebuilt on the other side.
"""

from __future__ import annotations

STATUS_OF_CODE: dict[str, int] = {
    "invalid_request": 422,
    "unknown_channel": 400,
    "not_found": 404,
    "unknown_sku": 404,
    "method_not_allowed": 405,
    "insufficient_stock": 409,
    "reservation_closed": 409,
    "cart_full": 409,
    "version_conflict": 412,
    "payload_too_large": 413,
    "idempotency_key_reused": 422,
    "overloaded": 429,
    "unavailable": 503,
}


class GridError(Exception):
    """A request the grid refuses; it changed nothing."""

    def __init__(self, code: str, detail: str, status: int | None = None) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.status = status if status is not None else STATUS_OF_CODE[code]


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


class Overloaded(GridError):
    """Too much is queued for an owner; the caller should back off (429)."""

    def __init__(self, detail: str) -> None:
        super().__init__("overloaded", detail)
