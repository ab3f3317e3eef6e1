"""Checkout, payment, cancellation and refunds across shards: the order kind's flows.

A checkout reads what it needs first (the cart's lines when none are given, the
products' prices, the member's tier), then creates the order (``reserving``)
and places every hold at once: one reservation per line (its id decided by the
order, so a hold sent twice is one hold), each coupon, then the points. All
placed: the order is ``pending``. One refused: the order is ``refused`` and
every hold it may have placed is given back (a hold given back before it
arrived is refused when it does, so a straggler cannot hold anything). No lock
is held anywhere; a crash leaves an order ``reserving`` that its owner refuses
after a while (actors/order.py), or an outbox its owner sends.

Every later move (pay, cancel, transitions, refunds, expiry) is one decision on
the order, then its outbox sent (``send``), before the answer.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import time
from typing import Any

from omnigrid.actors import cart, coupon, pricing, product, stock, tiers
from omnigrid.actors import order_inputs as oi
from omnigrid.actors.declaration import Grid, Kind, Op, Route, answer
from omnigrid.actors.errors import CODES, GridError, InvalidRequest, Unavailable
from omnigrid.actors.member import STANDING
from omnigrid.actors.member_orders import INSUFFICIENT_POINTS
from omnigrid.actors.order import NOTE, Order
from omnigrid.actors.order_lists import ORDER_VIEW
from omnigrid.actors.protocol import Command, Result

log = logging.getLogger(__name__)

CART_LINES = "cart.lines"
LOCAL_TRIES = 32  # random order ids tried for one this process owns
PRODUCT_INFO = "product.info"


def order_key(order_id: str) -> str:
    return f"order:{order_id}"


async def _saga(grid: Grid, order_id: str, channel: str = "system") -> dict[str, Any]:
    saga: dict[str, Any] = answer(
        await grid.call(Command("order.saga", order_key(order_id), {}, channel))
    )[1]
    return saga


def _transient(result: Result | BaseException) -> bool:
    return isinstance(result, BaseException) or result.status >= 500 or result.status == 429


async def send(
    grid: Grid, order_id: str, saga: dict[str, Any], record_notes: bool = False
) -> dict[str, Any]:
    """Send the order's outbox, at once (each entry applies once however often it is
    sent), and record it sent; again while decisions leave more. An outbox of notes
    only is not recorded sent unless asked (``record_notes``): the order's next move
    supersedes them, or its owner records them a while later."""
    while saga["outbox"]:
        base, entries, view = saga["sent_upto"], saga["outbox"], saga["view"]
        calls = [_entry(order_id, base + i, entry, view) for i, entry in enumerate(entries)]
        flat = [cmd for cmds in calls for cmd in cmds]
        results = await asyncio.gather(*(grid.call(c) for c in flat), return_exceptions=True)
        if any(_transient(r) for r in results):
            raise Unavailable(f"order {order_id}: some of its work could not be sent yet")
        problems = [
            f"{c.op} {c.key}: {r.code} {r.detail}"
            for c, r in zip(flat, results, strict=True)
            if isinstance(r, Result) and not r.ok
        ]
        for problem in problems:
            log.warning("order %s: a step was refused: %s", order_id, problem)
        if not record_notes and not problems and all(e[0] == NOTE for e in entries):
            return saga
        sent = {"upto": base + len(entries), "problems": problems}
        saga = answer(await grid.call(Command("order.sent", order_key(order_id), sent, "system")))[
            1
        ]
    return saga


def _entry(order_id: str, number: int, entry: list[Any], view: dict[str, Any]) -> list[Command]:
    op, key, args, keyed, channel = entry
    if op == NOTE:  # the order's lists, with its view as it is now
        if view["status"] is None:
            return []
        note = {"order_id": order_id, "order": view}
        stores = dict.fromkeys(s for s in (view["store"], view["pickup_store"]) if s)
        return [Command("user_orders.note", f"user_orders:{view['uid']}", note, channel)] + [
            Command("store_orders.note", f"store_orders:{s}", note, channel) for s in stores
        ]
    idem = f"{order_id}:{number}" if keyed else None
    return [Command(op, key, args, channel, idem, "" if keyed else None)]


async def resume(grid: Grid, order_id: str) -> dict[str, Any]:
    """What the order's owner runs when its work is due: send what is owed."""
    return await send(grid, order_id, await _saga(grid, order_id), record_notes=True)


# -- checkout -----------------------------------------------------------------------


