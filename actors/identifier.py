"""Identifier(digest): one directory entry per identifier, naming the uid it is bound to.

The key is ``identifier:<digest>``, the keyed hash of the identifier's normal
form (actors/identifiers.py): the directory holds no phone, ID number or email
in clear. Binding is a claim decided by this one entity: of many resolves
racing to bind the same new identifier, the first claim wins and every other
learns the winner's uid, so they all end on one user.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

import msgspec

from omnigrid.actors.declaration import Id, Input, Kind, Op, View
from omnigrid.actors.entity import Entity, Outcome, intern
from omnigrid.persistence.events import rfc3339

UID = "identifier.uid"  # query: the uid an identifier is bound to (None: unbound)
# query: [uid, recorded]: recorded once the user's own list has it too, so a
# resolve may trust the directory alone (actors/identity.py)
BINDING = "identifier.binding"


class Claim(Input):
    uid: Id
    type: str
    shown: Annotated[str, msgspec.Meta(max_length=160)]
    app_id: str | None = None


class Release(Input):
    uid: Id


class Move(Input):
    from_uid: Id
    to_uid: Id


class IdentifierView(View):
    type: str | None
    value: str | None  # shown form (masked where personal)
    app_id: str | None
    uid: str | None
    bound_at: str | None
    channel: str | None
    version: int


class Identifier(Entity):
    __slots__ = ("app_id", "bound_at", "channel", "recorded", "shown", "type", "uid")

    kind: ClassVar[str] = "identifier"

    def __init__(self, key: str, ident: str) -> None:
        super().__init__(key, ident)
        self.type: str | None = None
        self.shown: str | None = None
        self.app_id: str | None = None
        self.uid: str | None = None
        self.bound_at: float | None = None
        self.channel: str | None = None
        self.recorded = False  # the bound user's identity lists it too

    def view(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "value": self.shown,
            "app_id": self.app_id,
            "uid": self.uid,
            "bound_at": rfc3339(self.bound_at),
            "channel": self.channel,
            "version": self.version,
        }

    def kind_state(self) -> Any:
        return [
            *(self.type, self.shown, self.app_id, self.uid, self.bound_at, self.channel),
            self.recorded,
        ]

    def load_kind_state(self, data: Any) -> None:
        self.type, self.shown, self.app_id, self.uid, self.bound_at, self.channel = data[:6]
        self.recorded = bool(data[6]) if len(data) > 6 else False

    def get(self, _: None, channel: str, now: float) -> Outcome:
        return Outcome(200, self.view(), changed=False)

    def claim(self, inp: Claim, channel: str, now: float) -> Outcome:
        """Bind to ``inp.uid`` unless bound already; answer the uid it is bound to."""
        if self.uid is not None:
            return Outcome(200, {"uid": self.uid, "claimed": False}, changed=False)
        self.type, self.shown, self.app_id = intern(inp.type), inp.shown, inp.app_id
        self.uid, self.bound_at, self.channel = inp.uid, now, intern(channel)
        return Outcome(200, {"uid": inp.uid, "claimed": True}, changed=True)

    def release(self, inp: Release, channel: str, now: float) -> Outcome:
        """Unbind, if bound to ``inp.uid`` (a release for another uid changes nothing)."""
        if self.uid != inp.uid:
            return Outcome(200, {"uid": self.uid, "released": False}, changed=False)
        self.uid = self.bound_at = self.channel = None
        self.recorded = False
        return Outcome(200, {"uid": None, "released": True}, changed=True)

    def mark_recorded(self, inp: Release, channel: str, now: float) -> Outcome:
        """The bound user's own list has it now (a resolve may trust the directory)."""
        if self.uid != inp.uid or self.recorded:
            return Outcome(200, None, changed=False)
        self.recorded = True
        return Outcome(200, None, changed=True)


def move(self: Identifier, inp: Move, channel: str, now: float) -> Outcome:
    """A merge's (or an undo's) step: bound to ``from_uid``, it is ``to_uid``'s now."""
    if self.uid != inp.from_uid:
        return Outcome(200, {"uid": self.uid, "moved": False}, changed=False)
    self.uid = inp.to_uid
    return Outcome(200, {"uid": self.uid, "moved": True}, changed=True)


KIND = Kind(
    name="identifier",
    entity=Identifier,
    ident="digest",
    view=IdentifierView,
    ops=(
        Op("identifier.get", Identifier.get, read=True),
        Op("identifier.claim", Identifier.claim, Claim),
        Op("identifier.release", Identifier.release, Release),
        Op("identifier.move", move, Move),
        Op("identifier.recorded", Identifier.mark_recorded, Release),
    ),
    queries={UID: lambda entry: entry.uid, BINDING: lambda entry: [entry.uid, entry.recorded]},
)
