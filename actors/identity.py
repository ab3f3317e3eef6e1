"""Identity(uid): the identifiers bound to one user, and the history of its identity.

The directory (actors/identifier.py, one entity per identifier) says which uid
an identifier belongs to; this entity says which identifiers a uid has, with
the per-type limits. The routes' flows keep the two in step: a claim in the
directory first (it decides races), then the user's record; a refusal of the
second releases what the first claimed, so a failed request binds nothing.

Values reach this module already parsed (actors/identifiers.py): only their
keyed hash and their shown (masked) form are ever in a command, an event, the
journal or the store.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

import msgspec

from omnigrid.actors import identifier as directory
from omnigrid.actors import identifiers
from omnigrid.actors.declaration import (
    Grid,
    Id,
    Input,
    Kind,
    Op,
    QueryFamilies,
    Refusal,
    Route,
    View,
    answer,
)
from omnigrid.actors.entity import Entity, Outcome, intern
from omnigrid.actors.errors import GridError, key_reused, version_conflict
from omnigrid.actors.merged import Restore, Undone
from omnigrid.actors.protocol import Command
from omnigrid.persistence.events import rfc3339

ALIAS = "identity.alias"  # query: the survivor a merged user stands for (None: not merged)
# query family, "identity.written:<Idempotency-Key>": [version (None: merged), the write
# with that key as [fingerprint, status, answer] or None], for a flow's checks up front
WRITTEN = "identity.written:"
USER_MERGED = Refusal("user_merged", 409, "User merged")
IDENTITY_CONFLICT = Refusal("identity_conflict", 409, "Identity conflict")
IDENTITY_LIMIT = Refusal("identity_limit", 409, "Identity limit")
MAX_RESOLVE = 10
MAX_HISTORY = 1_000  # history events a user keeps (the oldest go first)
DEFAULT_LIMITS = {"phone": 1, "id_number": 1, "wechat_unionid": 1, "alipay_uid": 1,
                  "device_id": 10}  # fmt: skip
OTHER_LIMIT = 5
_limits: dict[str, int] = dict(DEFAULT_LIMITS)


def configure_limits(limits: dict[str, int]) -> None:
    """Per-type limits of identifiers per user (types not named: ``OTHER_LIMIT``)."""
    unknown = set(limits) - set(identifiers.TYPES)
    if unknown:
        raise ValueError(f"no identifier type {', '.join(sorted(unknown))}")
    _limits.clear()
    _limits.update(DEFAULT_LIMITS | limits)


def limit_of(type_: str) -> int:
    return _limits.get(type_, OTHER_LIMIT)


# -- inputs ---------------------------------------------------------------------

IdType = Literal[identifiers.TYPES]  # type: ignore[valid-type]
Value = Annotated[str, msgspec.Meta(max_length=identifiers.MAX_VALUE_CHARS)]


class IdentifierIn(Input):
    type: IdType
    value: Value
    app_id: Annotated[str, msgspec.Meta(max_length=64)] | None = None


class Resolve(Input):
    identifiers: Annotated[list[IdentifierIn], msgspec.Meta(min_length=1, max_length=MAX_RESOLVE)]
    create: bool = True
    store: Id | None = None


class Unbind(Input):
    type: IdType
    value: Value
    app_id: Annotated[str, msgspec.Meta(max_length=64)] | None = None


class Bound(Input):
    """An identifier as the grid keeps it: hashed and shown, never in clear."""

    type: str
    digest: str
    shown: str
    app_id: str | None = None
    sealed: str | None = None  # a phone or email, encrypted (actors/identifiers.py)


class Record(Input):
    items: list[Bound]
    op: Literal["bind", "resolve_create"] = "bind"
    # a resolve's answer: what the record answers, and its Idempotency-Key's retries
    answer: dict[str, Any] | None = None


class Forget(Input):
    type: str
    digest: str


# -- answers (documentation) ------------------------------------------------------


class IdentifierShown(View):
    type: str
    value: Annotated[str, msgspec.Meta(description="masked where personal")]
    app_id: str | None
    bound_at: str
    channel: str


class IdentitiesView(View):
    uid: str
    identifiers: list[IdentifierShown]
    merged_into: str | None
    version: int
    updated_at: str | None


class Resolved(View):
    uid: str
    created: bool
    bound: list[IdentifierShown]
    conflicts: list[str]


class HistoryEvent(View):
    at: str
    op: Literal["bind", "unbind", "merge", "unmerge", "resolve_create"]
    channel: str
    identifier: IdentifierShown | None = None
    other_uid: str | None = None
    merge_id: str | None = None


class History(View):
    events: list[HistoryEvent]


# -- the entity ---------------------------------------------------------------------


@dataclass(slots=True)
class Held:
    type: str
    digest: str
    shown: str
    app_id: str | None
    bound_at: float
    channel: str
    from_merge: str | None = None  # the merge that brought it (an undo takes it back)
    sealed: str | None = None  # a phone or email, encrypted: X-Unmask's

    def bound(self) -> dict[str, Any]:
        return {"type": self.type, "digest": self.digest, "shown": self.shown,
                "app_id": self.app_id, "sealed": self.sealed}  # fmt: skip

    def view(self) -> dict[str, Any]:
        return {"type": self.type, "value": self.shown, "app_id": self.app_id,
                "bound_at": rfc3339(self.bound_at), "channel": self.channel}  # fmt: skip


class AliasOf(Input):
    into: Id
    merge_id: Annotated[str, msgspec.Meta(max_length=64)]


class Absorb(Input):
    items: list[Bound]
    merge_id: Annotated[str, msgspec.Meta(max_length=64)]
    other_uid: Id


class Identity(Entity):
    __slots__ = ("held", "history", "merged_from", "merged_into")

    kind: ClassVar[str] = "identity"

    def __init__(self, key: str, ident: str) -> None:
        super().__init__(key, ident)
        self.held: list[Held] = []
        self.history: list[list[Any]] = []  # [at, op, identifier view or None, channel]
        self.merged_into: str | None = None
        self.merged_from: list[str] = []

    def alias(self) -> str | None:
        return self.merged_into

    def view(self) -> dict[str, Any]:
        return {
            "uid": self.ident,
            "identifiers": [h.view() for h in self.held],
            "merged_into": self.merged_into,
            **({"merged_from": list(self.merged_from)} if self.merged_from else {}),
            "version": self.version,
            "updated_at": rfc3339(self.updated_at),
        }

    def kind_state(self) -> Any:
        rows = [[h.type, h.digest, h.shown, h.app_id, h.bound_at, h.channel, h.from_merge]
                + ([h.sealed] if h.sealed is not None else []) for h in self.held]  # fmt: skip
        return [rows, self.history, self.merged_into, self.merged_from]

    def load_kind_state(self, data: Any) -> None:
        rows, self.history, self.merged_into, *merged_from = data
        self.merged_from = list(merged_from[0]) if merged_from else []
        self.held = [Held(intern(r[0]), r[1], r[2], r[3], r[4], intern(r[5]),
                          r[6] if len(r) > 6 else None, r[7] if len(r) > 7 else None)
                     for r in rows]  # fmt: skip

    def get(self, _: None, channel: str, now: float) -> Outcome:
        return Outcome(200, self.view(), changed=False)

    def get_history(self, _: None, channel: str, now: float) -> Outcome:
        events = []
        for at, op, shown, ch, *merge in self.history:
            event = {"at": rfc3339(at), "op": op, "identifier": shown, "channel": ch}
            if merge and merge[0] is not None:
                event |= {"other_uid": merge[0], "merge_id": merge[1]}
            events.append(event)
        return Outcome(200, {"events": events}, changed=False)

    def record(self, inp: Record, channel: str, now: float) -> Outcome:
        """Add identifiers (those held already are skipped), within the per-type limits."""
        have = {h.digest for h in self.held}
        new = [b for b in {b.digest: b for b in inp.items}.values() if b.digest not in have]
        for type_ in {b.type for b in new}:
            count = sum(h.type == type_ for h in self.held) + sum(b.type == type_ for b in new)
            if count > limit_of(type_):
                raise IDENTITY_LIMIT(f"a user has at most {limit_of(type_)} {type_}")
        for b in new:
            held = Held(intern(b.type), b.digest, b.shown, b.app_id, now, intern(channel),
                        sealed=b.sealed)  # fmt: skip
            self.held.append(held)
            self._log(now, inp.op, held.view(), channel)
        return Outcome(200, inp.answer, changed=bool(new))

    def forget(self, inp: Forget, channel: str, now: float) -> Outcome:
        kept = [h for h in self.held if h.digest != inp.digest]
        if len(kept) == len(self.held):
            return Outcome(200, None, changed=False)
        gone = next(h for h in self.held if h.digest == inp.digest)
        self.held = kept
        self._log(now, "unbind", gone.view(), channel)
        return Outcome(200, None, changed=True)

    # -- a merge's steps (actors/merge.py) -------------------------------------------

    def become_alias(self, inp: AliasOf, channel: str, now: float) -> Outcome:
        """The merged user: an alias of the survivor; answers its identifiers."""
        bound = [h.bound() for h in self.held]
        if self.merged_into == inp.into:
            return Outcome(200, bound, changed=False)
        if self.merged_into is not None:
            raise USER_MERGED(f"{self.ident} was merged into {self.merged_into}")
        self.merged_into = inp.into
        self._log(now, "merge", None, channel, other=inp.into, merge_id=inp.merge_id)
        return Outcome(200, bound, changed=True)

    def absorb(self, inp: Absorb, channel: str, now: float) -> Outcome:
        """The survivor: the merged user's identifiers join its own, beyond the limits."""
        if inp.other_uid in self.merged_from:
            return Outcome(200, None, changed=False)
        have = {h.digest for h in self.held}
        for b in inp.items:
            if b.digest not in have:
                held = Held(intern(b.type), b.digest, b.shown, b.app_id, now, intern(channel),
                            inp.merge_id, b.sealed)  # fmt: skip
                self.held.append(held)
        self.merged_from.append(inp.other_uid)
        self._log(now, "merge", None, channel, other=inp.other_uid, merge_id=inp.merge_id)
        return Outcome(200, None, changed=True)

    def release_merged(self, inp: Undone, channel: str, now: float) -> Outcome:
        """Undo on the survivor: the identifiers the merge brought leave."""
        if inp.other_uid not in self.merged_from:
            return Outcome(200, None, changed=False)
        self.held = [h for h in self.held if h.from_merge != inp.merge_id]
        self.merged_from.remove(inp.other_uid)
        self._log(now, "unmerge", None, channel, other=inp.other_uid, merge_id=inp.merge_id)
        return Outcome(200, None, changed=True)

    def unalias(self, inp: Restore, channel: str, now: float) -> Outcome:
        """Undo on the merged user: a user again (its identifiers never left its list)."""
        if self.merged_into is None:
            return Outcome(200, None, changed=False)
        other, self.merged_into = self.merged_into, None
        self._log(now, "unmerge", None, channel, other=other, merge_id=inp.merge_id)
        return Outcome(200, None, changed=True)

    def _log(
        self,
        now: float,
        op: str,
        shown: dict[str, Any] | None,
        channel: str,
        other: str | None = None,
        merge_id: str | None = None,
    ) -> None:
        self.history.append([now, op, shown, channel, other, merge_id])
        if len(self.history) > MAX_HISTORY:
            del self.history[0]


