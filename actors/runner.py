"""Running one command on one entity: idempotency, If-Match, then its handler.

The shard finds the entity and the op; this decides what the command answers
and whether the entity changed. A change is handed to ``record`` (the shard:
new version, event, journal), which answers the entity's new view.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import msgspec

from omnigrid.actors.declaration import Input, Op
from omnigrid.actors.entity import Entity
from omnigrid.actors.errors import GridError, key_reused, version_conflict
from omnigrid.actors.protocol import ALIASED, Command, Result

# (entity, command, the input as the handler left it, now) -> the new view
Record = Callable[[Entity, Command, dict[str, Any], float], dict[str, Any]]


class Ran(NamedTuple):
    result: Result
    changed: bool = False  # the entity changed (record ran)
    # the entity holds a new idempotency record or bookkeeping (Outcome.noted) the
    # store must get, though it did not change
    remembered: bool = False


def run_command(
    op: Op, entity: Entity, cmd: Command, inp: Input | None, now: float, record: Record
) -> Ran:
    """Run ``cmd`` on ``entity``: what it answers, and what it left on the entity."""
    handler = op.handler
    if handler is None:
        detail = f"{op.name!r} is a route's own, run at the gateway, not on an entity"
        return Ran(Result(422, None, "invalid_request", detail))
    into = entity.alias()
    if into is not None and not op.on_alias:
        detail = f"{entity.ident} was merged into {into}"
        return Ran(Result(ALIASED, {"into": into}, "user_merged", detail))
    if op.read:
        try:
            outcome = handler(entity, inp, cmd.channel, now)
        except GridError as e:
            return Ran(_refused(e))
        body = outcome.body(entity.view()) if callable(outcome.body) else outcome.body
        return Ran(Result(outcome.status, body))

    idem = cmd.idempotency_key
    if idem is not None:
        record_of_key = entity.idempotency.get(idem)
        if record_of_key is not None:
            if record_of_key.fingerprint != (cmd.fingerprint or ""):
                return Ran(_refused(key_reused()))
            return Ran(Result(record_of_key.status, record_of_key.body, replayed=True))
    if cmd.if_match is not None and cmd.if_match != entity.version:
        return Ran(_refused(version_conflict(cmd.if_match, entity.version)))
    try:
        outcome = handler(entity, inp, cmd.channel, now)
    except GridError as e:
        return Ran(_refused(e))
    view: dict[str, Any] | None = None
    if outcome.changed:
        # The input as the handler left it: with its decisions (Op.decided).
        args = msgspec.to_builtins(inp) if inp is not None else {}
        view = record(entity, cmd, args, now)
    body = outcome.body if outcome.body is not None else (view or entity.view())
    if callable(body):  # an answer built on the new view (see Outcome.body)
        body = body(view or entity.view())
    if idem is not None:
        entity.remember(idem, cmd.fingerprint or "", outcome.status, body, now)
    return Ran(Result(outcome.status, body), outcome.changed, idem is not None or outcome.noted)


def _refused(e: GridError) -> Result:
    return Result(e.status, None, e.code, e.detail)
