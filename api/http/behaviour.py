"""``POST /v1/events`` (channel behaviour for a uid) and ``GET /v1/users/{uid}/timeline``.

A batch is checked whole before anything is stored: one bad event refuses the
batch with 422 and stores nothing. ``at`` is when it happened on the channel
(RFC 3339 or epoch seconds; now when absent; at most a day ahead); ``channel``
is the event's own or else the request's ``X-Channel``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec

from omnigrid.actors import cart, identity, order_lists
from omnigrid.actors.declaration import MAX_COUNT, Grid, Id, answer, check_id
from omnigrid.actors.errors import InvalidRequest, Unavailable
from omnigrid.actors.protocol import Command
from omnigrid.api.http import validation as v
from omnigrid.api.http.handlers import Call
from omnigrid.api.http.suggestions import Properties, evidence_of, suggestions
from omnigrid.persistence.behaviour import TYPES, BehaviourLog
from omnigrid.persistence.store import StoreUnavailable

log = logging.getLogger("omnigrid.behaviour")
# the changes of an order a timeline shows: the moves a user or a clerk made
ORDER_MOVES = frozenset(
    (
        "order.priced",
        "order.pay",
        "order.cancel",
        "order.transition",
        "order.refund",
        "order.approve",
        "order.expire",
    )
)
MAX_EVENTS = 500
MAX_TIMELINE = 1_000
FUTURE_SLACK_S = 24 * 3600.0
MAX_QUERY_CHARS = 256
MAX_REF_CHARS = 128
MAX_EVENT_ID_CHARS = 128
MAX_AMOUNT = 1e12


# -- the document's shapes (api/http/openapi.py); the checks are below -------------------


class BehaviourEvent(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    type: Literal[TYPES]  # type: ignore[valid-type]
    at: (
        Annotated[
            str | float,
            msgspec.Meta(
                description="RFC 3339 with a zone, or epoch seconds; "
                f"at most {FUTURE_SLACK_S:.0f} s ahead"
            ),
        ]
        | None
    ) = None
    channel: (
        Annotated[str, msgspec.Meta(description="default: X-Channel; from the registry")] | None
    ) = None
    event_id: (
        Annotated[
            str, msgspec.Meta(max_length=MAX_EVENT_ID_CHARS, description="repeats are kept once")
        ]
        | None
    ) = None
    sku: Id | None = None
    query: Annotated[str, msgspec.Meta(max_length=MAX_QUERY_CHARS)] | None = None
    store_id: Id | None = None
    qty: Annotated[int, msgspec.Meta(ge=1, le=MAX_COUNT)] | None = None
    amount: Annotated[float, msgspec.Meta(ge=0, le=MAX_AMOUNT)] | None = None
    ref: Annotated[str, msgspec.Meta(max_length=MAX_REF_CHARS)] | None = None
    properties: Properties | None = None

    def __post_init__(self) -> None:
        for name in ("sku", "store_id"):
            value = getattr(self, name)
            if value is not None:
                check_id(value, name)


class BehaviourBatch(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A batch: this class documents it and checks it (``_event`` adds what needs
    the registry and the clock)."""

    uid: Id
    events: Annotated[list[BehaviourEvent], msgspec.Meta(min_length=1, max_length=MAX_EVENTS)]

    def __post_init__(self) -> None:
        check_id(self.uid, "uid")


def _at(value: Any, now: float) -> float:
    if value is None:
        return now
    if isinstance(value, bool):
        raise InvalidRequest("at must be an RFC 3339 time or epoch seconds")
    if isinstance(value, int | float):
        at = float(value)
    elif isinstance(value, str) and len(value) <= 40:
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise InvalidRequest(f"at {value!r} is not an RFC 3339 time") from None
        if parsed.tzinfo is None:
            raise InvalidRequest("at must carry a time zone (e.g. Z)")
        at = parsed.timestamp()
    else:
        raise InvalidRequest("at must be an RFC 3339 time or epoch seconds")
    if not 0 < at <= now + FUTURE_SLACK_S:
        raise InvalidRequest("at is out of range (after 1970, at most a day ahead)")
    return at


