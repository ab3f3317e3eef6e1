"""Prometheus metrics of one grid process, and the merge of every process's.

Each process keeps its own registry; every sample carries the ``shard`` that
produced it, so merging the expositions of all processes is a plain union.
Label children are cached per (channel, route) so the hot path pays one dict
lookup, not prometheus_client's label resolution, per request.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
LAG_BUCKETS = (
    0.05,
    0.1,
    0.15,
    0.2,
    0.25,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    1.5,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)


class GridMetrics:
    def __init__(self, shard_id: int) -> None:
        self.shard = str(shard_id)
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "omnigrid_http_requests",
            "HTTP requests answered, by channel, route, method and status.",
            ["shard", "channel", "route", "method", "status"],
            registry=self.registry,
        )
        self.errors = Counter(
            "omnigrid_http_errors",
            "HTTP requests refused, by channel, route and problem code.",
            ["shard", "channel", "route", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "omnigrid_http_request_duration_seconds",
            "Time from a request's arrival to its answer, by channel and route.",
            ["shard", "channel", "route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "omnigrid_shard_forward_batch_size",
            "Commands per micro-batch forwarded from this shard's process to another shard.",
            ["shard", "to_shard"],
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.served_batch_size = Histogram(
            "omnigrid_shard_served_batch_size",
            "Commands per micro-batch this shard applied for other processes.",
            ["shard"],
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.gc_pause = Histogram(
            "omnigrid_gc_pause_seconds",
            "Python garbage-collector pauses in this process, by generation.",
            ["shard", "generation"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.writebehind_lag = Histogram(
            "omnigrid_writebehind_lag_seconds",
            "From a change being made to it being stored (snapshot and event log).",
            ["shard"],
            buckets=LAG_BUCKETS,
            registry=self.registry,
        )
        self.sync_lag = Histogram(
            "omnigrid_sync_lag_seconds",
            "From a change's acknowledgement to its delivery on a stream or to a webhook, "
            "by the channel that made it.",
            ["shard", "channel"],
            buckets=LAG_BUCKETS,
            registry=self.registry,
        )
        self._cache: dict[tuple[str, str, str, int], tuple[Counter, Histogram]] = {}
        self._gc_started = 0.0

    def watch_gc(self) -> None:
        """Time every collection: a stalled event loop is often the collector."""

        def on_gc(phase: str, info: dict[str, int]) -> None:
            if phase == "start":
                self._gc_started = time.perf_counter()
            else:
                pause = time.perf_counter() - self._gc_started
                self.gc_pause.labels(self.shard, str(info["generation"])).observe(pause)

        gc.callbacks.append(on_gc)

    def observe(self, channel: str, route: str, method: str, status: int, seconds: float) -> None:
        key = (channel, route, method, status)
        children = self._cache.get(key)
        if children is None:
            children = (
                self.requests.labels(self.shard, channel, route, method, str(status)),
                self.latency.labels(self.shard, channel, route),
            )
            self._cache[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def delivered(self, channel: str, lag_s: float) -> None:
        self.sync_lag.labels(self.shard, channel).observe(max(0.0, lag_s))

    def error(self, channel: str, route: str, code: str) -> None:
        self.errors.labels(self.shard, channel, route, code).inc()

    def observe_writebehind_lag(self, lags: list[float]) -> None:
        child = self.writebehind_lag.labels(self.shard)
        for lag in lags:
            child.observe(lag)

    def forwarded(self, to_shard: int, size: int) -> None:
        self.batch_size.labels(self.shard, str(to_shard)).observe(size)

    def add_gauges(
        self,
        name: str,
        doc: str,
        labels: list[str],
        read: Callable[[], Iterable[tuple[list[str], float]]],
    ) -> None:
        """A gauge read at scrape time (queue depths, entity counts)."""
        self.registry.register(_ReadGauge(name, doc, ["shard", *labels], self.shard, read))

    def exposition(self) -> str:
        return generate_latest(self.registry).decode()


class _ReadGauge(Collector):
    def __init__(
        self,
        name: str,
        doc: str,
        labels: list[str],
        shard: str,
        read: Callable[[], Iterable[tuple[list[str], float]]],
    ) -> None:
        self._name, self._doc, self._labels, self._shard, self._read = (
            name,
            doc,
            labels,
            shard,
            read,
        )

    def collect(self) -> Iterator[Metric]:
        gauge = Metric(self._name, self._doc, "gauge")
        for values, number in self._read():
            gauge.add_sample(
                self._name, dict(zip(self._labels, [self._shard, *values], strict=True)), number
            )
        yield gauge

    def describe(self) -> list[Metric]:
        return []


class _Families(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        yield from self._families


def merge_expositions(texts: Iterable[str]) -> str:
    """One exposition from many processes' (their samples are disjoint by ``shard``)."""
    merged: dict[str, Metric] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            into = merged.get(family.name)
            if into is None:
                merged[family.name] = family
            else:
                into.samples.extend(family.samples)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(list(merged.values())))
    return generate_latest(registry).decode()
