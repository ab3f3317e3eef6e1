"""Merge(merge_id): folding one user into another, and undoing it, as a durable saga.

A merge touches entities on several shards (the merged user's identity, cart
and member; the survivor's; the directory entries of every identifier), so it
is a saga: this entity is its journal. Each step is a command that is safe to
run twice (keyed by the merge id), and the step reached is recorded here, with
what the later steps and the undo need (the merged user's identifiers, cart
lines and points as they were). A crash at any point leaves a merge that is
running: the grid process owning it drives it on (``pending`` and ``drive``,
run by the runtime) until it is done, so no reader is left with half a merge.

Forward: 1 the merged user's identity becomes an alias of the survivor and
answers its identifiers; 2 they move to the survivor; 3 its cart lines go to
the survivor's cart (sum or max per SKU, capped) and its cart becomes an
alias; 4 its points likewise; 5 its orders join the survivor's list (the orders
themselves keep their uid: what they later owe the merged user's member or cart
goes to the survivor's, as every command naming an alias does), and the merge is
done. Undo runs the same way backwards: the
merged user is a user again, with its identifiers, the cart it had at the
merge and what is left of the points it brought.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Annotated, Any, ClassVar, Literal

import msgspec

from omnigrid.actors.declaration import Grid, Id, Input, Kind, Op, Route, View, answer
from omnigrid.actors.entity import Entity, Outcome
from omnigrid.actors.errors import GridError, InvalidRequest
from omnigrid.actors.identity import USER_MERGED
from omnigrid.actors.protocol import Command
from omnigrid.persistence.events import rfc3339

FORWARD = ("begun", "aliased", "identifiers", "cart", "points", "done")
BACKWARD = ("undoing", "identifiers_back", "cart_back", "points_back", "undone")
ENDED = ("done", "undone", "refused")  # "refused": its first step was, nothing moved
SETTLE_S = 2.0  # a saga untouched this long with work left is driven by its owner


class Begin(Input):
    survivor: Id
    merged: Id
    cart_rule: Literal["sum", "max"] = "sum"


class Step(Input):
    done: Annotated[str, msgspec.Meta(max_length=32)]
    data: dict[str, Any] | None = None


class MergeRequest(Input):
    uid: Id  # the survivor (from the path)
    from_uid: Id
    cart_rule: Literal["sum", "max"] = "sum"


class MergeView(View):
    merge_id: str
    uid: str
    from_uid: str
    status: str
    version: int
    updated_at: str | None


class MergeAnswer(View):
    merge_id: str
    uid: str
    from_uid: str
    status: str | None = None


class Merge(Entity):
    __slots__ = ("cart_rule", "data", "merged", "status", "survivor")

    kind: ClassVar[str] = "merge"

    def __init__(self, key: str, ident: str) -> None:
        super().__init__(key, ident)
        self.survivor = ""
        self.merged = ""
        self.cart_rule = "sum"
        self.status = ""  # the last step done: FORWARD, then BACKWARD
        self.data: dict[str, Any] = {}  # what later steps and the undo need

    def view(self) -> dict[str, Any]:
        return {
            "merge_id": self.ident,
            "uid": self.survivor,
            "from_uid": self.merged,
            "status": self.status,
            "version": self.version,
            "updated_at": rfc3339(self.updated_at),
        }

    def saga(self) -> dict[str, Any]:
        return {**self.view(), "cart_rule": self.cart_rule, "data": self.data}

    def kind_state(self) -> Any:
        return [self.survivor, self.merged, self.cart_rule, self.status, self.data]

    def load_kind_state(self, data: Any) -> None:
        self.survivor, self.merged, self.cart_rule, self.status, self.data = data

    def next_deadline(self) -> float | None:
        """An unfinished saga nobody has moved on for a while is resumed (Kind.resume)."""
        if self.status in ENDED or not self.exists:
            return None
        return (self.updated_at or 0.0) + SETTLE_S

    def get(self, _: None, channel: str, now: float) -> Outcome:
        return Outcome(200, self.saga(), changed=False)

    def begin(self, inp: Begin, channel: str, now: float) -> Outcome:
        if self.exists:
            if (self.survivor, self.merged) != (inp.survivor, inp.merged):
                raise InvalidRequest(f"merge {self.ident} is another merge")
            return Outcome(200, self.saga(), changed=False)
        self.survivor, self.merged, self.cart_rule = inp.survivor, inp.merged, inp.cart_rule
        self.status = "begun"
        return Outcome(200, self.saga(), changed=True)

    def step(self, inp: Step, channel: str, now: float) -> Outcome:
        """Record a step as done (once: a step done already changes nothing)."""
        order = FORWARD if inp.done in FORWARD else BACKWARD
        if inp.done not in order and inp.done != "refused":
            raise InvalidRequest(f"no step {inp.done!r}")
        if inp.done == "refused":  # the first step was refused: nothing was moved
            if self.status != "begun":
                return Outcome(200, self.saga(), changed=False)
        elif inp.done == "undoing":
            if self.status in BACKWARD:
                return Outcome(200, self.saga(), changed=False)
            if self.status != "done":
                raise USER_MERGED(f"merge {self.ident} is {self.status}, not done")
        elif self.status not in order or order.index(inp.done) != order.index(self.status) + 1:
            return Outcome(200, self.saga(), changed=False)  # done already (or out of turn)
        self.status = inp.done
        if inp.data:
            self.data = {**self.data, **inp.data}
        return Outcome(200, self.saga(), changed=True)


# -- the saga's steps: each is safe to run again ------------------------------------


async def _run(grid: Grid, op: str, key: str, args: dict[str, Any], channel: str) -> Any:
    return answer(await grid.call(Command(op, key, args, channel)))[1]


async def _step(grid: Grid, merge_id: str, done: str, channel: str, **data: Any) -> dict[str, Any]:
    saga: dict[str, Any] = await _run(
        grid, "merge.step", KIND.key(merge_id), {"done": done, "data": data or None}, channel
    )
    return saga


async def _move(grid: Grid, items: list[Any], from_uid: str, to_uid: str, channel: str) -> None:
    """The directory entries of these identifiers: ``to_uid``'s now."""
    for item in items:
        key = f"identifier:{item['digest']}"
        await _run(grid, "identifier.move", key, {"from_uid": from_uid, "to_uid": to_uid}, channel)