def _order_id(grid: Grid, cmd: Command) -> str:
    """A retry with the same Idempotency-Key (same channel, same uid) finds the same order.

    Without a key, an id this process owns: the order's own commands (its begin,
    pricing, payment, bookkeeping) then run here, with no hop to another process."""
    if cmd.idempotency_key is None:
        for _ in range(LOCAL_TRIES):
            order_id = "o" + secrets.token_hex(10)
            if grid.is_local(order_key(order_id)):
                break
        return order_id
    seed = "\0".join((cmd.channel, cmd.args["uid"], cmd.idempotency_key))
    return "o" + hashlib.blake2b(seed.encode(), digest_size=10).hexdigest()


def _asks(uid: str, skus: list[str], codes: list[str]) -> dict[str, str]:
    asks = {f"product:{sku}": PRODUCT_INFO for sku in skus}
    asks |= {stock.KIND.key(sku): stock.AVAILABLE for sku in skus}
    return asks | {coupon.KIND.key(code): coupon.USAGE + uid for code in codes}


async def _plan(grid: Grid, cmd: Command) -> dict[str, Any]:
    """The order's plan: its lines priced for the channel and the member's tier.

    One query round when the lines are given (the member, the cart, the products,
    their stock and the coupons, one command per owner shard), two for the cart's."""
    args, channel = cmd.args, cmd.channel
    uid = args["uid"]
    given = [[ln["sku"], ln["qty"]] for ln in args["lines"]] if args.get("lines") else None
    for _ in range(3):  # a merged user's order is its survivor's
        asks = {f"member:{uid}": STANDING, f"cart:{uid}": CART_LINES}
        if given is not None:
            asks |= _asks(uid, [sku for sku, _ in given], args["coupon_codes"])
        info = await grid.query(asks)
        standing = info[f"member:{uid}"] or [0, 0, None]
        if standing[2] is None:
            break
        uid = standing[2]
    in_cart = info[f"cart:{uid}"] or []
    lines = given if given is not None else in_cart
    if not lines:
        raise InvalidRequest(f"the cart of {uid} is empty and no lines were given")
    skus = [sku for sku, _ in lines]
    if given is None:
        info |= await grid.query(_asks(uid, skus, args["coupon_codes"]))
    unknown = [sku for sku in skus if info[f"product:{sku}"] is None]
    if unknown:
        raise GridError(
            "unknown_product", f"no product for {', '.join(unknown)}", extra={"skus": unknown}
        )
    # Refused before any hold when it plainly cannot be had; a race is caught by the holds.
    available = {sku: max(0, info[stock.KIND.key(sku)] or 0) for sku in skus}
    short = [[sku, qty] for sku, qty in lines if qty > available[sku]]
    if short:
        raise _short(short, available)
    spend, balance, _ = standing
    if args["points"] > balance:
        raise INSUFFICIENT_POINTS(f"the order redeems {args['points']}, the balance is {balance}")
    tier = tiers.tier_for(spend)
    rows = []
    for sku, qty in lines:
        price, by_channel, category = info[f"product:{sku}"]
        rows.append([sku, qty, product.channel_price(price, by_channel, channel), category])
    grosses = [price * qty for _, qty, price, _ in rows]
    offs = pricing.tier_discounts(grosses, pricing.discount_pct(tier, channel))
    seen = [
        [sku, category, gross - off]
        for (sku, _, _, category), gross, off in zip(rows, grosses, offs, strict=True)
    ]
    for code in args["coupon_codes"]:  # refused before any hold when it plainly cannot apply
        usage = info[coupon.KIND.key(code)]
        if usage is None:
            raise coupon.COUPON_INVALID(f"no coupon {code!r}")
        terms, view, mine = usage
        taken = view["redemptions"] + view["held"]
        coupon.discount_on(code, coupon.Terms(*terms), seen, uid, channel, time.time(), taken, mine)
    points = args["points"]
    if points * pricing.POINT_VALUE > sum(grosses) - sum(offs):
        raise InvalidRequest(f"{points} points are worth more than the order")
    own = tier.channels.get(channel, {})
    return {
        "uid": uid,
        "store": args.get("store"),
        "fulfilment": args["fulfilment"],
        "pickup_store": args.get("pickup_store"),
        "tier": tier.tier,
        "points_per_unit": float(own.get("points_per_unit", tier.points_per_unit)),
        "points": points,
        "pay_within_s": args["pay_within_s"],
        "lines": [[*row, off] for row, off in zip(rows, offs, strict=True)],
        "coupon_codes": args["coupon_codes"],
        # what to take out of the cart once paid: the lines it had of the order's SKUs
        "cart_skus": [sku for sku, _ in in_cart if sku in set(skus)],
    }


