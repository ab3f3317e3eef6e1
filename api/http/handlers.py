"""Handlers: what an endpoint does with a request, already read and checked.

Handlers are plain async functions over a ``Call`` (the request, already read
and checked for size, channel and headers) and answer ``(status, body)``;
refusals are raised as ``GridError``. An entity kind's routes all share one
handler shape (``route_handler``): the body and path become the command's
typed input, checked by the same msgspec class that documents it.
"""

from __future__ import annotations

import functools
import hashlib
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

import msgspec
import orjson

from omnigrid.actors.declaration import Grid, Input, Kind, Op
from omnigrid.actors.declaration import Route as KindRoute
from omnigrid.actors.errors import InvalidRequest
from omnigrid.actors.protocol import Command
from omnigrid.api.http import validation as v


@dataclass(slots=True)
class Call:
    params: dict[str, str]
    body: bytes
    channel: str
    idempotency_key: str | None
    if_match: int | None
    query: bytes = b""
    clerk: str | None = None  # X-Clerk: a pos clerk acting for the shopper
    channels: frozenset[str] = frozenset()  # the registry (empty: not checked)

    def query_value(self, name: str) -> str | None:
        """A query parameter as sent (the first, if repeated)."""
        if not self.query:
            return None
        values = urllib.parse.parse_qs(self.query.decode("latin-1")).get(name)
        return values[0] if values else None

    def query_int(self, name: str, default: int, low: int, high: int) -> int:
        """An integer query parameter (``?limit=50``), checked like a body field."""
        value = self.query_value(name)
        if value is None:
            return default
        if not value.isdigit():
            raise InvalidRequest(f"{name} must be an integer")
        return v.integer({name: int(value)}, name, low, high)


Handler = Callable[[Grid, Call], Awaitable[tuple[int, Any]]]


def fingerprint(op: str, key: str, body: dict[str, Any]) -> str:
    canonical = orjson.dumps([op, key, body], option=orjson.OPT_SORT_KEYS)
    return hashlib.blake2b(canonical, digest_size=16).hexdigest()


@functools.cache
def _body_of(input_type: type[Input], excluded: frozenset[str]) -> type[Input]:
    if not excluded:
        return input_type
    fields = [
        (f.name, f.type) if f.required else (f.name, f.type, f.default)
        for f in msgspec.structs.fields(input_type)
        if f.name not in excluded
    ]
    body = msgspec.defstruct(
        input_type.__name__, fields, bases=(Input,), module=input_type.__module__
    )
    return cast(type[Input], body)


def body_type(op: Op, route: KindRoute) -> type[Input] | None:
    """The body a route takes, for the document: the op's input without its path
    fields and decisions (the input class itself checks bodies)."""
    if op.input is None:
        return None
    excluded = frozenset(route.path_fields.values()) | op.decided
    if not {f.name for f in msgspec.structs.fields(op.input)} - excluded:
        return None  # everything comes from the path: the route takes no body
    return _body_of(op.input, excluded)


def _query_args(call: Call, names: tuple[str, ...]) -> dict[str, Any]:
    """The route's query parameters; digits become integers (the input checks the rest)."""
    args: dict[str, Any] = {}
    for name in names:
        raw = call.query_value(name)
        if raw is not None:
            args[name] = int(raw) if raw.isdigit() and len(raw) <= 18 else raw
    return args


# input fields that name channels: a coupon's, a channel's price, the channel read for
CHANNEL_FIELDS = ("channel", "channels", "channel_prices")


def _registered(args: dict[str, Any], channels: frozenset[str]) -> None:
    """Every channel an input names is in the registry (a typo would else be kept for
    good: a price or a coupon for a channel that never shops)."""
    named: set[str] = set()
    for field in CHANNEL_FIELDS:
        value = args.get(field)
        if isinstance(value, str):
            named.add(value)
        elif isinstance(value, list | dict):
            named.update(str(name) for name in value)
    unknown = sorted(named - channels)
    if unknown:
        raise InvalidRequest(
            f"no channel {', '.join(unknown)} is registered: " + ", ".join(sorted(channels))
        )


def route_handler(kind: Kind, route: KindRoute) -> Handler:
    """The handler of a kind's route: read the path and body into the command's
    typed input, then run the route's flow (one owner call unless it says more)."""
    op = kind.ops_by_name[route.op]
    # What the client may not send in the body: path fields and the grid's decisions.
    not_in_body = set(route.path_fields.values()) | op.decided

    async def handle(grid: Grid, call: Call) -> tuple[int, Any]:
        ident = call.params.get(kind.ident)  # none: the route's flow finds its entities
        key = kind.key(v.identifier(ident, kind.ident)) if ident is not None else ""
        from_path = {
            name: call.params[param]
            if name in route.loose_path
            else v.identifier(call.params[param], name)
            for param, name in route.path_fields.items()
        }
        body = v.json_object(call.body) if route.is_write else {}
        args = {**body, **from_path, **_query_args(call, route.query_fields)}
        if call.clerk is not None and "clerk" in op.decided:  # else the route has no use for it
            args["clerk"] = call.clerk
        if op.input is None:
            if body:
                raise InvalidRequest("this request takes no body")
        else:
            if not_in_body & body.keys():
                raise InvalidRequest(
                    f"unknown field(s): {', '.join(sorted(not_in_body & body.keys()))}"
                )
            try:
                args = msgspec.to_builtins(msgspec.convert(args, op.input))
            except msgspec.ValidationError as e:
                raise InvalidRequest(str(e)) from None
            if call.channels:
                _registered(args, call.channels)
        if op.read:  # the channel, if any, for what depends on it (a channel's price)
            cmd = Command(op.name, key, args, call.channel)
        else:
            # The fingerprint is of what the client said (the body as sent and the
            # path's fields), so a retry matches whatever defaults fill in later.
            fp = fingerprint(op.name, key, {**from_path, **body}) if call.idempotency_key else None
            cmd = Command(op.name, key, args, call.channel, call.idempotency_key, fp, call.if_match)
        return await route.flow(grid, cmd)

    return handle
