"""What a merge leaves on a user's entity (cart, member, identity): kept apart, and
``None`` on the entities of users never merged, so they cost nothing.

``into``: the survivor this entity now stands for (an alias: every command but
the merge's own goes on to the survivor's entity). ``merged_from``: the users
folded into this one (its views show them). ``done``: per merge id, what this
entity gave or took, so a step run twice (a saga resumed after a crash) does
nothing twice, and an undo knows what to give back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any

import msgspec

from omnigrid.actors.declaration import Id, Input


@dataclass(slots=True)
class MergeState:
    into: str | None = None
    merged_from: list[str] = field(default_factory=list)
    done: dict[str, Any] = field(default_factory=dict)

    def empty(self) -> bool:
        return self.into is None and not self.merged_from and not self.done

    def given_back(self, merge_id: str) -> MergeState | None:
        """The merged user's side of an undo: no alias, the merge forgotten. What is
        left to keep (``None``: nothing, the entity is as if never merged)."""
        self.into = None
        self.done.pop(merge_id, None)
        return None if self.empty() else self

    def unmerged(self, merge_id: str, other_uid: str) -> MergeState | None:
        """The survivor's side of an undo: no longer merged from ``other_uid``."""
        if other_uid in self.merged_from:
            self.merged_from.remove(other_uid)
        self.done.pop(merge_id, None)
        return None if self.empty() else self

    def state(self) -> list[Any]:
        return [self.into, self.merged_from, self.done]

    @classmethod
    def load(cls, data: list[Any]) -> MergeState:
        into, merged_from, done = data
        return cls(into, list(merged_from), dict(done))


MergeId = Annotated[str, msgspec.Meta(max_length=64)]


class HandOver(Input):
    """Step of a merge on the merged user's entity: give everything, become an alias."""

    into: Id
    merge_id: MergeId


class Restore(Input):
    """Step of an undo on the merged user's entity: take back, be a user again."""

    merge_id: MergeId
    # what to take back: cart lines or points lots, as hand_over gave them
    given: list[Any] = msgspec.field(default_factory=list)


class Undone(Input):
    """Step of an undo on the survivor's entity."""

    merge_id: MergeId
    other_uid: Id
