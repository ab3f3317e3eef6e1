"""Keys hash to slots; a versioned slot map assigns slots to shards.

The scheme is Redis Cluster's: CRC16 (XMODEM) of the key modulo 16,384 slots.
Slots, not keys, move between shards, so a map of 16,384 small integers is all
a router needs to find any entity's owner.
"""

from __future__ import annotations

import binascii
from dataclasses import dataclass

SLOT_COUNT = 16_384


def slot_of(key: str) -> int:
    """The slot a key belongs to (Redis Cluster's hash, without hash tags)."""
    return binascii.crc_hqx(key.encode(), 0) % SLOT_COUNT


@dataclass(frozen=True, slots=True)
class SlotMap:
    """Which shard owns each slot, at one version.

    A map with a higher version supersedes a lower one; shards answer "moved"
    with theirs when asked for a slot they do not own, so routers converge.
    """

    version: int
    owners: tuple[int, ...]

    @classmethod
    def even(cls, shard_count: int, version: int = 1) -> SlotMap:
        """Contiguous, equal slot ranges: shard i owns [i*S/n, (i+1)*S/n)."""
        if shard_count < 1:
            raise ValueError("shard_count must be at least 1")
        return cls(version, tuple(i * shard_count // SLOT_COUNT for i in range(SLOT_COUNT)))

    @property
    def shard_count(self) -> int:
        return max(self.owners) + 1

    def owner(self, key: str) -> int:
        return self.owners[slot_of(key)]

    def ranges(self, shard: int) -> list[tuple[int, int]]:
        """The inclusive slot ranges a shard owns, for operators to read."""
        out: list[tuple[int, int]] = []
        start = -1
        for slot, owner in enumerate((*self.owners, -1)):
            if owner == shard and start < 0:
                start = slot
            elif owner != shard and start >= 0:
                out.append((start, slot - 1))
                start = -1
        return out

    def moved(self, slots: dict[int, int], version: int | None = None) -> SlotMap:
        """A new map with some slots given to other shards."""
        owners = list(self.owners)
        for slot, shard in slots.items():
            owners[slot] = shard
        return SlotMap(version if version is not None else self.version + 1, tuple(owners))

    def to_wire(self) -> list[object]:
        return [self.version, list(self.owners)]

    @classmethod
    def from_wire(cls, wire: list[object]) -> SlotMap:
        version, owners = wire
        assert isinstance(version, int) and isinstance(owners, list)
        return cls(version, tuple(owners))