async def checkout(grid: Grid, cmd: Command) -> tuple[int, Any]:
    plan = await _plan(grid, cmd)
    order_id = _order_id(grid, cmd)
    key = order_key(order_id)
    begun = await grid.call(
        Command("order.begin", key, plan, cmd.channel, cmd.idempotency_key, cmd.fingerprint)
    )
    saga = answer(begun)[1]
    if begun.replayed:  # a retry: where the first attempt got to
        saga = await _saga(grid, order_id, cmd.channel)
    if saga["status"] == "reserving":
        saga = await _hold(grid, order_id, saga, cmd.channel)
    saga = await send(grid, order_id, saga)
    if saga["refusal"] is not None:
        code, detail, extra = saga["refusal"]
        raise GridError(code, detail, CODES.get(code, (409, ""))[0], extra)
    return 201, saga["view"]


async def _hold(grid: Grid, order_id: str, saga: dict[str, Any], channel: str) -> dict[str, Any]:
    """Place every hold; all placed: pending; one refused: refused, the rest given back."""
    view, key = saga["view"], order_key(order_id)
    lines = view["lines"]
    rids = [f"{order_id}-{i}" for i in range(len(lines))]
    reserves = [
        Command(
            "stock.reserve",
            stock.KIND.key(ln["sku"]),
            {"qty": ln["qty"], "ttl_s": stock.MAX_TTL_S, "ref": order_id, "rid": rid},
            channel,
        )
        for ln, rid in zip(lines, rids, strict=True)
    ]
    plan = saga["coupon_lines"]
    holds = [
        Command(
            "coupon.hold",
            f"coupon:{code}",
            {"order_id": order_id, "uid": view["uid"], "channel": view["channel"], "lines": plan},
            channel,
        )
        for code in view["coupons"]
    ]
    results = await asyncio.gather(*(grid.call(c) for c in reserves + holds))
    refusal = await _refusal(grid, lines, results[: len(reserves)], results[len(reserves) :])
    coupon_lines = [r.body["lines"] for r in results[len(reserves) :] if r.ok]
    if refusal is None and view["points_redeemed"]:
        free = sum(p[2] for p in plan) - sum(sum(c) for c in coupon_lines)
        if view["points_redeemed"] * pricing.POINT_VALUE > free:
            refusal = [
                "invalid_request",
                "the points are worth more than the order after its coupons",
                None,
            ]
        else:
            args = {
                "order_id": order_id,
                "action": "redeem",
                "key": "redeem",
                "points": view["points_redeemed"],
            }
            held = await grid.call(
                Command("member.order_points", f"member:{view['uid']}", args, channel)
            )
            if not held.ok:
                refusal = [held.code, held.detail, None]
    if refusal is not None:
        code, detail, extra = refusal
        refused = {"code": code, "detail": detail, "extra": extra}
        return answer(await grid.call(Command("order.refuse", key, refused, channel)))[1]  # type: ignore[no-any-return]
    priced = {"coupon_lines": coupon_lines}
    return answer(await grid.call(Command("order.priced", key, priced, channel)))[1]  # type: ignore[no-any-return]


async def _refusal(
    grid: Grid, lines: list[dict[str, Any]], reserved: list[Result], held: list[Result]
) -> list[Any] | None:
    """The checkout's refusal, if a hold was refused: stock first, then coupons."""
    short = [
        ln
        for ln, r in zip(lines, reserved, strict=True)
        if not r.ok or r.body.get("status") != "held"
    ]
    if short:
        if any(_transient(r) for r in reserved):
            return ["unavailable", "a SKU's stock could not be reached; nothing is held", None]
        now = await cart.availability(grid, [ln["sku"] for ln in short])
        e = _short(
            [[ln["sku"], ln["qty"]] for ln in short], {s: max(0, n or 0) for s, n in now.items()}
        )
        return [e.code, e.detail, e.extra]
    for r in held:
        if not r.ok:
            return [r.code or "coupon_invalid", r.detail or "", None]
    return None


def _short(lines: list[list[Any]], available: dict[str, int]) -> GridError:
    rows = [{"sku": sku, "requested": qty, "available": available[sku]} for sku, qty in lines]
    detail = ", ".join(
        f"{r['sku']}: {r['requested']} asked, {r['available']} available" for r in rows
    )
    return stock.INSUFFICIENT_STOCK(detail, lines=rows)


