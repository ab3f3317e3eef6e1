"""The gauges a grid process exports on /metrics, read when Prometheus scrapes."""

from __future__ import annotations

import gc
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from omnigrid.api.runtime.node import GridNode


def add_node_gauges(node: GridNode) -> None:
    node.metrics.add_gauges(
        "omnigrid_shard_queue_depth",
        "Commands waiting to be forwarded from this process to another shard.",
        ["to_shard"],
        lambda: [([str(p)], float(link.pending)) for p, link in node.links.items()],
    )
    node.metrics.add_gauges(
        "omnigrid_shard_entities",
        "Entities held in memory by this shard, by kind.",
        ["kind"],
        lambda: [([k], float(n)) for k, n in node.shard.entity_counts().items()],
    )
    node.metrics.add_gauges(
        "omnigrid_streams_open",
        "Server-Sent Event streams open on this process.",
        [],
        lambda: [([], float(node.streams.open))],
    )
    node.metrics.add_gauges(
        "omnigrid_stream_events_sent",
        "Events written to streams by this process since it started.",
        [],
        lambda: [([], float(node.streams.sent))],
    )
    node.metrics.add_gauges(
        "omnigrid_passivated_entities",
        "Entities of this shard held only in the store (they come back on use).",
        [],
        lambda: [([], float(len(node.shard.residency.cold)))],
    )
    node.metrics.add_gauges(
        "omnigrid_writebehind_queue_events",
        "Journaled changes not yet in the store (bounded by OMNIGRID_WRITEBEHIND_MAX_QUEUE).",
        [],
        lambda: [([], float(len(node.shard.backlog.unstored)))],
    )
    node.metrics.add_gauges(
        "omnigrid_writebehind_dirty_entities",
        "Entities changed since their last stored snapshot.",
        [],
        lambda: [([], float(len(node.shard.backlog.dirty) + len(node.shard.backlog.draining)))],
    )
    node.metrics.add_gauges(
        "omnigrid_writebehind_oldest_seconds",
        "Age of the oldest change not yet in the store.",
        [],
        lambda: [
            (
                [],
                time.time() - node.shard.backlog.unstored[0][1].at
                if node.shard.backlog.unstored
                else 0.0,
            )
        ],
    )
    node.metrics.add_gauges(
        "omnigrid_writebehind_failures",
        "Drains the store refused since this process started.",
        [],
        lambda: [([], float(node.writebehind.failures))],
    )
    node.metrics.add_gauges(
        "omnigrid_journal_ok",
        "1 while the journal takes appends, 0 while writes answer 503.",
        [],
        lambda: [([], float(node.shard.journal_ok()))],
    )
    node.metrics.add_gauges(
        "omnigrid_gc_frozen_objects",
        "Objects moved out of the garbage collector's view (see tune_gc).",
        [],
        lambda: [([], float(gc.get_freeze_count()))],
    )
    node.metrics.add_gauges(
        "omnigrid_http_inflight_requests",
        "HTTP requests in progress in this process.",
        [],
        lambda: [([], float(node.app.inflight))],
    )
