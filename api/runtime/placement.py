"""Which node each shard process runs on: an even share on every node that takes work.

Ray starts a shard process where a job asks (api/runtime/cluster.py); this decides
where to ask. Nodes that take work are the live ones an operator has not drained.
A rebalance moves shards from the busiest of them to the idlest until their counts
differ by at most one, and starts a shard on a node that has none (a node that
joined), so every node serves slots. A drain marks a node and its shards move to
the others. Shard 0 never moves: it coordinates the job (api/runtime/rebalance.py)
and runs next to ``omnigrid serve``, so its node leaves only with the whole grid.

A shard moves by giving its slots away, stopping, starting on its new node, and
taking slots again: Ray cannot move a live process, and a process without slots
holds nothing that could be lost on the way.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

COORDINATOR = 0  # the shard whose process runs the jobs: it never moves


@dataclass(frozen=True)
class Moves:
    """What a job does to the processes: shards to move (shard -> node) and shards to
    start (new shard id -> node)."""

    relocate: dict[int, str] = field(default_factory=dict)
    start: dict[int, str] = field(default_factory=dict)


def spread(placement: dict[int, str | None], takers: Sequence[str], grow_to: int = 0) -> Moves:
    """The moves that leave every node of ``takers`` with an even share of the shards.

    ``placement``: shard -> its node now (None: not running, so it is started).
    A shard on a node outside ``takers`` (drained, or gone) moves to one of them;
    then, while there are fewer than ``grow_to`` shards, a node without any gets a
    new one; then shards move from the busiest node to the idlest until the counts
    differ by at most one."""
    if not takers:
        raise ValueError("no node takes work")
    on: dict[str, list[int]] = {node: [] for node in takers}
    homeless: list[int] = []
    for shard in sorted(placement):
        node = placement[shard]
        if node in on:
            on[node].append(shard)
        elif shard != COORDINATOR:
            homeless.append(shard)

    def idlest() -> str:
        return min(takers, key=lambda n: len(on[n]))

    relocate: dict[int, str] = {}
    for shard in homeless:
        node = idlest()
        on[node].append(shard)
        relocate[shard] = node
    start: dict[int, str] = {}
    next_id = max(placement, default=-1) + 1
    for node in takers:
        if next_id >= grow_to:
            break
        if not on[node]:
            on[node].append(next_id)
            start[next_id] = node
            next_id += 1
    while True:
        busiest = max(takers, key=lambda n: len(on[n]))
        node = idlest()
        movable = [s for s in on[busiest] if s != COORDINATOR and s not in start]
        if len(on[busiest]) - len(on[node]) <= 1 or not movable:
            break
        shard = movable[-1]
        on[busiest].remove(shard)
        on[node].append(shard)
        relocate[shard] = node
    return Moves(
        {s: n for s, n in relocate.items() if placement.get(s) != n},
        start,
    )


def place_new(
    placement: dict[int, str | None], takers: Sequence[str], shard_ids: Iterable[int]
) -> dict[int, str]:
    """Nodes for new shards (a scale-up): each on the node with the fewest shards."""
    if not takers:
        raise ValueError("no node takes work")
    counts = {node: 0 for node in takers}
    for node in placement.values():
        if node in counts:
            counts[node] += 1
    chosen: dict[int, str] = {}
    for shard in shard_ids:
        node = min(takers, key=lambda n: counts[n])
        counts[node] += 1
        chosen[shard] = node
    return chosen


def resolve_node(asked: str, alive: Iterable[str]) -> str | None:
    """The live node ``asked`` names, whole or by a unique prefix (``omnigrid cluster
    status`` prints twelve characters); None when it names none or several."""
    matches = [n for n in alive if n.startswith(asked)] if asked else []
    return matches[0] if len(matches) == 1 else None
