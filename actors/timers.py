"""When each entity next has timed work to do (a held reservation expiring).

A heap of ``(when, key)`` with at most one live entry per entity: a flash
sale's 100,000 reservations of one SKU are one entry, not 100,000 to pop and
push again on every tick. A later, earlier deadline supersedes the entry; the
superseded one is skipped when it surfaces.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator

from omnigrid.actors.entity import Entity


class Timers:
    def __init__(self) -> None:
        self._heap: list[tuple[float, str]] = []
        self._scheduled: dict[str, float] = {}  # key -> its live deadline

    def __contains__(self, key: str) -> bool:
        """Whether the entity has timed work scheduled (it must stay in memory)."""
        return key in self._scheduled

    def schedule(self, entity: Entity) -> None:
        deadline = entity.next_deadline()
        if deadline is None:
            return
        scheduled = self._scheduled.get(entity.key)
        if scheduled is None or deadline < scheduled:
            self._scheduled[entity.key] = deadline
            heapq.heappush(self._heap, (deadline, entity.key))

    def schedule_at(self, key: str, when: float) -> None:
        """Look at the entity again at ``when`` (whatever its own deadline says)."""
        self._scheduled[key] = when
        heapq.heappush(self._heap, (when, key))

    def forget(self, key: str) -> None:
        self._scheduled.pop(key, None)

    def due(self, now: float) -> bool:
        return bool(self._heap) and self._heap[0][0] <= now

    def pop_due(self, now: float) -> Iterator[str]:
        """The keys whose deadline is ``now`` or earlier, each taken off the schedule;
        stop iterating to leave the rest for later."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            when, key = heapq.heappop(heap)
            if self._scheduled.get(key) != when:
                continue  # superseded by an earlier deadline for the same entity
            del self._scheduled[key]
            yield key
