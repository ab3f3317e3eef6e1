"""What each endpoint of the contract does: validate, build commands, route.

Handlers are plain async functions over a ``Call`` (the request, already read
and checked for size, channel and headers) and answer ``(status, body)``;
refusals are raised as ``GridError``. They never build per-request models: a
body is a dict checked field by field (api/validation.py).
"""

from __future__ import annotations

import hashlib
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson

from omnigrid.actors.cart import MAX_LINE_QTY
from omnigrid.actors.errors import GridError, InvalidRequest
from omnigrid.actors.kinds import entity_key
from omnigrid.actors.protocol import Command, Result
from omnigrid.api import validation as v
from omnigrid.api.router import Router


@dataclass(slots=True)
class Call:
    params: dict[str, str]
    body: bytes
    channel: str
    idempotency_key: str | None
    if_match: int | None
    query: bytes = b""

    def query_int(self, name: str, default: int, low: int, high: int) -> int:
        """An integer query parameter (``?limit=50``), checked like a body field."""
        values = urllib.parse.parse_qs(self.query.decode("latin-1")).get(name)
        if not values:
            return default
        if not values[0].isdigit():
            raise InvalidRequest(f"{name} must be an integer")
        return v.integer({name: int(values[0])}, name, low, high)


Handler = Callable[[Router, Call], Awaitable[tuple[int, Any]]]


def fingerprint(op: str, key: str, body: dict[str, Any]) -> str:
    canonical = orjson.dumps([op, key, body], option=orjson.OPT_SORT_KEYS)
    return hashlib.blake2b(canonical, digest_size=16).hexdigest()


def _command(
    op: str, key: str, args: dict[str, Any], call: Call, fp_body: dict[str, Any]
) -> Command:
    return Command(
        op,
        key,
        args,
        call.channel,
        call.idempotency_key,
        fingerprint(op, key, fp_body) if call.idempotency_key is not None else None,
        call.if_match,
    )


def _answer(result: Result) -> tuple[int, Any]:
    if not result.ok:
        raise GridError(result.code or "invalid_request", result.detail or "", result.status)
    return result.status, result.body


def _sku_key(call: Call) -> str:
    return _stock_key(v.identifier(call.params["sku"], "sku"))


def _stock_key(sku: str) -> str:
    return entity_key("stock", sku)


def _cart_key(call: Call) -> str:
    return "cart:" + v.identifier(call.params["uid"], "uid")


# -- stock ------------------------------------------------------------------


async def put_stock(router: Router, call: Call) -> tuple[int, Any]:
    key = _sku_key(call)
    body = v.json_object(call.body)
    v.fields(body, {"on_hand"})
    args = {"on_hand": v.integer(body, "on_hand", 0, v.MAX_COUNT)}
    return _answer(await router.call(_command("stock.set", key, args, call, body)))


async def adjust_stock(router: Router, call: Call) -> tuple[int, Any]:
    key = _sku_key(call)
    body = v.json_object(call.body)
    v.fields(body, {"delta"}, {"reason"})
    delta = v.integer(body, "delta", -v.MAX_COUNT, v.MAX_COUNT)
    if delta == 0:
        raise InvalidRequest("delta must not be 0")
    v.text(body, "reason", v.MAX_REASON_CHARS)
    return _answer(await router.call(_command("stock.adjust", key, {"delta": delta}, call, body)))


async def get_stock(router: Router, call: Call) -> tuple[int, Any]:
    return _answer(await router.call(Command("stock.get", _sku_key(call))))


async def reserve(router: Router, call: Call) -> tuple[int, Any]:
    key = _sku_key(call)
    body = v.json_object(call.body)
    v.fields(body, {"qty"}, {"ttl_s", "ref"})
    args = {
        "qty": v.integer(body, "qty", 1, v.MAX_COUNT),
        "ttl_s": v.integer(body, "ttl_s", 1, v.MAX_TTL_S, default=v.DEFAULT_TTL_S),
        "ref": v.text(body, "ref", v.MAX_REF_CHARS),
    }
    return _answer(await router.call(_command("stock.reserve", key, args, call, body)))


async def _on_reservation(op: str, router: Router, call: Call) -> tuple[int, Any]:
    key = _sku_key(call)
    rid = v.identifier(call.params["rid"], "reservation_id")
    if call.body.strip() and v.json_object(call.body):
        raise InvalidRequest("this request takes no body")
    args = {"reservation_id": rid}
    return _answer(await router.call(_command(op, key, args, call, args)))


async def commit_reservation(router: Router, call: Call) -> tuple[int, Any]:
    return await _on_reservation("stock.commit", router, call)


async def release_reservation(router: Router, call: Call) -> tuple[int, Any]:
    return await _on_reservation("stock.release", router, call)


async def get_reservation(router: Router, call: Call) -> tuple[int, Any]:
    key = _sku_key(call)
    rid = v.identifier(call.params["rid"], "reservation_id")
    return _answer(await router.call(Command("stock.reservation", key, {"reservation_id": rid})))


# -- cart --------------------------------------------------------------------


async def availability(router: Router, skus: list[str]) -> dict[str, int | None]:
    """Live availability of many SKUs (``None``: never stocked), one query per owner."""
    keys = {_stock_key(sku): sku for sku in skus}
    answers = await router.query("stock.available", list(keys))
    return {sku: answers[key] for key, sku in keys.items()}


async def _live_view(router: Router, status: int, view: dict[str, Any]) -> tuple[int, Any]:
    """The cart view with each line's live availability (one read per owner shard)."""
    lines = view["lines"]
    available = await availability(router, [line["sku"] for line in lines]) if lines else {}
    out = dict(view)
    out["lines"] = [
        {**line, "available": a, "in_stock": a > 0}
        for line in lines
        for a in (available.get(line["sku"]) or 0,)
    ]
    return status, out


async def get_cart(router: Router, call: Call) -> tuple[int, Any]:
    return await _live_view(
        router, *_answer(await router.call(Command("cart.get", _cart_key(call))))
    )


async def add_line(router: Router, call: Call) -> tuple[int, Any]:
    key = _cart_key(call)
    body = v.json_object(call.body)
    v.fields(body, {"sku", "qty"})
    sku = v.sku_field(body)
    qty = v.integer(body, "qty", 1, MAX_LINE_QTY)
    available = (await availability(router, [sku]))[sku]
    args = {"sku": sku, "qty": qty, "available": available}
    result = await router.call(_command("cart.add", key, args, call, body))
    return await _live_view(router, *_answer(result))


async def set_line(router: Router, call: Call) -> tuple[int, Any]:
    key = _cart_key(call)
    sku = v.identifier(call.params["sku"], "sku")
    body = v.json_object(call.body)
    v.fields(body, {"qty"})
    qty = v.integer(body, "qty", 0, MAX_LINE_QTY)
    available = (await availability(router, [sku]))[sku] if qty else 0
    args = {"sku": sku, "qty": qty, "available": available}
    result = await router.call(_command("cart.set", key, args, call, {"sku": sku, **body}))
    return await _live_view(router, *_answer(result))


async def remove_line(router: Router, call: Call) -> tuple[int, Any]:
    key = _cart_key(call)
    args = {"sku": v.identifier(call.params["sku"], "sku")}
    result = await router.call(_command("cart.remove", key, args, call, args))
    return await _live_view(router, *_answer(result))


async def clear_cart(router: Router, call: Call) -> tuple[int, Any]:
    result = await router.call(_command("cart.clear", _cart_key(call), {}, call, {}))
    return await _live_view(router, *_answer(result))
