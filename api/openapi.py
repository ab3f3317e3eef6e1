"""``/openapi.json`` and ``/docs``: the served routes, documented by FastAPI.

The hot path never builds these models; they exist so the document shows each
endpoint's exact request body, answers and problem documents. The FastAPI
app registers one stub per row of the route table (api/routes.py) and only
ever answers the documentation paths.
"""

from __future__ import annotations

import inspect
from typing import Annotated, Any, Literal

from fastapi import Body, FastAPI, Header, Path
from pydantic import BaseModel, ConfigDict, Field

from omnigrid.actors.cart import MAX_LINE_QTY
from omnigrid.actors.errors import STATUS_OF_CODE
from omnigrid.api import validation as v
from omnigrid.api.behaviour import FUTURE_SLACK_S, MAX_EVENTS
from omnigrid.api.routes import ROUTES, Route
from omnigrid.api.webhooks import MAX_URL_CHARS
from omnigrid.persistence.behaviour import TYPES
from omnigrid.persistence.webhooks import KINDS

ID = r"^[A-Za-z0-9_.:-]{1,64}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StockSet(_Strict):
    on_hand: int = Field(ge=0, le=v.MAX_COUNT)


class StockAdjustment(_Strict):
    delta: int = Field(ge=-v.MAX_COUNT, le=v.MAX_COUNT, description="non-zero")
    reason: str | None = Field(default=None, max_length=v.MAX_REASON_CHARS)


class ReservationCreate(_Strict):
    qty: int = Field(ge=1, le=v.MAX_COUNT)
    ttl_s: int = Field(default=v.DEFAULT_TTL_S, ge=1, le=v.MAX_TTL_S)
    ref: str | None = Field(default=None, max_length=v.MAX_REF_CHARS)


class LineAdd(_Strict):
    sku: str = Field(pattern=ID)
    qty: int = Field(ge=1, le=MAX_LINE_QTY)


class LineSet(_Strict):
    qty: int = Field(ge=0, le=MAX_LINE_QTY, description="0 removes the line")


class StockView(BaseModel):
    sku: str
    on_hand: int
    reserved: int
    available: int = Field(description="on_hand - reserved, never negative")
    version: int
    updated_at: str | None


class ReservationView(BaseModel):
    reservation_id: str
    sku: str
    qty: int
    status: Literal["held", "committed", "released", "expired"]
    expires_at: str
    ref: str | None
    channel: str


class CartLine(BaseModel):
    sku: str
    qty: int
    added_via: str
    updated_via: str
    updated_at: str
    available: int = Field(description="the SKU's live availability at the time of the read")
    in_stock: bool = Field(description="available > 0")


class CartView(BaseModel):
    uid: str
    version: int
    updated_at: str | None
    lines: list[CartLine]


class SyncOp(BaseModel):
    op_id: str = Field(min_length=1, max_length=128, description="unique per device op")
    op: Literal["cart.add", "cart.set", "cart.remove", "cart.clear"]
    uid: str
    sku: str | None = None
    qty: int | None = Field(None, ge=0, le=MAX_LINE_QTY)
    base_version: int | None = Field(None, description="the cart version the op was made on")
    at: str | float | None = Field(
        None, description="when the shopper did it, offline; checked, not used: ops apply in order"
    )


class SyncBatch(BaseModel):
    client_id: str
    ops: list[SyncOp] = Field(min_length=1, max_length=500)


class SyncResult(BaseModel):
    op_id: str | None
    status: Literal["applied", "duplicate", "conflict", "rejected"]
    code: str | None
    detail: str | None
    version: int | None = None
    view: dict[str, Any] | None = Field(None, description="conflicts: the cart as it is now")


class SyncAnswer(BaseModel):
    client_id: str
    results: list[SyncResult]


class BehaviourEvent(_Strict):
    type: Literal[tuple(TYPES)]  # type: ignore[valid-type]
    at: str | float | None = Field(
        None,
        description=f"RFC 3339 with a zone, or epoch seconds; at most {FUTURE_SLACK_S:.0f} s ahead",
    )
    channel: str | None = Field(None, description="default: X-Channel; from the registry")
    event_id: str | None = Field(None, max_length=128, description="repeats are kept once")
    sku: str | None = Field(None, pattern=ID)
    query: str | None = Field(None, max_length=256)
    store_id: str | None = Field(None, pattern=ID)
    qty: int | None = Field(None, ge=1, le=v.MAX_COUNT)
    amount: float | None = Field(None, ge=0, le=1e12)
    ref: str | None = Field(None, max_length=128)


class BehaviourBatch(_Strict):
    uid: str = Field(pattern=ID)
    events: list[BehaviourEvent] = Field(min_length=1, max_length=MAX_EVENTS)


class WebhookCreate(_Strict):
    url: str = Field(max_length=MAX_URL_CHARS, description="absolute http or https URL")
    events: list[Literal[KINDS]] = Field(min_length=1)  # type: ignore[valid-type]


class Problem(BaseModel):
    type: str
    title: str
    status: int
    detail: str
    code: Literal[tuple(sorted(STATUS_OF_CODE))]  # type: ignore[valid-type]
    instance: str | None = None


