"""Keys hash to Redis Cluster's slots; slot maps split, move and travel as plain data."""

from __future__ import annotations

import itertools

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from omnigrid.actors.slots import SLOT_COUNT, SlotMap, slot_of


def crc16_xmodem(data: bytes) -> int:
    """CRC-16/XMODEM written out bit by bit: poly 0x1021, init 0, no reflection, no xor-out."""
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def test_reference_crc_has_the_published_check_value() -> None:
    # The catalogue check value of CRC-16/XMODEM (the CRC Redis Cluster uses).
    assert crc16_xmodem(b"123456789") == 0x31C3


@pytest.mark.parametrize(
    ("key", "slot"),
    [("foo", 12182), ("bar", 5061), ("hello", 866), ("123456789", 0x31C3 % SLOT_COUNT)],
)
def test_slot_of_matches_redis_cluster_keyslot(key: str, slot: int) -> None:
    assert slot_of(key) == slot
    assert crc16_xmodem(key.encode()) % SLOT_COUNT == slot


@given(st.text(max_size=80))
def test_slot_of_is_crc16_xmodem_mod_16384(key: str) -> None:
    slot = slot_of(key)
    assert 0 <= slot < SLOT_COUNT
    assert slot == crc16_xmodem(key.encode()) % SLOT_COUNT


def test_slot_of_empty_and_non_ascii_keys() -> None:
    assert slot_of("") == 0
    assert slot_of("cart:用户") == crc16_xmodem("cart:用户".encode()) % SLOT_COUNT


@pytest.mark.parametrize("shards", [1, 2, 3])
def test_even_ranges_cover_every_slot_contiguously(shards: int) -> None:
    m = SlotMap.even(shards)
    assert m.version == 1
    assert len(m.owners) == SLOT_COUNT
    assert m.shard_count == shards
    ranges = [m.ranges(shard) for shard in range(shards)]
    # one contiguous range per shard ...
    assert all(len(r) == 1 for r in ranges)
    flat = [r[0] for r in ranges]
    # ... in shard order, starting at 0, each beginning where the previous ended, ending at 16383
    assert flat[0][0] == 0
    assert flat[-1][1] == SLOT_COUNT - 1
    for (_, end), (start, _) in itertools.pairwise(flat):
        assert start == end + 1
    sizes = [end - start + 1 for start, end in flat]
    assert sum(sizes) == SLOT_COUNT
    assert max(sizes) - min(sizes) <= 1
    # the ranges agree with owners slot by slot
    for shard, (start, end) in enumerate(flat):
        assert set(m.owners[start : end + 1]) == {shard}


def test_even_exact_boundaries() -> None:
    assert SlotMap.even(1).ranges(0) == [(0, 16383)]
    two = SlotMap.even(2)
    assert [two.ranges(0), two.ranges(1)] == [[(0, 8191)], [(8192, 16383)]]
    three = SlotMap.even(3)
    assert [three.ranges(i) for i in range(3)] == [
        [(0, 5461)],
        [(5462, 10922)],
        [(10923, 16383)],
    ]


def test_even_rejects_no_shards_and_takes_a_version() -> None:
    with pytest.raises(ValueError):
        SlotMap.even(0)
    assert SlotMap.even(2, version=7).version == 7


def test_owner_follows_the_slot() -> None:
    m = SlotMap.even(3)
    for key in ("foo", "bar", "hello", "cart:u1", "stock:sku-1"):
        assert m.owner(key) == m.owners[slot_of(key)]
    assert m.owner("hello") == 0  # slot 866
    assert m.owner("bar") == 0  # slot 5061
    assert m.owner("foo") == 2  # slot 12182


def test_a_shard_owning_nothing_has_no_ranges() -> None:
    assert SlotMap.even(2).ranges(5) == []


def test_moved_bumps_the_version_and_reassigns_only_the_named_slots() -> None:
    m = SlotMap.even(2)
    foo = slot_of("foo")  # owned by shard 1
    n = m.moved({foo: 0, 0: 1})
    assert n.version == m.version + 1
    assert n.owner("foo") == 0
    assert n.owners[0] == 1
    changed = [s for s in range(SLOT_COUNT) if n.owners[s] != m.owners[s]]
    assert changed == [0, foo]
    # the old map is untouched (frozen)
    assert m.owner("foo") == 1
    assert m.owners[0] == 0
    # the ranges split around the moved slots
    assert n.ranges(0) == [(1, 8191), (foo, foo)]
    assert n.ranges(1) == [(0, 0), (8192, foo - 1), (foo + 1, 16383)]


def test_moved_with_an_explicit_version_and_chained() -> None:
    m = SlotMap.even(2)
    assert m.moved({1: 1}, version=10).version == 10
    assert m.moved({}).moved({}).version == m.version + 2
    assert m.moved({}).owners == m.owners


def test_wire_round_trip() -> None:
    m = SlotMap.even(3, version=4).moved({7: 2, 16383: 0})
    wire = m.to_wire()
    assert wire[0] == 5
    assert SlotMap.from_wire(wire) == m
    # through msgpack, as it travels between processes
    packed = msgpack.unpackb(msgpack.packb(wire))
    assert SlotMap.from_wire(packed) == m
    assert SlotMap.from_wire(packed).owner("foo") == m.owner("foo")


@pytest.mark.parametrize(("before", "after"), [(1, 2), (2, 4), (4, 2), (2, 3), (3, 6), (6, 1)])
def test_evening_moves_only_what_it_must_and_leaves_equal_counts(before: int, after: int) -> None:
    start = SlotMap.even(before)
    plan = start.evened(after)
    moved = start.moved(plan).resized(after)
    counts = [moved.owners.count(s) for s in range(after)]
    assert max(counts) - min(counts) <= 1 and sum(counts) == SLOT_COUNT
    assert all(owner < after for owner in moved.owners)
    # the fewest moves: every slot a shard keeps up to its quota stays put
    kept = sum(min(start.owners.count(s), SLOT_COUNT // after) for s in range(min(before, after)))
    assert len(plan) <= SLOT_COUNT - kept
    assert all(start.owners[slot] != shard for slot, shard in plan.items())
    assert moved.evened(after) == {}  # even already: nothing more to move


def test_a_map_counts_shards_that_own_no_slot_yet_and_travels_with_them() -> None:
    grown = SlotMap.even(2).resized(4)
    assert grown.shard_count == 4 and grown.ranges(3) == [] and grown.version == 2
    assert SlotMap.from_wire(grown.to_wire()) == grown
    assert SlotMap.from_wire([7, list(grown.owners)]).shard_count == 2  # an older peer's wire
    with pytest.raises(ValueError):
        grown.evened(0)
