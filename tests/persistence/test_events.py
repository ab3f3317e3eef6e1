"""The one way a time is written on the wire: the cached formatter against datetime's."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest

from omnigrid.persistence.events import parse_rfc3339, rfc3339


def reference(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def test_rfc3339_writes_what_datetime_writes() -> None:
    edges = [0.0, 5e-7, 1.5e-6, 1.0005, 1.0015, 1.9999996, 1e9 + 0.9999995, 1.7e9 + 0.0004999]
    edges += [253_402_300_799.5]  # the last second datetime can write
    rng = random.Random(7)
    for ts in edges + [rng.uniform(0, 4.1e9) for _ in range(20_000)] + [-1.25, -86_400.5]:
        assert rfc3339(ts) == reference(ts), ts
    assert rfc3339(None) is None
    for beyond in (253_402_300_800.0, float("nan"), float("inf")):  # datetime's errors
        with pytest.raises((ValueError, OverflowError)):
            reference(beyond)
        with pytest.raises((ValueError, OverflowError)):
            rfc3339(beyond)
    assert rfc3339(1767261660.25) == "2026-01-01T10:01:00.250Z"
    assert parse_rfc3339("2026-01-01T10:01:00.250Z") == 1767261660.25