# -- the other moves: decide, then send what the decision owes ------------------------


async def decided(grid: Grid, cmd: Command) -> tuple[int, Any]:
    """The decision's answer (a retry with its Idempotency-Key gets the same), once
    the work it owes is sent."""
    order_id = cmd.key.partition(":")[2]
    try:
        status, body = answer(await grid.call(cmd))
    except GridError as refused:
        if refused.code == "order_expired":  # "its stock, points and coupons already given
            # back": the expiry's releases are sent before the refusal, not a while later
            await send(grid, order_id, await _saga(grid, order_id, cmd.channel), True)
        raise
    saga = body if isinstance(body, dict) and "outbox" in body else None
    await send(grid, order_id, saga or await _saga(grid, order_id, cmd.channel))
    return status, saga["view"] if saga is not None else body


_ORDER = {"order_id": "order_id"}
_MOVES = ("invalid_transition", "not_found")

KIND = Kind(
    name="order",
    scope="orders",
    entity=Order,
    ident="order_id",
    view=oi.OrderView,
    ops=(
        Op("order.get", Order.get, read=True),
        Op("order.saga", Order.get_saga, read=True),
        Op("order.checkout", None, oi.CheckoutRequest),
        Op("order.begin", Order.begin, oi.Begin, quiet=True),
        Op("order.priced", Order.priced, oi.Priced),
        Op("order.refuse", Order.refuse, oi.Refuse, quiet=True),
        Op("order.sent", Order.sent, oi.Sent, quiet=True),
        Op("order.pay", Order.pay, oi.Pay),
        Op("order.cancel", Order.cancel),
        Op("order.transition", Order.transition, oi.Transition),
        Op("order.refund", Order.refund, oi.RefundRequest, decided=frozenset({"refund_id"})),
        Op("order.approve", Order.approve, oi.Approve),
    ),
    routes=(
        Route(
            "POST",
            "/v1/checkouts",
            "checkout",
            "order.checkout",
            "Check out: every line reserved until pay_by, or none",
            oi.OrderView,
            status=201,
            refusals=(
                "insufficient_stock",
                "coupon_invalid",
                "insufficient_points",
                "unknown_product",
            ),
            flow=checkout,
        ),
        Route(
            "GET",
            "/v1/orders/{order_id}",
            "get_order",
            "order.get",
            "Read an order",
            oi.OrderView,
            refusals=("not_found",),
        ),
        Route(
            "POST",
            "/v1/orders/{order_id}/pay",
            "pay_order",
            "order.pay",
            "Pay: reservations committed, points and coupons consumed, points earned",
            oi.OrderView,
            refusals=("order_expired", *_MOVES),
            flow=decided,
        ),
        Route(
            "POST",
            "/v1/orders/{order_id}/cancel",
            "cancel_order",
            "order.cancel",
            "Cancel: everything held or paid given back",
            oi.OrderView,
            refusals=_MOVES,
            flow=decided,
        ),
        Route(
            "POST",
            "/v1/orders/{order_id}/transitions",
            "move_order",
            "order.transition",
            "Move an order on: packed, shipped, ready_for_pickup, completed",
            oi.OrderView,
            refusals=_MOVES,
            flow=decided,
        ),
        Route(
            "POST",
            "/v1/orders/{order_id}/refunds",
            "request_refund",
            "order.refund",
            "Ask for a refund of some lines (default: all), from any channel",
            oi.RefundView,
            status=201,
            refusals=("refund_exceeds_order", *_MOVES),
            flow=decided,
        ),
        Route(
            "POST",
            "/v1/orders/{order_id}/refunds/{refund_id}/approve",
            "approve_refund",
            "order.approve",
            "Approve a refund: stock, points, spend and coupons given back",
            oi.OrderView,
            refusals=_MOVES,
            path_fields={"refund_id": "refund_id"},
            flow=decided,
        ),
    ),
    queries={
        ORDER_VIEW: lambda o: o.view() if o.placed else None,
        # a store-bound key's check (api/http/guard.py)
        "order.stores": lambda o: [o.p.get("store"), o.p.get("pickup_store")] if o.placed else None,
    },
    refusals=(oi.INVALID_TRANSITION, oi.ORDER_EXPIRED, oi.REFUND_EXCEEDS_ORDER),
    resume=resume,
)
