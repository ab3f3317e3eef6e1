"""Which entities a shard holds in memory, and bringing the others back.

Entities live in an LRU (an ``OrderedDict`` in order of last use). Over the
budget, the least recently used ones that are safe to drop (durable in the
store: the shard decides, see ``Shard.pinned``) are passivated: only their key
stays, in ``cold``, so a later command knows to load them from the store and
a key never stored costs no store read at all.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import msgpack

from omnigrid.actors.entity import Entity
from omnigrid.actors.kinds import split_key

Loader = Callable[[str], bytes | None]


def pack_state(entity: Entity) -> bytes:
    packed: bytes = msgpack.packb(entity.state(), use_bin_type=True)
    return packed


def unpack_entity(key: str, data: bytes) -> Entity | None:
    kind, ident = split_key(key)
    if kind is None:
        return None
    state: list[Any] = msgpack.unpackb(data, use_list=True, strict_map_key=False)
    return kind.entity.from_state(key, ident, state)


class Residency:
    def __init__(self, loader: Loader | None = None, budget: int = 0) -> None:
        self.entities: OrderedDict[str, Entity] = OrderedDict()
        self.cold: set[str] = set()  # stored in the store, not in memory
        self.loader = loader
        self.budget = budget  # entities held in memory at most (0: no limit)
        self.activations = 0
        self.passivations = 0

    def __len__(self) -> int:
        return len(self.entities)

    def get(self, key: str) -> Entity | None:
        """The entity if it exists, from memory or (if passivated) from the store."""
        entity = self.entities.get(key)
        if entity is not None:
            self.entities.move_to_end(key)
            return entity
        if key in self.cold:
            return self.load(key)
        return None

    def load(self, key: str) -> Entity | None:
        """Bring an entity back from the store (StoreUnavailable propagates)."""
        if self.loader is None:
            return None
        data = self.loader(key)
        self.cold.discard(key)
        if data is None:
            return None
        entity = unpack_entity(key, data)
        if entity is not None:
            self.entities[key] = entity
            self.activations += 1
        return entity

    def put(self, key: str, entity: Entity) -> None:
        self.entities[key] = entity
        self.cold.discard(key)

    def restore(self, key: str, data: bytes) -> Entity | None:
        """At recovery: hold the entity while within budget, else remember it is stored."""
        if self.budget and len(self.entities) >= self.budget:
            self.cold.add(key)
            return None
        entity = unpack_entity(key, data)
        if entity is not None:
            self.entities[key] = entity
        return entity

    def drop(self, key: str) -> None:
        """Forget an entity's memory without marking it stored (see Shard taint)."""
        self.entities.pop(key, None)
        self.cold.discard(key)

    def over_budget(self) -> int:
        return max(0, len(self.entities) - self.budget) if self.budget and self.loader else 0

    def passivate(self, count: int, pinned: Callable[[str], bool], scan_limit: int) -> int:
        """Drop up to ``count`` least recently used unpinned entities; returns how many.

        Pinned ones met on the way go to the back, so a run of entities waiting
        for the write-behind does not make every call rescan them.
        """
        dropped = 0
        entities = self.entities
        for _ in range(min(scan_limit, len(entities))):
            if dropped >= count:
                break
            key = next(iter(entities))
            if pinned(key):
                entities.move_to_end(key)
                continue
            del entities[key]
            self.cold.add(key)
            dropped += 1
        self.passivations += dropped
        return dropped
