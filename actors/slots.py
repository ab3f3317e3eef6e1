"""Keys hash to slots; a versioned slot map assigns slots to shards.

The scheme is Redis Cluster's: CRC16 (XMODEM) of the key modulo 16,384 slots.
Slots, not keys, move between shards, so a map of 16,384 small integers is all
a router needs to find any entity's owner.
"""

from __future__ import annotations

import binascii
from collections.abc import Iterable
from dataclasses import dataclass

SLOT_COUNT = 16_384


def slot_of(key: str) -> int:
    """The slot a key belongs to (Redis Cluster's hash, without hash tags)."""
    return binascii.crc_hqx(key.encode(), 0) % SLOT_COUNT


@dataclass(frozen=True, slots=True)
class SlotMap:
    """Which shard owns each slot, at one version, and how many shard processes run.

    A map with a higher version supersedes a lower one; shards answer "moved"
    with theirs when asked for a slot they do not own, so routers converge.
    ``shards`` can exceed the owners: a shard just started by a scale-up owns
    no slot until the job moves some to it (api/runtime/rebalance.py).
    """

    version: int
    owners: tuple[int, ...]
    shards: int = 0  # shard processes (0: one past the highest owner)

    @classmethod
    def even(cls, shard_count: int, version: int = 1) -> SlotMap:
        """Contiguous, equal slot ranges: shard i owns [i*S/n, (i+1)*S/n)."""
        if shard_count < 1:
            raise ValueError("shard_count must be at least 1")
        owners = tuple(i * shard_count // SLOT_COUNT for i in range(SLOT_COUNT))
        return cls(version, owners, shard_count)

    @property
    def shard_count(self) -> int:
        return max(self.shards, max(self.owners) + 1)

    def owner(self, key: str) -> int:
        return self.owners[slot_of(key)]

    def ranges(self, shard: int) -> list[tuple[int, int]]:
        """The inclusive slot ranges a shard owns, for operators to read."""
        return slot_ranges(s for s, owner in enumerate(self.owners) if owner == shard)

    def moved(self, slots: dict[int, int], version: int | None = None) -> SlotMap:
        """A new map with some slots given to other shards."""
        owners = list(self.owners)
        for slot, shard in slots.items():
            owners[slot] = shard
        new_version = version if version is not None else self.version + 1
        return SlotMap(new_version, tuple(owners), self.shards)

    def resized(self, shards: int) -> SlotMap:
        """The next version, with ``shards`` shard processes and the same owners."""
        return SlotMap(self.version + 1, self.owners, shards)

    def evened(self, shards: int) -> dict[int, int]:
        """Slot -> new owner: the fewest moves that leave ``shards`` shards with equal
        counts (within one), every slot of a shard past ``shards`` moved away."""
        if shards < 1:
            raise ValueError("shards must be at least 1")
        return self.evened_over(range(shards))

    def evened_over(self, keep: Iterable[int]) -> dict[int, int]:
        """Slot -> new owner: the fewest moves that leave the ``keep`` shards with equal
        counts (within one) and every other shard with none (a shard being moved to
        another node gives its slots away first)."""
        owned: dict[int, list[int]] = {s: [] for s in sorted(keep)}
        if not owned:
            raise ValueError("at least one shard must keep slots")
        homeless: list[int] = []
        for slot, owner in enumerate(self.owners):
            owned.get(owner, homeless).append(slot)
        base, extra = divmod(SLOT_COUNT, len(owned))
        quota = {s: base + (1 if i < extra else 0) for i, s in enumerate(owned)}
        for shard, slots in owned.items():  # a shard over its quota gives its last slots
            while len(slots) > quota[shard]:
                homeless.append(slots.pop())
        plan: dict[int, int] = {}
        homeless.sort()
        for shard, slots in owned.items():
            while len(slots) < quota[shard]:
                slot = homeless.pop()
                slots.append(slot)
                plan[slot] = shard
        return plan

    def to_wire(self) -> list[object]:
        return [self.version, list(self.owners), self.shards]

    @classmethod
    def from_wire(cls, wire: list[object]) -> SlotMap:
        version, owners, *rest = wire
        assert isinstance(version, int) and isinstance(owners, list)
        shards = rest[0] if rest else 0
        assert isinstance(shards, int)
        return cls(version, tuple(owners), shards)


def slot_ranges(slots: Iterable[int]) -> list[tuple[int, int]]:
    """Ascending slots as inclusive ranges: [0, 1, 2, 7] -> [(0, 2), (7, 7)]."""
    out: list[tuple[int, int]] = []
    for slot in slots:
        if out and out[-1][1] == slot - 1:
            out[-1] = (out[-1][0], slot)
        else:
            out.append((slot, slot))
    return out