# -- flows: the directory first, then the user ---------------------------------------


def new_uid(cmd: Command) -> str:
    """A new user's uid; with an Idempotency-Key, that key's (same channel, same key):
    a retry meets the first attempt's answer on it, as a checkout meets its order."""
    if cmd.idempotency_key is None:
        return "u" + secrets.token_hex(10)
    seed = "\0".join((cmd.channel, "resolve", cmd.idempotency_key))
    return "u" + hashlib.blake2b(seed.encode(), digest_size=10).hexdigest()


def _written(identity: Identity, idempotency_key: str) -> list[Any]:
    record = identity.idempotency.get(idempotency_key)
    version = identity.version if identity.merged_into is None else None
    return [version, [record.fingerprint, record.status, record.body] if record else None]


def _first(written: list[Any] | None, cmd: Command) -> tuple[int, Any] | None:
    """The first answer to this command's Idempotency-Key, from a ``WRITTEN`` query;
    422 when that key was used with another request."""
    record = written[1] if written is not None else None
    if record is None:
        return None
    fingerprint, status, body = record
    if fingerprint != (cmd.fingerprint or ""):
        raise key_reused()
    return status, body


async def _claim(grid: Grid, ident: identifiers.Identifier, uid: str, channel: str) -> Any:
    args = {"uid": uid, "type": ident.type, "shown": ident.shown, "app_id": ident.app_id}
    key = directory.KIND.key(ident.digest)
    return answer(await grid.call(Command("identifier.claim", key, args, channel)))[1]