async def _fold(
    grid: Grid, kind: str, m: str, s: str, mid: str, channel: str, field: str, **extra: Any
) -> Any:
    """One kind's step forward: the merged user's entity hands over what it holds and
    becomes an alias; the survivor's absorbs it (as ``field``). Returns what was given."""
    given = await _run(
        grid, f"{kind}.hand_over", f"{kind}:{m}", {"into": s, "merge_id": mid}, channel
    )
    absorb = {field: given, "merge_id": mid, "other_uid": m, **extra}
    await _run(grid, f"{kind}.absorb", f"{kind}:{s}", absorb, channel)
    return given


async def _unfold(grid: Grid, kind: str, m: str, s: str, mid: str, channel: str) -> None:
    """One kind's step back: the survivor gives back what is left of what the merge
    brought; the merged user's entity takes it and is no alias any more."""
    back = {"merge_id": mid, "other_uid": m}
    left = await _run(grid, f"{kind}.give_back", f"{kind}:{s}", back, channel)
    await _run(grid, f"{kind}.restore", f"{kind}:{m}", {"merge_id": mid, "given": left}, channel)


async def drive(
    grid: Grid, merge_id: str, channel: str = "system", saga: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Take the saga from the step it reached (``saga``, if the caller has it) to its
    end (done, or undone)."""
    if saga is None:
        saga = await _run(grid, "merge.get", KIND.key(merge_id), {}, channel)
    s, m, mid = saga["uid"], saga["from_uid"], merge_id
    while saga["status"] not in ENDED:
        status = saga["status"]
        if status == "begun":
            try:
                held = await _run(
                    grid, "identity.alias", f"identity:{m}", {"into": s, "merge_id": mid}, channel
                )
            except GridError as e:
                if e.code != "user_merged":
                    raise  # (unavailable, say): tried again
                # merged elsewhere meanwhile: this merge ends before it moved anything
                await _step(grid, mid, "refused", channel)
                raise
            saga = await _step(grid, mid, "aliased", channel, identifiers=held)
        elif status == "aliased":
            items = saga["data"]["identifiers"]
            await _move(grid, items, m, s, channel)
            await _run(
                grid,
                "identity.absorb",
                f"identity:{s}",
                {"items": items, "merge_id": mid, "other_uid": m},
                channel,
            )
            saga = await _step(grid, mid, "identifiers", channel)
        elif status == "identifiers":
            rule = saga["cart_rule"]
            lines = await _fold(grid, "cart", m, s, mid, channel, "lines", rule=rule)
            saga = await _step(grid, mid, "cart", channel, cart=lines)
        elif status == "cart":
            lots = await _fold(grid, "member", m, s, mid, channel, "lots")
            saga = await _step(grid, mid, "points", channel, points=lots)
        elif status == "points":
            await _fold(grid, "user_orders", m, s, mid, channel, "given")
            saga = await _step(grid, mid, "done", channel)
        elif status == "undoing":
            items = saga["data"].get("identifiers", [])
            await _run(
                grid,
                "identity.release_merged",
                f"identity:{s}",
                {"merge_id": mid, "other_uid": m},
                channel,
            )
            await _move(grid, items, s, m, channel)
            await _run(grid, "identity.unalias", f"identity:{m}", {"merge_id": mid}, channel)
            saga = await _step(grid, mid, "identifiers_back", channel)
        elif status == "identifiers_back":
            await _run(
                grid,
                "cart.restore",
                f"cart:{m}",
                {"merge_id": mid, "given": saga["data"].get("cart", [])},
                channel,
            )
            await _run(
                grid, "cart.unmerged", f"cart:{s}", {"merge_id": mid, "other_uid": m}, channel
            )
            saga = await _step(grid, mid, "cart_back", channel)
        elif status == "cart_back":
            await _unfold(grid, "member", m, s, mid, channel)
            saga = await _step(grid, mid, "points_back", channel)
        elif status == "points_back":
            await _unfold(grid, "user_orders", m, s, mid, channel)
            saga = await _step(grid, mid, "undone", channel)
        else:
            raise RuntimeError(f"merge {mid} is in an unknown state {status!r}")
    return saga


# -- the routes' flows ----------------------------------------------------------------


def _merge_id(cmd: Command) -> str:
    """With an Idempotency-Key, that key's merge (same channel, same key): a retry
    meets the first attempt's saga and its record of the key, as a checkout its order."""
    if cmd.idempotency_key is None:
        return "m" + secrets.token_hex(10)
    seed = "\0".join((cmd.channel, "merge", cmd.idempotency_key))
    return "m" + hashlib.blake2b(seed.encode(), digest_size=10).hexdigest()


async def merge(grid: Grid, cmd: Command) -> tuple[int, Any]:
    survivor, merged = cmd.args["uid"], cmd.args["from_uid"]
    if survivor == merged:
        raise InvalidRequest("a user cannot be merged into itself")
    merge_id = _merge_id(cmd)
    aliases = await grid.query(
        {f"identity:{survivor}": "identity.alias", f"identity:{merged}": "identity.alias"}
    )
    for uid in (survivor, merged):
        into = aliases[f"identity:{uid}"]
        if into is not None:
            refusal = USER_MERGED(f"{uid} was merged into {into}: merge into the survivor instead")
            if cmd.idempotency_key is None:
                raise refusal
            # the first attempt of this key may be the merge that made it an alias
            if not (await _run(grid, "merge.get", KIND.key(merge_id), {}, cmd.channel))["uid"]:
                raise refusal
    begin = {"survivor": survivor, "merged": merged, "cart_rule": cmd.args["cart_rule"]}
    # The key and the body's fingerprint are kept with the saga's beginning: a retry
    # is told by it (and a reused key refused) before anything moves.
    begun = await grid.call(
        Command(
            "merge.begin",
            KIND.key(merge_id),
            begin,
            cmd.channel,
            cmd.idempotency_key,
            cmd.fingerprint,
        )
    )
    saga = answer(begun)[1]
    # a retry: the saga as it is now, taken on to its end if a crash left it half way
    saga = await drive(grid, merge_id, cmd.channel, None if begun.replayed else saga)
    if saga["status"] == "refused":  # (a retry of a merge whose first step was refused)
        raise USER_MERGED(f"{merged} was merged elsewhere: merge into the survivor instead")
    return 200, {"merge_id": merge_id, "uid": survivor, "from_uid": merged}


async def undo(grid: Grid, cmd: Command) -> tuple[int, Any]:
    merge_id = cmd.args["merge_id"]
    saga = await _run(grid, "merge.get", KIND.key(merge_id), {}, cmd.channel)
    if not saga["uid"]:
        raise GridError("not_found", f"no merge {merge_id!r}")
    undoing = await _step(grid, merge_id, "undoing", cmd.channel)
    saga = await drive(grid, merge_id, cmd.channel, undoing)
    return 200, {
        "merge_id": merge_id,
        "uid": saga["uid"],
        "from_uid": saga["from_uid"],
        "status": saga["status"],
    }


class UndoRequest(Input):
    merge_id: Id


KIND = Kind(
    name="merge",
    scope="identity",
    entity=Merge,
    ident="merge_id",
    view=MergeView,
    ops=(
        Op("merge.get", Merge.get, read=True),
        Op("merge.begin", Merge.begin, Begin),
        Op("merge.step", Merge.step, Step),
        Op("merge.request", None, MergeRequest),
        Op("merge.undo", None, UndoRequest),
    ),
    routes=(
        Route(
            "POST",
            "/v1/users/{uid}/merge",
            "merge_users",
            "merge.request",
            "Fold from_uid into this user (a durable saga; from_uid becomes an alias)",
            MergeAnswer,
            refusals=("user_merged",),
            path_fields={"uid": "uid"},
            flow=merge,
        ),
        Route(
            "POST",
            "/v1/merges/{merge_id}/undo",
            "undo_merge",
            "merge.undo",
            "Make the merged user a user again",
            MergeAnswer,
            refusals=("user_merged", "not_found"),
            path_fields={"merge_id": "merge_id"},
            flow=undo,
        ),
    ),
    refusals=(USER_MERGED,),
    resume=drive,
)
