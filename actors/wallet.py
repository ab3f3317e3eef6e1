"""Wallet(uid): the coupon codes a user holds, for ``GET /v1/users/{uid}/coupons``.

A coupon issued to a uid joins its wallet when it is created (actors/coupon.py's
flow), and an open code when the user redeems it (the checkout's saga adds it).
The wallet keeps codes only, once each, the newest ``MAX_CODES``: what a coupon
is and how often it was used stay with the coupon, which alone decides a hold.
The listing reads the codes, then every coupon in one query (one message per
owner shard), and tells for each whether the user may use it on the channel now,
by the same rule a hold checks.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, ClassVar

import msgspec

from omnigrid.actors import coupon
from omnigrid.actors.declaration import Grid, Id, Input, Kind, Op, Route, View, check_id
from omnigrid.actors.entity import Entity, Outcome, intern
from omnigrid.actors.protocol import Command
from omnigrid.persistence.events import rfc3339

MAX_CODES = 1_000  # past it, the oldest code goes (its coupon stays as it is)
CODES = "wallet.codes"  # query: the codes, newest first


class CodeAdd(Input):
    code: Id

    def __post_init__(self) -> None:
        check_id(self.code, "code")


class CouponsRead(Input):
    channel: (
        Annotated[str, msgspec.Meta(max_length=32, description="default: X-Channel")] | None
    ) = None


class WalletView(View):
    uid: str
    codes: Annotated[list[str], msgspec.Meta(description="newest first")]
    version: int
    updated_at: str | None


class CouponList(View):
    coupons: list[coupon.ListedCoupon]


class Wallet(Entity):
    __slots__ = ("codes",)

    kind: ClassVar[str] = "wallet"

    def __init__(self, key: str, ident: str) -> None:
        super().__init__(key, ident)
        self.codes: list[str] = []  # oldest first, each once

    def newest_first(self) -> list[str]:
        return self.codes[::-1]

    def view(self) -> dict[str, Any]:
        return {
            "uid": self.ident,
            "codes": self.newest_first(),
            "version": self.version,
            "updated_at": rfc3339(self.updated_at),
        }

    def kind_state(self) -> Any:
        return list(self.codes)

    def load_kind_state(self, data: Any) -> None:
        self.codes = [intern(code) for code in data]

    def get(self, _: None, channel: str, now: float) -> Outcome:
        return Outcome(200, self.view(), changed=False)

    def add(self, inp: CodeAdd, channel: str, now: float) -> Outcome:
        if inp.code in self.codes:  # a saga step or a re-creation again: no change
            return Outcome(200, None, changed=False)
        self.codes.append(intern(inp.code))
        if len(self.codes) > MAX_CODES:
            del self.codes[0]
        return Outcome(200, None, changed=True)


def usage_query(uid: str) -> str:
    """The coupon query that answers what ``listed`` needs for ``uid``."""
    return coupon.USAGE + uid


def listed(usage: list[Any], uid: str, channel: str, now: float) -> dict[str, Any]:
    """A coupon as a user's list shows it: its view and whether ``uid`` may use it on
    ``channel`` at ``now``, by the rule a hold checks (the order's lines aside)."""
    row, view, mine = usage
    why = coupon.Terms(*row).why_not(uid, channel, now, view["redemptions"] + view["held"], mine)
    return {**view, "usable": why is None}


async def coupons(grid: Grid, cmd: Command) -> tuple[int, Any]:
    """The wallet's coupons, newest first, each with ``usable`` for the channel now."""
    uid = cmd.key.partition(":")[2]
    codes: list[str] = (await grid.query({cmd.key: CODES}))[cmd.key] or []
    keys = [coupon.KIND.key(code) for code in codes]
    found = await grid.query(dict.fromkeys(keys, usage_query(uid))) if keys else {}
    channel = cmd.args.get("channel") or cmd.channel
    now = time.time()
    shown = [listed(found[k], uid, channel, now) for k in keys if found[k] is not None]
    return 200, {"coupons": shown}


KIND = Kind(
    name="wallet",
    entity=Wallet,
    ident="uid",
    view=WalletView,
    ops=(
        Op("wallet.codes", Wallet.get, read=True),
        Op("wallet.add", Wallet.add, CodeAdd),
        Op("wallet.coupons", None, CouponsRead, read=True),
    ),
    routes=(
        Route(
            "GET",
            "/v1/users/{uid}/coupons",
            "user_coupons",
            "wallet.coupons",
            "The coupons issued to a user and the open codes it redeemed, each with "
            "usable: whether it may use it on the channel (?channel=, else X-Channel) now",
            CouponList,
            query_fields=("channel",),
            flow=coupons,
            scope="members:read",
        ),
    ),
    queries={CODES: lambda wallet: wallet.newest_first()},
)