async def _release(grid: Grid, idents: list[identifiers.Identifier], uid: str, ch: str) -> None:
    await asyncio.gather(
        *(
            grid.call(Command("identifier.release", directory.KIND.key(i.digest), {"uid": uid}, ch))
            for i in idents
        )
    )


def _bound(idents: list[identifiers.Identifier]) -> list[dict[str, Any]]:
    return [{"type": i.type, "digest": i.digest, "shown": i.shown, "app_id": i.app_id,
             "sealed": i.sealed} for i in idents]  # fmt: skip


async def _record(
    grid: Grid, uid: str, idents: list[identifiers.Identifier], op: str, cmd: Command,
    claimed: list[identifiers.Identifier], resolved: dict[str, Any] | None = None,
    if_match: int | None = None,
) -> dict[str, Any]:  # fmt: skip
    """The user's side of a binding; refused, it releases what this request claimed.

    Answers the user's view, or ``resolved`` (a resolve's answer, kept with the
    command's Idempotency-Key: a retry answers the first attempt's)."""
    args = {"items": _bound(idents), "op": op, "answer": resolved}
    record = Command("identity.record", KIND.key(uid), args, cmd.channel,
                     cmd.idempotency_key, cmd.fingerprint, if_match)  # fmt: skip
    result = await grid.call(record)
    if not result.ok:
        await _release(grid, claimed, uid, cmd.channel)
    view: dict[str, Any] = answer(result)[1]
    await asyncio.gather(  # now a resolve may trust the directory alone for these
        *(
            grid.call(
                Command(
                    "identifier.recorded", directory.KIND.key(i.digest), {"uid": uid}, cmd.channel
                )
            )
            for i in idents
        )
    )
    return view


