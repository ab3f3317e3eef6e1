"""A signed request's nonce, checked where its entity lives, with its first command.

A nonce must be checked by one process per request whatever process the request
reached, so that a replay to another process is caught. A request to an entity's
route (``/v1/carts/{uid}/…``) is checked by the process that owns that entity:
a replay names the same entity, so it reaches the same owner. The check rides
on the request's first command to that owner (``Command.nonce``, api/runtime/
router.py) instead of a round trip of its own; on the owner itself it is a
local lookup. Before the first write to any other owner, and when the handler
is done without having reached the owner (a refusal, a read elsewhere), the
nonce is checked on its own; either way, before anything is applied.

Other routes (no entity in the path: a checkout, key admin) check the nonce up
front, with the process that owns the nonce's own slot.

The claim is one mutable object in a context variable: ``asyncio.gather`` gives
each branch a copy of the context, and every copy must see that one of them has
taken the nonce already.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextvars import ContextVar

from omnigrid.actors.errors import GridError

# (token, owner key): is this nonce new? asked of the owner of ``owner key`` (None:
# of the owner of the nonce's own slot)
NonceCheck = Callable[[str, str | None], Awaitable[bool]]
REPLAYED = "this nonce was used already"


class PendingNonce:
    __slots__ = ("claimed", "key", "token")

    def __init__(self, token: str, key: str) -> None:
        self.token = token  # "<key id>:<nonce>"
        self.key = key  # the entity whose owner checks it
        self.claimed = False


PENDING: ContextVar[PendingNonce | None] = ContextVar("omnigrid_pending_nonce", default=None)


def replayed() -> GridError:
    return GridError("unauthenticated", REPLAYED)


async def settle(check: NonceCheck) -> None:
    """The request is done with the grid: a nonce no command took is checked now
    (nothing was written meanwhile)."""
    pending = PENDING.get()
    if pending is not None and not pending.claimed:
        pending.claimed = True
        if not await check(pending.token, pending.key):
            raise replayed()
