"""An order's money: the same arithmetic on every channel, in integer minor units.

Order of benefits (the contract): the tier's ``discount_pct`` first, per line;
then coupons, on the lines after the tier discount; then points, one point
worth ``POINT_VALUE`` minor units. Every split of an amount over lines is
exact (largest remainder), and every part of a line refunded is taken
cumulatively (``part``), so the refunds of a line always add up to the line.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from omnigrid.actors import tiers

POINT_VALUE = 1  # minor units one redeemed point is worth (1 fen)


def split(amount: int, weights: Sequence[int]) -> list[int]:
    """``amount`` over ``weights`` in proportion, in integers that add up to it exactly."""
    total = sum(weights)
    if total <= 0 or amount <= 0:
        return [0] * len(weights)
    shares = [amount * w // total for w in weights]
    left = amount - sum(shares)
    by_remainder = sorted(range(len(weights)), key=lambda i: (-(amount * weights[i] % total), i))
    for i in by_remainder[:left]:
        shares[i] += 1
    return shares


def part(amount: int, qty: int, of: int) -> int:
    """What ``qty`` of ``of`` units carry of ``amount``: taken cumulatively, the parts
    of all ``of`` units add up to ``amount`` exactly."""
    return amount * qty // of


def discount_pct(tier: tiers.Tier, channel: str) -> float:
    """The tier's discount on this channel (a channel may have its own)."""
    own = tier.channels.get(channel, {})
    return float(own.get("discount_pct", tier.discount_pct))


def tier_discounts(grosses: Sequence[int], pct: float) -> list[int]:
    """Each line's tier discount: ``pct`` of the order, split over its lines."""
    total = sum(grosses)
    return split(int(total * pct // 100), grosses)


def points_earned(paid: int, points_per_unit: float) -> int:
    """Points for ``paid`` minor units: ``points_per_unit`` per whole currency unit."""
    return int(paid // 100 * points_per_unit)


def price_lines(
    lines: Sequence[Sequence[Any]], coupon_lines: Sequence[Sequence[int]], points_value: int
) -> list[list[int]]:
    """Per line ``[discount, total, points value]`` from ``[gross, tier discount]`` and
    the coupons' per-line discounts; ``total`` is the line before points."""
    out: list[list[int]] = []
    for i, (gross, tier_off) in enumerate(lines):
        off = tier_off + sum(c[i] for c in coupon_lines)
        out.append([min(off, gross), max(0, gross - off), 0])
    for row, pv in zip(out, split(points_value, [row[1] for row in out]), strict=True):
        row[2] = pv
    return out