def _parse(items: list[dict[str, Any]]) -> list[identifiers.Identifier]:
    parsed = [identifiers.parse(i["type"], i["value"], i.get("app_id")) for i in items]
    return list({p.digest: p for p in parsed}.values())  # the same one twice counts once


async def resolve(grid: Grid, cmd: Command) -> tuple[int, Any]:
    """The uid the identifiers belong to, the rest bound to it; or a new one."""
    idents = _parse(cmd.args["identifiers"])
    keys = {directory.KIND.key(i.digest): i for i in idents}
    asks = dict.fromkeys(keys, directory.BINDING)
    idem = cmd.idempotency_key
    # With an Idempotency-Key, the uid a create makes holds the first answer; one that
    # bound to a known user, that user does: the two are checked before anything is done.
    anchor = KIND.key(new_uid(cmd)) if idem is not None else ""
    if idem is not None:
        asks[anchor] = WRITTEN + idem
    bindings = await grid.query(asks)
    first = _first(bindings.pop(anchor, None), cmd)
    if first is not None:
        return first
    found = {key: b[0] if b is not None else None for key, b in bindings.items()}
    uids = sorted({uid for uid in found.values() if uid is not None})
    if idem is not None and len(uids) == 1 and KIND.key(uids[0]) != anchor:
        known = KIND.key(uids[0])
        first = _first((await grid.query({known: WRITTEN + idem}))[known], cmd)
        if first is not None:
            return first
    if len(uids) > 1:
        raise IDENTITY_CONFLICT("these identifiers belong to different users", uids=uids)
    if not uids and not cmd.args["create"]:
        raise GridError("not_found", "no user has these identifiers")
    if uids and all(found[k] == uids[0] and bindings[k][1] for k in keys):
        # every one is bound to this user, and the user lists them: one round trip
        # (a known shopper). One not recorded yet (a process died between the claim
        # and the record) takes the long way, which records it.
        return 200, {"uid": uids[0], "created": False, "bound": [], "conflicts": []}
    uid, created = (uids[0], False) if uids else (new_uid(cmd), True)
    # Claims go in key order: of resolves racing on the same new identifiers,
    # the first claim of the first key decides the uid for all of them.
    ordered = [keys[k] for k in sorted(keys)]
    first = await _claim(grid, ordered[0], uid, cmd.channel)
    if first["uid"] != uid:
        if not created:
            raise IDENTITY_CONFLICT("an identifier was bound meanwhile", uids=[uid, first["uid"]])
        uid, created = first["uid"], False
    rest = await asyncio.gather(*(_claim(grid, i, uid, cmd.channel) for i in ordered[1:]))
    claims = [first, *rest]
    claimed = [i for i, c in zip(ordered, claims, strict=True) if c["claimed"]]
    others = sorted({c["uid"] for c in claims if c["uid"] != uid})
    if others:
        await _release(grid, claimed, uid, cmd.channel)
        raise IDENTITY_CONFLICT("these identifiers belong to different users", uids=[uid, *others])
    bound = [{"type": i.type, "value": i.shown, "app_id": i.app_id} for i in claimed]
    resolved = {"uid": uid, "created": created, "bound": bound, "conflicts": []}
    op = "resolve_create" if created else "bind"
    resolved = await _record(grid, uid, ordered, op, cmd, claimed, resolved)
    if created and cmd.args.get("store"):
        home = Command("member.home", f"member:{uid}", {"store": cmd.args["store"]}, cmd.channel)
        answer(await grid.call(home))
    return 200, resolved