DATA_FIELDS = ("sku", "store_id", "query", "ref", "qty", "amount")


def _event(
    raw: dict[str, Any], channel: str, channels: frozenset[str], now: float
) -> dict[str, Any]:
    """One event of a batch the BehaviourEvent class has checked: the rest of its rules
    (the channel registry, the time) and its evidence, hashed."""
    own = raw.get("channel") or channel
    if own not in channels:
        raise InvalidRequest(f"channel {own!r} is not in the registry")
    at = _at(raw.get("at"), now)
    return {
        "type": raw["type"],
        "channel": own,
        "at": at,
        "event_id": raw.get("event_id"),
        # the values as sent (an amount of 12 stays 12), once checked
        "data": {k: raw[k] for k in DATA_FIELDS if raw.get(k) is not None},
        # only hashed and masked, never in the event's data
        "evidence": evidence_of(raw.get("properties"), at),
    }


async def _user(grid: Grid, uid: str) -> tuple[str, list[str]]:
    """The user a uid stands for (itself, or its survivor after a merge), and the
    users merged into that one."""
    view = answer(await grid.call(Command("identity.get", identity.KIND.key(uid))))[1]
    return view["uid"], list(view.get("merged_from", ()))


class BehaviourEndpoints:
    """The endpoints, over the behaviour log in the store (``None``: this process has
    none) and the channel registry events are checked against."""

    def __init__(self, log: BehaviourLog | None, channels: frozenset[str]) -> None:
        self._log = log
        self.channels = channels

    @property
    def log(self) -> BehaviourLog:
        if self._log is None:
            raise Unavailable("this process has no store")
        return self._log

    async def post_events(self, grid: Grid, call: Call) -> tuple[int, Any]:
        body = v.json_object(call.body)
        try:
            batch = msgspec.convert(body, BehaviourBatch)  # the class the document shows
        except msgspec.ValidationError as e:
            raise InvalidRequest(str(e)) from None
        uid = batch.uid
        now = time.time()
        events = [_event(e, call.channel, self.channels, now) for e in body["events"]]
        uid, _ = await _user(grid, uid)  # a merged user's behaviour is its survivor's
        evidence = [piece for event in events for piece in event.pop("evidence")]
        try:
            await asyncio.to_thread(self.log.append, uid, events, evidence)
        except StoreUnavailable as e:
            log.warning("the behaviour log cannot be written: %s", e)
            raise Unavailable("the behaviour log cannot be written right now; retry later") from e
        return 202, {"uid": uid, "accepted": len(events)}

    async def merge_suggestions(self, grid: Grid, call: Call) -> tuple[int, Any]:
        uid = v.identifier(call.params["uid"], "uid")
        try:
            shared = await asyncio.to_thread(self.log.shared_evidence, uid, 500)
        except StoreUnavailable as e:
            log.warning("the evidence cannot be read: %s", e)
            raise Unavailable("the suggestions cannot be read right now; retry later") from e
        return 200, suggestions(shared)

    async def timeline(self, grid: Grid, call: Call) -> tuple[int, Any]:
        uid = v.identifier(call.params["uid"], "uid")
        limit = call.query_int("limit", 100, 1, MAX_TIMELINE)
        uid, merged = await _user(grid, uid)
        uids = [uid, *merged]
        lists = await grid.query({order_lists.USER_KIND.key(u): order_lists.RECENT for u in uids})
        orders = [f"order:{i}" for ids in lists.values() for i in ids or ()]
        keys = [cart.KIND.key(u) for u in uids] + orders
        try:
            items = await asyncio.to_thread(self.log.timeline, uids, keys, limit)
        except StoreUnavailable as e:
            log.warning("the timeline cannot be read: %s", e)
            raise Unavailable("the timeline cannot be read right now; retry later") from e
        # an order's own bookkeeping (its checkout begun, its work sent) is not the user's
        shown = [i for i in items if i.get("entity") != "order" or i["type"] in ORDER_MOVES]
        return 200, {"uid": uid, "items": shown}
