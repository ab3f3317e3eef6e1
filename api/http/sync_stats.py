"""Each channel's sync health, per second: requests, failures, latency and sync lag.

Cheap on the request path (a dict lookup and three increments): one bucket per
channel and second, latencies and lags counted in fixed log-spaced bins, so the
buckets of every process add up and percentiles come from the sum
(``merge``, ``summary``). Sync lag is a change's age when it is delivered: on
a stream, or to a webhook receiver. A failure is the grid's (5xx, 429); a
refusal the contract names (409 insufficient_stock) is an answer, not a failure.
"""

from __future__ import annotations

import math
import time
from collections import deque
from typing import Any

KEEP_S = 900  # seconds of history kept (the dashboard's and the alerts' window)
_BASE_MS, _STEP = 0.25, 1.25  # bin i holds values up to 0.25 ms x 1.25^i


def bin_of(ms: float) -> int:
    return 0 if ms <= _BASE_MS else min(120, math.ceil(math.log(ms / _BASE_MS, _STEP)))


def bin_top(index: int) -> float:
    return _BASE_MS * _STEP**index


class Second:
    """One channel's second: counts and binned times (sparse)."""

    __slots__ = ("errors", "failures", "lag", "latency", "requests")

    def __init__(self) -> None:
        self.requests = 0
        self.failures = 0
        self.latency: dict[int, int] = {}
        self.lag: dict[int, int] = {}
        self.errors: dict[str, int] = {}

    def wire(self) -> list[Any]:
        return [self.requests, self.failures, self.latency, self.lag, self.errors]


class SyncStats:
    def __init__(self, keep_s: int = KEEP_S) -> None:
        self.keep_s = keep_s
        # (second, channel) -> its bucket, oldest seconds first
        self._seconds: deque[tuple[int, dict[str, Second]]] = deque()

    def _bucket(self, channel: str, now: float | None = None) -> Second:
        second = int(time.time() if now is None else now)
        seconds = self._seconds
        if not seconds or seconds[-1][0] != second:
            seconds.append((second, {}))
            while seconds[0][0] <= second - self.keep_s:
                seconds.popleft()
        by_channel = seconds[-1][1]
        bucket = by_channel.get(channel)
        if bucket is None:
            bucket = by_channel[channel] = Second()
        return bucket

    def request(self, channel: str, status: int, seconds: float, code: str | None) -> None:
        b = self._bucket(channel)
        b.requests += 1
        if status >= 500 or status == 429:
            b.failures += 1
        if code is not None:
            b.errors[code] = b.errors.get(code, 0) + 1
        i = bin_of(seconds * 1000)
        b.latency[i] = b.latency.get(i, 0) + 1

    def delivered(self, channel: str, lag_s: float) -> None:
        """A change by ``channel`` reached a stream or a webhook ``lag_s`` after its
        acknowledgement."""
        b = self._bucket(channel)
        i = bin_of(max(0.0, lag_s) * 1000)
        b.lag[i] = b.lag.get(i, 0) + 1

    def window(self, window_s: int, now: float | None = None) -> dict[str, dict[str, list[Any]]]:
        """The last ``window_s`` seconds, per second: ``{second: {channel: wire}}`` as
        lists, for another process to merge."""
        start = int(time.time() if now is None else now) - window_s
        return {
            str(second): {ch: b.wire() for ch, b in by_channel.items()}
            for second, by_channel in self._seconds
            if second > start
        }


class SilentSyncStats(SyncStats):
    """Sync monitoring off (``OMNIGRID_SYNC_MONITORING=0``): counts nothing, for
    measuring what monitoring costs (loadtest/monitoring_bench.py)."""

    def request(self, channel: str, status: int, seconds: float, code: str | None) -> None:
        pass

    def delivered(self, channel: str, lag_s: float) -> None:
        pass


def merge(windows: list[dict[str, Any]]) -> dict[int, dict[str, list[Any]]]:
    """Every process's window, summed per second and channel."""
    out: dict[int, dict[str, list[Any]]] = {}
    for window in windows:
        for second, by_channel in window.items():
            slot = out.setdefault(int(second), {})
            for channel, (req, fail, lat, lag, errs) in by_channel.items():
                mine = slot.setdefault(channel, [0, 0, {}, {}, {}])
                mine[0] += req
                mine[1] += fail
                for target, source in ((mine[2], lat), (mine[3], lag), (mine[4], errs)):
                    for k, n in source.items():
                        target[k] = target.get(k, 0) + n
    return out


def percentile(bins: dict[Any, int], q: float) -> float | None:
    total = sum(bins.values())
    if not total:
        return None
    rank, seen = q * total, 0
    for index in sorted(bins, key=int):
        seen += bins[index]
        if seen >= rank:
            return round(bin_top(int(index)), 2)
    return None


def summary(merged: dict[int, dict[str, list[Any]]]) -> dict[str, dict[str, Any]]:
    """Per channel over the merged seconds: what ``GET /v1/ops/sync`` shows."""
    # every second folded into one: the window's totals per channel
    totals = merge([{"0": by_channel} for by_channel in merged.values()]).get(0, {})
    out = {}
    for channel, (requests, failures, latency, lag, errors) in sorted(totals.items()):
        out[channel] = {
            "requests": requests,
            "success_rate": round(1 - failures / requests, 5) if requests else None,
            "failure_rate": round(failures / requests, 5) if requests else 0.0,
            "p50_ms": percentile(latency, 0.5),
            "p99_ms": percentile(latency, 0.99),
            "sync_lag_p50_ms": percentile(lag, 0.5),
            "sync_lag_p99_ms": percentile(lag, 0.99),
            "deliveries": sum(lag.values()),
            "errors": dict(sorted(errors.items())),
        }
    return out


def series(merged: dict[int, dict[str, list[Any]]]) -> list[dict[str, Any]]:
    """Per second, per channel: the dashboard's points."""
    points = []
    for second in sorted(merged):
        for channel, (requests, failures, latency, lag, _) in sorted(merged[second].items()):
            points.append(
                {
                    "t": second,
                    "channel": channel,
                    "requests": requests,
                    "failures": failures,
                    "p99_ms": percentile(latency, 0.99),
                    "lag_p99_ms": percentile(lag, 0.99),
                }
            )
    return points