async def bind(grid: Grid, cmd: Command) -> tuple[int, Any]:
    uid = cmd.key.partition(":")[2]
    (ident,) = _parse([cmd.args])
    if cmd.idempotency_key is not None or cmd.if_match is not None:
        # a retry, a key reused or a stale version, told before the directory is touched
        # (the user's record checks them again: they may change meanwhile)
        written = (await grid.query({cmd.key: WRITTEN + (cmd.idempotency_key or "")}))[cmd.key]
        first = _first(written, cmd)
        if first is not None:
            return first
        version = written[0] if written is not None else 0
        if cmd.if_match is not None and version is not None and cmd.if_match != version:
            raise version_conflict(cmd.if_match, version)
    claim = await _claim(grid, ident, uid, cmd.channel)
    if claim["uid"] != uid:
        raise IDENTITY_CONFLICT("this identifier belongs to another user",
                                uids=[uid, claim["uid"]])  # fmt: skip
    claimed = [ident] if claim["claimed"] else []
    return 200, await _record(grid, uid, [ident], "bind", cmd, claimed, if_match=cmd.if_match)


async def unbind(grid: Grid, cmd: Command) -> tuple[int, Any]:
    uid = cmd.key.partition(":")[2]
    (ident,) = _parse([cmd.args])
    forget = Command("identity.forget", cmd.key, {"type": ident.type, "digest": ident.digest},
                     cmd.channel, cmd.idempotency_key, cmd.fingerprint, cmd.if_match)  # fmt: skip
    status, view = answer(await grid.call(forget))
    await _release(grid, [ident], uid, cmd.channel)
    return status, view


# the fixed queries, and the family ``identity.written:<Idempotency-Key>``
QUERIES = QueryFamilies(
    {
        ALIAS: lambda identity: identity.merged_into,
        # each identifier's sealed value, in the view's order (X-Unmask, api/http/guard.py)
        "identity.sealed": lambda identity: [h.sealed for h in identity.held],
    },
    {WRITTEN: lambda key: lambda identity: _written(identity, key)},
)


KIND = Kind(
    name="identity",
    scope="identity",
    entity=Identity,
    ident="uid",
    view=IdentitiesView,
    ops=(
        Op("identity.get", Identity.get, read=True),
        Op("identity.history", Identity.get_history, read=True),
        Op("identity.record", Identity.record, Record),
        Op("identity.forget", Identity.forget, Forget),
        Op("identity.resolve", None, Resolve),
        Op("identity.bind", None, IdentifierIn),
        Op("identity.unbind", None, Unbind),
        Op("identity.alias", Identity.become_alias, AliasOf, on_alias=True),
        Op("identity.absorb", Identity.absorb, Absorb),
        Op("identity.release_merged", Identity.release_merged, Undone),
        Op("identity.unalias", Identity.unalias, Restore, on_alias=True),
    ),
    routes=(
        Route(
            "POST",
            "/v1/identities/resolve",
            "resolve_identity",
            "identity.resolve",
            "The uid these identifiers belong to (a new one if none, with create)",
            Resolved,
            refusals=("identity_conflict", "identity_limit", "blocked_identifier", "not_found"),
            flow=resolve,
        ),
        Route(
            "GET",
            "/v1/users/{uid}/identities",
            "get_identities",
            "identity.get",
            "A user's identifiers, masked",
            IdentitiesView,
            scope="members:read",
        ),
        Route(
            "POST",
            "/v1/users/{uid}/identities",
            "bind_identity",
            "identity.bind",
            "Bind an identifier to a user",
            IdentitiesView,
            refusals=("identity_conflict", "identity_limit", "blocked_identifier"),
            flow=bind,
        ),
        Route(
            "DELETE",
            "/v1/users/{uid}/identities/{type}/{value}",
            "unbind_identity",
            "identity.unbind",
            "Unbind an identifier from a user",
            IdentitiesView,
            refusals=("blocked_identifier",),
            path_fields={"type": "type", "value": "value"},
            query_fields=("app_id",),
            loose_path=frozenset({"type", "value"}),
            flow=unbind,
        ),
        Route(
            "GET",
            "/v1/users/{uid}/identity-history",
            "identity_history",
            "identity.history",
            "Every change to a user's identity",
            History,
            scope="members:read",
        ),
    ),
    queries=QUERIES,
    refusals=(IDENTITY_CONFLICT, IDENTITY_LIMIT, USER_MERGED, identifiers.BLOCKED_IDENTIFIER),
)
