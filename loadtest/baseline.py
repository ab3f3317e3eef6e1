"""The service a team would build without omnigrid: FastAPI in front of one Redis.

It implements the benchmarked subset of shared/API.md with the same paths, status
codes and fields: stock (PUT/GET), reservations (POST), carts (GET, POST lines),
and of shared/API-v2.md: products (PUT/GET), checkouts (POST with lines given),
orders (GET, POST pay). Every check-and-change is one Lua script, so it is atomic in
Redis; the cart view (lines plus live availability) is read by one script as well.

A checkout reads each line's price, checks every SKU's availability and reserves all
lines or none, and writes the order (pending, pay_by = now + 15 minutes); paying
commits every line's reservation, marks the order paid, adds points (1 per 100 minor
units) and spend to the member hash and removes the bought SKUs from the uid's cart.

Not implemented (the benchmark does not use them): Idempotency-Key, If-Match,
commit/release, the other cart writes, SSE; checkouts of the cart (lines are
required), coupons, points redemption, tiers, order transitions, refunds, order
events. Expired reservations and unpaid orders give their quantity back lazily, on
the next stock write or stock read (or checkout) of that SKU; an unpaid order shows
as expired once past pay_by.

Run:   python -m uvicorn loadtest.baseline:app --workers 2 --http httptools \
           --loop uvloop --no-access-log --port 8001        (from the repo root)
Flush: python -m loadtest.baseline flush      (deletes only keys under the prefix)

Environment: BASELINE_REDIS_URL (default redis://127.0.0.1:6379/0),
BASELINE_KEY_PREFIX (default "bl:").
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, cast

import orjson
import redis.asyncio as aioredis
from fastapi import Depends, FastAPI, Header, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from loadtest.baseline_lua import (
    CART_ADD,
    CART_GET,
    CHECKOUT,
    PAY,
    RESERVE,
    STOCK_GET,
    STOCK_SET,
)

REDIS_URL = os.environ.get("BASELINE_REDIS_URL", "redis://127.0.0.1:6379/0")
PREFIX = os.environ.get("BASELINE_KEY_PREFIX", "bl:")
CHANNELS = frozenset(("miniprogram", "app", "h5", "wechat_oa", "pos", "web", "alipay", "kiosk"))
ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,64}$"
MAX_LINES = 200
MAX_LINE_QTY = 9999
MAX_PRICE = 10**12
CURRENCY = "CNY"
PAY_WINDOW_MS = 15 * 60 * 1000


def _lua(src: str) -> str:
    return (
        src.replace("@P@", PREFIX)
        .replace("@MAXQ@", str(MAX_LINE_QTY))
        .replace("@MAXL@", str(MAX_LINES))
    )


# --- models ----------------------------------------------------------------------


class StockIn(BaseModel):
    on_hand: int = Field(ge=0)


class ReservationIn(BaseModel):
    qty: int = Field(ge=1)
    ttl_s: int = Field(default=900, ge=1, le=3600)
    ref: str | None = Field(default=None, max_length=256)


class CartLineIn(BaseModel):
    sku: str = Field(pattern=ID_PATTERN)
    qty: int = Field(ge=1, le=MAX_LINE_QTY)


class ProductIn(BaseModel):
    title: str = Field(min_length=1, max_length=200)
    price: int = Field(ge=0, le=MAX_PRICE)
    category: str | None = Field(default=None, max_length=64)


class CheckoutLineIn(BaseModel):
    sku: str = Field(pattern=ID_PATTERN)
    qty: int = Field(ge=1, le=MAX_LINE_QTY)


class CheckoutIn(BaseModel):
    uid: str = Field(pattern=ID_PATTERN)
    lines: list[CheckoutLineIn] = Field(min_length=1, max_length=MAX_LINES)
    fulfilment: Literal["delivery", "pickup"]


class PayIn(BaseModel):
    payment_ref: str = Field(min_length=1, max_length=256)


class StockView(BaseModel):
    sku: str
    on_hand: int
    reserved: int
    available: int
    version: int


class ReservationView(BaseModel):
    reservation_id: str
    sku: str
    qty: int
    status: str
    expires_at: str
    ref: str | None


class CartLineView(BaseModel):
    sku: str
    qty: int
    added_via: str
    updated_via: str
    updated_at: str | None
    available: int
    in_stock: bool


class CartView(BaseModel):
    uid: str
    version: int
    updated_at: str | None
    lines: list[CartLineView]


class ProductView(BaseModel):
    sku: str
    title: str
    price: int
    currency: str
    channel_prices: dict[str, int]
    effective_price: int
    category: str | None
    details: dict[str, Any]
    version: int
    updated_at: str | None


class OrderLineView(BaseModel):
    sku: str
    qty: int
    unit_price: int
    discount: int
    total: int
    refunded_qty: int


class OrderView(BaseModel):
    order_id: str
    uid: str
    status: str
    channel: str
    fulfilment: str
    lines: list[OrderLineView]
    subtotal: int
    discount: int
    points_redeemed: int
    points_earned: int
    total: int
    currency: str
    pay_by: str | None
    payment_ref: str | None
    version: int


# --- errors ----------------------------------------------------------------------


class ProblemError(Exception):
    def __init__(
        self, status: int, code: str, title: str, detail: str, extra: dict[str, Any] | None = None
    ) -> None:
        super().__init__(detail)
        self.status, self.code, self.title, self.detail = status, code, title, detail
        self.extra = extra or {}


def problem(
    status: int, code: str, title: str, detail: str, extra: dict[str, Any] | None = None
) -> JSONResponse:
    body = {
        "type": f"https://omnigrid.dev/problems/{code}",
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
        **(extra or {}),
    }
    return JSONResponse(body, status_code=status, media_type="application/problem+json")


# --- app -------------------------------------------------------------------------


class Scripts:
    def __init__(self, r: aioredis.Redis) -> None:
        self.stock_set = r.register_script(_lua(STOCK_SET))
        self.stock_get = r.register_script(_lua(STOCK_GET))
        self.reserve = r.register_script(_lua(RESERVE))
        self.cart_get = r.register_script(_lua(CART_GET))
        self.cart_add = r.register_script(_lua(CART_ADD))
        self.checkout = r.register_script(_lua(CHECKOUT))
        self.pay = r.register_script(_lua(PAY))


class State:
    redis: aioredis.Redis
    scripts: Scripts


state = State()


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    state.redis = aioredis.Redis.from_url(REDIS_URL, decode_responses=True)
    state.scripts = Scripts(state.redis)
    try:
        yield
    finally:
        await state.redis.aclose()


app = FastAPI(title="baseline (FastAPI + Redis)", lifespan=lifespan)


@app.exception_handler(ProblemError)
async def _problem_handler(_: Request, exc: ProblemError) -> JSONResponse:
    return problem(exc.status, exc.code, exc.title, exc.detail, exc.extra)


@app.exception_handler(RequestValidationError)
async def _invalid_handler(_: Request, exc: RequestValidationError) -> JSONResponse:
    errors = "; ".join(
        f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}" for e in exc.errors()
    )
    return problem(422, "invalid_request", "Invalid request", errors[:500])


@app.exception_handler(StarletteHTTPException)
async def _http_handler(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    code = "not_found" if exc.status_code == 404 else "invalid_request"
    return problem(exc.status_code, code, str(exc.detail), str(exc.detail))


def require_channel(x_channel: Annotated[str | None, Header()] = None) -> str:
    if x_channel not in CHANNELS:
        raise ProblemError(400, "unknown_channel", "Unknown channel", f"X-Channel {x_channel!r}")
    return x_channel


Sku = Annotated[str, Path(pattern=ID_PATTERN)]
Uid = Annotated[str, Path(pattern=ID_PATTERN)]
OrderId = Annotated[str, Path(pattern=ID_PATTERN)]
Channel = Annotated[str, Depends(require_channel)]


def _now_ms() -> int:
    return int(time.time() * 1000)


def _iso(ms: int | str) -> str | None:
    if ms in ("", None):
        return None
    return datetime.fromtimestamp(int(ms) / 1000, tz=UTC).isoformat(timespec="milliseconds")


def _unknown_sku(sku: str) -> ProblemError:
    return ProblemError(404, "unknown_sku", "Unknown SKU", f"SKU {sku} was never stocked")


def _insufficient(sku: str, available: int) -> ProblemError:
    return ProblemError(
        409, "insufficient_stock", "Insufficient stock", f"SKU {sku}: {available} available"
    )


def _stock_keys(sku: str) -> list[str]:
    return [f"{PREFIX}stock:{sku}", f"{PREFIX}rexp:{sku}"]


def _cart_view(uid: str, raw: list[Any]) -> CartView:
    lines = []
    for i in range(2, len(raw), 4):
        added, updated, at = [*str(raw[i + 2]).split("|"), "", "", ""][:3]
        available = max(int(raw[i + 3]), 0)
        lines.append(
            CartLineView(
                sku=raw[i],
                qty=int(raw[i + 1]),
                added_via=added,
                updated_via=updated,
                updated_at=_iso(at),
                available=available,
                in_stock=available > 0,
            )
        )
    lines.sort(key=lambda line: line.sku)
    return CartView(uid=uid, version=int(raw[0]), updated_at=_iso(raw[1]), lines=lines)


def _product_view(sku: str, h: dict[str, str]) -> ProductView:
    price = int(h["price"])
    return ProductView(
        sku=sku,
        title=h.get("title", ""),
        price=price,
        currency=CURRENCY,
        channel_prices={},
        effective_price=price,
        category=h.get("category") or None,
        details={},
        version=int(h.get("version", 0)),
        updated_at=_iso(h.get("updated_at", "")),
    )


def _order_view(order_id: str, raw: list[Any] | dict[str, str], now_ms: int) -> OrderView:
    h = raw if isinstance(raw, dict) else dict(zip(raw[::2], raw[1::2], strict=True))
    status = h["status"]
    if status == "pending" and now_ms >= int(h["pay_by"]):
        status = "expired"  # its stock went back when pay_by passed (lazily, see purge)
    lines = [
        OrderLineView(refunded_qty=0, **line) for line in orjson.loads(h["lines"])
    ]  # fmt: skip
    return OrderView(
        order_id=order_id,
        uid=h["uid"],
        status=status,
        channel=h["channel"],
        fulfilment=h["fulfilment"],
        lines=lines,
        subtotal=int(h["subtotal"]),
        discount=int(h["discount"]),
        points_redeemed=0,
        points_earned=int(h.get("points_earned", 0)),
        total=int(h["total"]),
        currency=CURRENCY,
        pay_by=_iso(h["pay_by"]),
        payment_ref=h.get("payment_ref"),
        version=int(h["version"]),
    )


def _order_key(order_id: str) -> str:
    return f"{PREFIX}order:{order_id}"


def _unknown_order(order_id: str) -> ProblemError:
    return ProblemError(404, "not_found", "Not found", f"order {order_id} does not exist")


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/readyz")
async def readyz() -> JSONResponse:
    try:
        await state.redis.ping()
    except Exception:  # any Redis failure means "not ready"
        return problem(503, "unavailable", "Unavailable", "redis does not answer")
    return JSONResponse({"status": "ready"})


@app.put("/v1/skus/{sku}/stock")
async def put_stock(sku: Sku, body: StockIn, channel: Channel) -> StockView:
    res = await state.scripts.stock_set(keys=_stock_keys(sku), args=[body.on_hand, _now_ms()])
    if res[0] == -1:
        raise ProblemError(
            409, "insufficient_stock", "Insufficient stock", f"{res[1]} reserved for {sku}"
        )
    _, on_hand, reserved, version = (int(x) for x in res)
    return StockView(
        sku=sku, on_hand=on_hand, reserved=reserved, available=on_hand - reserved, version=version
    )


@app.get("/v1/skus/{sku}/stock")
async def get_stock(sku: Sku) -> StockView:
    res = await state.scripts.stock_get(keys=_stock_keys(sku), args=[_now_ms()])
    if res[0] == -2:
        raise _unknown_sku(sku)
    _, on_hand, reserved, version = (int(x) for x in res)
    available = max(on_hand - reserved, 0)
    return StockView(
        sku=sku, on_hand=on_hand, reserved=reserved, available=available, version=version
    )


@app.post("/v1/skus/{sku}/reservations", status_code=201)
async def reserve(sku: Sku, body: ReservationIn, channel: Channel) -> ReservationView:
    rid = secrets.token_hex(12)
    keys = [*_stock_keys(sku), f"{PREFIX}res:{rid}"]
    args: list[str | int] = [body.qty, body.ttl_s * 1000, _now_ms(), rid, sku, body.ref or ""]
    res = await state.scripts.reserve(keys=keys, args=args)
    if res[0] == -2:
        raise _unknown_sku(sku)
    if res[0] == -1:
        raise _insufficient(sku, int(res[1]))
    return ReservationView(
        reservation_id=rid,
        sku=sku,
        qty=body.qty,
        status="held",
        expires_at=_iso(int(res[1])) or "",
        ref=body.ref,
    )


@app.get("/v1/carts/{uid}")
async def get_cart(uid: Uid) -> CartView:
    raw = await state.scripts.cart_get(keys=[f"{PREFIX}cart:{uid}"])
    return _cart_view(uid, raw)


@app.post("/v1/carts/{uid}/lines")
async def add_line(uid: Uid, body: CartLineIn, channel: Channel) -> CartView:
    keys = [f"{PREFIX}cart:{uid}", f"{PREFIX}stock:{body.sku}"]
    res = await state.scripts.cart_add(keys=keys, args=[body.sku, body.qty, channel, _now_ms()])
    code = int(res[0])
    if code == -2:
        raise _unknown_sku(body.sku)
    if code == -1:
        raise _insufficient(body.sku, int(res[1]))
    if code == -3:
        raise ProblemError(422, "invalid_request", "Invalid request", "line qty over 9999")
    if code == -4:
        raise ProblemError(409, "cart_full", "Cart full", f"a cart holds {MAX_LINES} lines")
    return _cart_view(uid, res[1])


@app.put("/v1/products/{sku}")
async def put_product(sku: Sku, body: ProductIn, channel: Channel) -> ProductView:
    key = f"{PREFIX}product:{sku}"
    async with state.redis.pipeline(transaction=True) as pipe:
        pipe.hset(
            key,
            mapping={
                "title": body.title,
                "price": body.price,
                "category": body.category or "",
                "updated_at": _now_ms(),
            },
        )
        pipe.hincrby(key, "version", 1)
        pipe.hgetall(key)
        *_, h = await pipe.execute()
    return _product_view(sku, h)


@app.get("/v1/products/{sku}")
async def get_product(sku: Sku) -> ProductView:
    h = cast(dict[str, str], await state.redis.hgetall(f"{PREFIX}product:{sku}"))
    if not h:
        raise ProblemError(404, "unknown_product", "Unknown product", f"no product {sku}")
    return _product_view(sku, h)


@app.post("/v1/checkouts", status_code=201)
async def checkout(body: CheckoutIn, channel: Channel) -> OrderView:
    qty: dict[str, int] = {}
    for line in body.lines:  # the same SKU twice is one line
        qty[line.sku] = qty.get(line.sku, 0) + line.qty
    order_id = secrets.token_hex(12)
    now = _now_ms()
    keys = [_order_key(order_id)]
    args: list[str | int] = [now, now + PAY_WINDOW_MS, order_id, body.uid, channel, body.fulfilment]
    for sku, q in qty.items():
        keys += [*_stock_keys(sku), f"{PREFIX}product:{sku}"]
        args += [sku, q]
    res = await state.scripts.checkout(keys=keys, args=args)
    code = int(res[0])
    if code == -2:
        raise ProblemError(404, "unknown_product", "Unknown product", f"no product {res[1]}")
    if code == -1:
        short = orjson.loads(res[1])
        detail = ", ".join(f"{x['sku']}: {x['available']} available" for x in short)
        raise ProblemError(
            409, "insufficient_stock", "Insufficient stock", detail, {"lines": short}
        )
    return _order_view(order_id, res[1], now)


@app.post("/v1/orders/{order_id}/pay")
async def pay(order_id: OrderId, body: PayIn, channel: Channel) -> OrderView:
    now = _now_ms()
    res = await state.scripts.pay(
        keys=[_order_key(order_id)], args=[now, body.payment_ref, channel]
    )
    code = int(res[0])
    if code == -2:
        raise _unknown_order(order_id)
    if code == -3:
        raise ProblemError(
            409, "invalid_transition", "Invalid transition", f"order is {res[1]}, not pending"
        )
    if code == -4:
        raise ProblemError(
            409, "order_expired", "Order expired", f"order {order_id} was not paid by its pay_by"
        )
    return _order_view(order_id, res[1], now)


@app.get("/v1/orders/{order_id}")
async def get_order(order_id: OrderId) -> OrderView:
    h = cast(dict[str, str], await state.redis.hgetall(_order_key(order_id)))
    if not h:
        raise _unknown_order(order_id)
    return _order_view(order_id, h, _now_ms())


# --- maintenance -----------------------------------------------------------------


async def flush(url: str = REDIS_URL, prefix: str = PREFIX) -> int:
    """Delete every key under ``prefix`` (never FLUSHDB); returns how many."""
    if not prefix:
        raise ValueError("refusing to flush with an empty prefix")
    r = aioredis.Redis.from_url(url)
    deleted = 0
    try:
        batch: list[bytes] = []
        async for key in r.scan_iter(match=f"{prefix}*", count=2000):
            batch.append(key)
            if len(batch) >= 2000:
                deleted += int(await r.unlink(*batch))
                batch.clear()
        if batch:
            deleted += int(await r.unlink(*batch))
    finally:
        await r.aclose()
    return deleted


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="baseline service maintenance")
    sub = parser.add_subparsers(dest="cmd", required=True)
    fl = sub.add_parser("flush", help="delete the baseline's keys (prefix only)")
    fl.add_argument("--redis-url", default=REDIS_URL)
    fl.add_argument("--prefix", default=PREFIX)
    args = parser.parse_args(argv)
    if args.cmd == "flush":
        n = asyncio.run(flush(args.redis_url, args.prefix))
        print(f"deleted {n} keys under {args.prefix!r}")


if __name__ == "__main__":
    main()
