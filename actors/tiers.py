"""The tier table: the spend thresholds, discounts and points rates of membership.

A member's tier is the highest whose ``min_spend_12m`` its rolling 12-month
spend reaches (actors/member.py). The table is the deployment's
(``OMNIGRID_TIERS``); ``GET /v1/tiers`` shows it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import msgspec

from omnigrid.actors.declaration import Grid, View
from omnigrid.actors.protocol import Command


@dataclass(frozen=True, slots=True)
class Tier:
    tier: str
    min_spend_12m: int  # minor units
    discount_pct: float
    points_per_unit: float
    channels: dict[str, dict[str, float]]


# The contract's default table; a deployment sets its own with ``configure``.
DEFAULT_TIERS = (
    Tier("member", 0, 0.0, 1.0, {}),
    Tier("silver", 100_000, 2.0, 1.0, {}),
    Tier("gold", 500_000, 5.0, 1.5, {}),
    Tier("platinum", 2_000_000, 8.0, 2.0, {}),
)
_tiers: tuple[Tier, ...] = DEFAULT_TIERS


def configure(tiers: tuple[Tier, ...]) -> None:
    """The deployment's tier table (lowest first; the first must start at 0)."""
    global _tiers
    if not tiers or tiers[0].min_spend_12m != 0:
        raise ValueError("the tier table must start with a tier of min_spend_12m 0")
    if [t.min_spend_12m for t in tiers] != sorted(t.min_spend_12m for t in tiers):
        raise ValueError("tiers must be listed from the lowest min_spend_12m up")
    _tiers = tiers


def tiers() -> tuple[Tier, ...]:
    return _tiers


def tier_for(spend: int) -> Tier:
    """The highest tier whose ``min_spend_12m`` the 12-month spend reaches."""
    return [t for t in _tiers if t.min_spend_12m <= max(0, spend)][-1]


def tiers_from_json(text: str) -> tuple[Tier, ...]:
    """``OMNIGRID_TIERS``: the table as the contract shows it, lowest first."""
    rows = msgspec.json.decode(text, type=list[TierView])
    return tuple(
        Tier(r.tier, r.min_spend_12m, r.discount_pct, r.points_per_unit, r.channels) for r in rows
    )


class TierView(View):
    tier: str
    min_spend_12m: Annotated[int, msgspec.Meta(ge=0)]
    discount_pct: Annotated[float, msgspec.Meta(ge=0, le=100)]
    points_per_unit: Annotated[float, msgspec.Meta(ge=0)]
    channels: dict[str, dict[str, float]] = msgspec.field(default_factory=dict)


async def tier_table(grid: Grid, cmd: Command) -> tuple[int, Any]:
    table = [
        {"tier": t.tier, "min_spend_12m": t.min_spend_12m, "discount_pct": t.discount_pct,
         "points_per_unit": t.points_per_unit, "channels": t.channels}
        for t in tiers()
    ]  # fmt: skip
    return 200, table
