"""Where shard processes go: an even share on every node that takes work, shard 0
never moved, a drained node's shards moved off it, a node that joined given one."""

from __future__ import annotations

import pytest

from omnigrid.actors.slots import SLOT_COUNT, SlotMap
from omnigrid.api.runtime.placement import Moves, place_new, resolve_node, spread

A, B, C = "aa01", "bb02", "cc03"


def shards_per_node(placement: dict[int, str | None], moves: Moves) -> dict[str, list[int]]:
    after = {**placement, **moves.relocate, **moves.start}
    out: dict[str, list[int]] = {}
    for shard, node in sorted(after.items()):
        assert node is not None
        out.setdefault(node, []).append(shard)
    return out


def test_a_node_that_joined_takes_shards_from_the_busiest() -> None:
    placement: dict[int, str | None] = {0: A, 1: B, 2: A, 3: B}
    moves = spread(placement, [A, B, C], grow_to=3)
    assert moves.start == {}  # four shards for three nodes: none needs starting
    assert len(moves.relocate) == 1 and list(moves.relocate.values()) == [C]
    assert 0 not in moves.relocate  # the coordinator stays
    assert sorted(len(s) for s in shards_per_node(placement, moves).values()) == [1, 1, 2]


def test_a_node_that_joined_gets_a_new_shard_when_there_are_fewer_shards_than_nodes() -> None:
    placement: dict[int, str | None] = {0: A, 1: B}
    moves = spread(placement, [A, B, C], grow_to=3)
    assert moves == Moves(relocate={}, start={2: C})


def test_a_drained_node_gives_every_shard_away_and_the_rest_stay_even() -> None:
    placement: dict[int, str | None] = {0: A, 1: B, 2: C, 3: B, 4: C, 5: A}
    moves = spread(placement, [A, B], grow_to=2)  # C drained
    assert set(moves.relocate) == {2, 4} and moves.start == {}
    assert {n: len(s) for n, s in shards_per_node(placement, moves).items()} == {A: 3, B: 3}


def test_a_shard_that_does_not_run_is_started_on_a_node_and_shard_0_never_moves() -> None:
    placement: dict[int, str | None] = {0: C, 1: None, 2: A}
    moves = spread(placement, [A, B], grow_to=2)
    assert moves.relocate == {1: B}  # shard 0's node is drained, yet it stays there
    assert spread({0: A, 1: A, 2: A}, [A], grow_to=1) == Moves()
    with pytest.raises(ValueError):
        spread(placement, [])


def test_even_placements_stay_put() -> None:
    assert spread({0: A, 1: B, 2: A, 3: B}, [A, B], grow_to=2) == Moves()
    assert spread({0: A, 1: B, 2: C}, [A, B, C], grow_to=3) == Moves()


def test_new_shards_of_a_scale_go_to_the_idlest_nodes_that_take_work() -> None:
    assert place_new({0: A, 1: A, 2: B}, [A, B, C], range(3, 6)) == {3: C, 4: B, 5: C}
    assert place_new({0: A}, [B], [1, 2]) == {1: B, 2: B}


def test_a_node_is_named_whole_or_by_a_unique_prefix() -> None:
    alive = ["ab12cd", "ab34ef", "ff00"]
    assert resolve_node("ab12cd", alive) == "ab12cd"
    assert resolve_node("ab1", alive) == "ab12cd"
    assert resolve_node("ab", alive) is None  # two match
    assert resolve_node("99", alive) is None
    assert resolve_node("", alive) is None


@pytest.mark.parametrize(("shards", "keep"), [(4, [0, 1, 3]), (3, [0, 2]), (2, [1]), (6, [0, 5])])
def test_slots_leave_the_shards_not_kept_and_even_over_the_rest(
    shards: int, keep: list[int]
) -> None:
    start = SlotMap.even(shards)
    plan = start.evened_over(keep)
    after = start.moved(plan)
    counts = [after.owners.count(s) for s in keep]
    assert max(counts) - min(counts) <= 1 and sum(counts) == SLOT_COUNT
    assert all(start.owners[slot] != shard for slot, shard in plan.items())
    # a kept shard gives nothing away: only the others' slots move
    assert all(start.owners[slot] not in keep for slot in plan)
    with pytest.raises(ValueError):
        start.evened_over([])