BODIES: dict[str, type[BaseModel]] = {
    "put_stock": StockSet,
    "adjust_stock": StockAdjustment,
    "reserve": ReservationCreate,
    "add_line": LineAdd,
    "set_line": LineSet,
    "sync": SyncBatch,
    "post_events": BehaviourBatch,
    "register_webhook": WebhookCreate,
}
ANSWERS: dict[str, tuple[int, Any]] = {
    "put_stock": (200, StockView),
    "get_stock": (200, StockView),
    "adjust_stock": (200, StockView),
    "reserve": (201, ReservationView),
    "get_reservation": (200, ReservationView),
    "commit_reservation": (200, ReservationView),
    "release_reservation": (200, ReservationView),
    "get_cart": (200, CartView),
    "clear_cart": (200, CartView),
    "add_line": (200, CartView),
    "set_line": (200, CartView),
    "remove_line": (200, CartView),
    "healthz": (200, dict[str, str]),
    "readyz": (200, dict[str, Any]),
    "metrics": (200, str),
    "cluster": (200, dict[str, Any]),
    "audit": (200, dict[str, Any]),
    "sync": (200, SyncAnswer),
    "post_events": (202, dict[str, Any]),
    "timeline": (200, dict[str, Any]),
    "register_webhook": (201, dict[str, Any]),
    "list_webhooks": (200, dict[str, Any]),
    "delete_webhook": (200, dict[str, Any]),
    "dead_letters": (200, dict[str, Any]),
    "user_stream": (200, str),
    "sku_stream": (200, str),
}
# The problem codes each route can answer with, beyond the ones every route has.
REFUSALS: dict[str, tuple[str, ...]] = {
    "put_stock": ("insufficient_stock",),
    "get_stock": ("unknown_sku",),
    "adjust_stock": ("insufficient_stock", "unknown_sku"),
    "reserve": ("insufficient_stock", "unknown_sku"),
    "get_reservation": ("unknown_sku", "not_found"),
    "commit_reservation": ("reservation_closed", "unknown_sku", "not_found"),
    "release_reservation": ("reservation_closed", "unknown_sku", "not_found"),
    "add_line": ("insufficient_stock", "unknown_sku", "cart_full"),
    "set_line": ("insufficient_stock", "unknown_sku", "cart_full"),
    "delete_webhook": ("not_found",),
}
# Answers that are not JSON: the content type the route serves instead.
MEDIA_TYPES = {
    "metrics": "text/plain; version=0.0.4; charset=utf-8",
    "user_stream": "text/event-stream",
    "sku_stream": "text/event-stream",
}
# Streams check their id and their capacity before they start.
STREAM_REFUSALS = ("invalid_request", "overloaded", "unavailable")
WRITE_REFUSALS = (
    "unknown_channel",
    "version_conflict",
    "payload_too_large",
    "idempotency_key_reused",
)
COMMON_REFUSALS = ("invalid_request", "overloaded", "unavailable")


def _signature(route: Route) -> inspect.Signature:
    params = [
        inspect.Parameter(
            name[1:-1],
            inspect.Parameter.KEYWORD_ONLY,
            annotation=Annotated[str, Path(pattern=ID)],
        )
        for name in route.segments
        if name.startswith("{")
    ]
    if route.is_write:
        params += [
            inspect.Parameter(
                "x_channel",
                inspect.Parameter.KEYWORD_ONLY,
                annotation=Annotated[str, Header(description="the channel making the change")],
            ),
            inspect.Parameter(
                "idempotency_key",
                inspect.Parameter.KEYWORD_ONLY,
                default=None,
                annotation=Annotated[
                    str | None, Header(max_length=128, description="retry-safe key, 24 h")
                ],
            ),
            inspect.Parameter(
                "if_match",
                inspect.Parameter.KEYWORD_ONLY,
                default=None,
                annotation=Annotated[str | None, Header(description="expected entity version")],
            ),
        ]
    body = BODIES.get(route.name)
    if body is not None:
        params.append(
            inspect.Parameter(
                "body", inspect.Parameter.KEYWORD_ONLY, annotation=Annotated[body, Body()]
            )
        )
    return inspect.Signature(params)


def _responses(route: Route) -> dict[int | str, dict[str, Any]]:
    codes = list(REFUSALS.get(route.name, ()))
    if route.name in MEDIA_TYPES and route.name != "metrics":
        codes += STREAM_REFUSALS
    elif route.handler is not None:
        codes += COMMON_REFUSALS
        if route.is_write:
            codes += WRITE_REFUSALS
    by_status: dict[int, list[str]] = {}
    for code in codes:
        by_status.setdefault(STATUS_OF_CODE[code], []).append(code)
    if "invalid_request" in codes:
        by_status.setdefault(400, []).append("invalid_request")
    if route.name == "readyz":
        by_status[503] = ["unavailable"]
    return {
        status: {
            "model": Problem,
            "description": "problem document: " + ", ".join(sorted(set(names))),
        }
        for status, names in sorted(by_status.items())
    }


def _media_types(schema: dict[str, Any]) -> dict[str, Any]:
    """Errors are served as application/problem+json, Prometheus text and event
    streams as what they are, not application/json."""
    names = {(route.path, route.method.lower()): route.name for route in ROUTES}
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            media = MEDIA_TYPES.get(names.get((path, method), ""))
            for status, answer in operation["responses"].items():
                content = answer.get("content", {})
                if "application/json" not in content:
                    continue
                if status >= "400":
                    answer["content"] = {"application/problem+json": content["application/json"]}
                elif media is not None:
                    answer["content"] = {media: {"schema": {"type": "string"}}}
    return schema


def docs_app() -> FastAPI:
    app = FastAPI(
        title="omnigrid",
        version="1",
        description="The live state grid behind every retail channel (contract v1).",
    )
    for route in ROUTES:

        async def endpoint(**_: Any) -> None:  # documentation only: GridApp serves these
            return None

        endpoint.__signature__ = _signature(route)  # type: ignore[attr-defined]
        status, model = ANSWERS[route.name]
        app.add_api_route(
            route.path,
            endpoint,
            methods=[route.method],
            name=route.name,
            summary=route.summary,
            status_code=status,
            response_model=model,
            responses=_responses(route),
        )
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _media_types(build())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
