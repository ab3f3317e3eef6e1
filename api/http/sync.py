"""``POST /v1/sync``: a device's offline cart work, replayed exactly once.

The body is ``{"client_id", "ops": [...]}``; each op carries its own
``op_id``. Ops run in the order given, one after the other, each through the
same commands as the cart endpoints, with the idempotency key
``sync:<client_id>:<op_id>`` on the cart it changes. A batch sent again (the
device never saw the answer) therefore applies nothing twice: an op already
applied answers ``duplicate`` with the version it reached then.

Each op's result is one of:

- ``applied``: it ran (a no-op, such as removing an absent line, is applied too);
- ``duplicate``: this ``op_id`` was applied before (within 24 hours);
- ``conflict``: it is valid but the cart or the stock says no now. ``code`` is
  ``version_conflict`` (``base_version`` is not the cart's version),
  ``insufficient_stock``, ``unknown_sku`` or ``cart_full``; ``view`` is the
  cart as it is, so the device can show the shopper what changed;
- ``rejected``: the op itself is bad (``invalid_request``), or its ``op_id``
  was used before for a different op (``idempotency_key_reused``).

One op's conflict or rejection does not stop the ops after it: each is judged
on its own, against the cart as the ops before it left it. ``at`` (when the
shopper did it offline) is checked for its type and not used: ops apply in
the order sent, at the time they arrive.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from omnigrid.actors import cart
from omnigrid.actors.declaration import ID_RE, Grid, Id
from omnigrid.actors.errors import GridError, InvalidRequest
from omnigrid.actors.protocol import Command
from omnigrid.api.http import validation as v
from omnigrid.api.http.handlers import Call, fingerprint

MAX_OPS = 500
MAX_OP_ID_CHARS = 128
CONFLICTS = frozenset({"version_conflict", "insufficient_stock", "unknown_sku", "cart_full"})


# -- the document's shapes (api/http/openapi.py); the checks are below -------------------


class SyncOp(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One op: this class documents it and checks it (a bad op is rejected alone)."""

    op_id: Annotated[
        str, msgspec.Meta(min_length=1, max_length=MAX_OP_ID_CHARS, description="unique per op")
    ]
    op: Literal["cart.add", "cart.set", "cart.remove", "cart.clear"]
    uid: Id
    sku: Id | None = None
    qty: Annotated[int, msgspec.Meta(ge=0, le=cart.MAX_LINE_QTY)] | None = None
    base_version: (
        Annotated[int, msgspec.Meta(ge=0, description="the cart version the op was made on")] | None
    ) = None
    at: (
        Annotated[
            str | float,
            msgspec.Meta(description="when the shopper did it, offline; checked, not used"),
        ]
        | None
    ) = None


class SyncBatch(msgspec.Struct, kw_only=True):
    client_id: Id
    ops: Annotated[list[SyncOp], msgspec.Meta(min_length=1, max_length=MAX_OPS)]


class SyncResult(msgspec.Struct, kw_only=True):
    op_id: str | None
    status: Literal["applied", "duplicate", "conflict", "rejected"]
    code: str | None
    detail: str | None
    version: int | None = None
    view: (
        Annotated[dict[str, Any], msgspec.Meta(description="conflicts: the cart as it is now")]
        | None
    ) = None


class SyncAnswer(msgspec.Struct, kw_only=True):
    client_id: str
    results: list[SyncResult]


async def sync(grid: Grid, call: Call) -> tuple[int, Any]:
    body = v.json_object(call.body)
    v.fields(body, {"client_id", "ops"})
    client_id = body["client_id"]
    if not isinstance(client_id, str) or ID_RE.fullmatch(client_id) is None:
        raise InvalidRequest("client_id must be a string matching ^[A-Za-z0-9_.:-]{1,64}$")
    ops = body["ops"]
    if not isinstance(ops, list) or not 1 <= len(ops) <= MAX_OPS:
        raise InvalidRequest(f"ops must be a list of 1 to {MAX_OPS} operations")
    results = [await _run(grid, call.channel, client_id, op) for op in ops]
    return 200, {"client_id": client_id, "results": results}


async def _run(grid: Grid, channel: str, client_id: str, op: Any) -> dict[str, Any]:
    op_id = op.get("op_id") if isinstance(op, dict) else None
    out: dict[str, Any] = {"op_id": op_id, "status": "", "code": None, "detail": None}
    try:
        cmd = await _command(grid, channel, client_id, op)
    except GridError as err:
        return {**out, "status": "rejected", "code": err.code, "detail": err.detail}
    result = await grid.call(cmd)
    if result.ok:
        status = "duplicate" if result.replayed else "applied"
        return {**out, "status": status, "version": result.body["version"]}
    if result.code in CONFLICTS:
        current = await grid.call(Command("cart.get", cmd.key))
        view = current.body if current.ok else None
        return {
            **out,
            "status": "conflict",
            "code": result.code,
            "detail": result.detail,
            "version": view["version"] if view else None,
            "view": view,
        }
    if result.status in (429, 503):  # the grid, not the op: the device should retry it
        raise GridError(result.code or "unavailable", result.detail or "", result.status)
    return {**out, "status": "rejected", "code": result.code, "detail": result.detail}


async def _command(grid: Grid, channel: str, client_id: str, op: dict[str, Any]) -> Command:
    try:
        checked = msgspec.convert(op, SyncOp)
    except msgspec.ValidationError as e:
        raise InvalidRequest(str(e)) from None
    name = checked.op
    key = cart.KIND.key(checked.uid)
    base = checked.base_version
    # The op's sku and qty are checked by the cart op's own input class.
    given = {k: op[k] for k in ("sku", "qty") if op.get(k) is not None}
    declared = cart.KIND.ops_by_name[name]
    args: dict[str, Any] = {}
    if declared.input is None:
        if given:
            raise InvalidRequest(f"{name} takes no sku or qty")
    else:
        try:
            args = msgspec.structs.asdict(msgspec.convert(given, declared.input))
        except msgspec.ValidationError as e:
            raise InvalidRequest(f"{name}: {e}") from None
        if "available" in args:  # add, set: checked against the SKU's live availability
            sku = args["sku"]
            args["available"] = (await cart.availability(grid, [sku]))[sku] if args["qty"] else 0
    content = {k: op.get(k) for k in ("op", "uid", "sku", "qty", "base_version")}
    return Command(
        name,
        key,
        args,
        channel,
        f"sync:{client_id}:{op['op_id']}",
        fingerprint(name, key, content),
        base,
    )
