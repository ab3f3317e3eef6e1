"""The door: every request's signature, scope, channel and store, before it runs.

Off while no key exists (a grid on loopback out of the box); on as soon as one
does. A refusal is 401 ``unauthenticated`` or 403 ``forbidden`` and says
nothing about what it refused: no order contents, no hint that it exists.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from omnigrid.actors import identifiers
from omnigrid.actors.declaration import ID_RE, Grid
from omnigrid.api.http.auth import Keyring, NonceBook, Principal, forbidden
from omnigrid.api.http.nonce_claim import PENDING, NonceCheck, PendingNonce, replayed, settle

Scope = MutableMapping[str, Any]
HOME_STORE = "member.home"  # the member's query: its home_store
ORDER_STORES = "order.stores"  # the order's query: [store, pickup_store] (None: no order)
UNMASK = b"x-unmask"


UNMASKABLE = frozenset({"get_identities"})  # the routes X-Unmask shows in clear
# (key_id, route, uid): an unmasked read, for the pii-access log
UnmaskLog = Callable[[str, str, str | None], Awaitable[None]]


class Guard:
    def __init__(
        self,
        keyring: Keyring,
        nonce_check: NonceCheck | None = None,
        unmask_log: UnmaskLog | None = None,
    ) -> None:
        self.keyring = keyring
        self.unmask_log = unmask_log
        self.nonces = NonceBook()  # this process's part (all of them, with no check given)

        async def local(token: str, owner_key: str | None) -> bool:
            return self.nonces.first_use_token(token)

        self.nonce_check = nonce_check or local

    @property
    def enabled(self) -> bool:
        return self.keyring.enabled

    async def admit(
        self, scope: Scope, required: str | None, body: bytes, entity: str | None = None
    ) -> Principal | None:
        """The verified caller of a route needing ``required`` (None: a public route).

        Its nonce is checked now, or, for a route to ``entity``, by that entity's
        owner with the request's first command there (api/http/nonce_claim.py)."""
        if required is None or not self.keyring.enabled:
            return None
        header: str | None = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                header = value.decode("latin-1")
                break
        target = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
        query = scope.get("query_string", b"")
        if query:
            target += "?" + query.decode("latin-1")
        principal, signed = self.keyring.verify(scope["method"], target, header, body, time.time())
        token = f"{signed.key_id}:{signed.nonce}"
        if entity is not None:
            PENDING.set(PendingNonce(token, entity))
        elif not await self.nonce_check(token, None):
            raise replayed()
        if not principal.allows(required):
            raise forbidden()
        return principal

    async def settle_nonce(self) -> None:
        """The request is done with the grid: its nonce, if no command took it."""
        await settle(self.nonce_check)

    async def check_place(
        self,
        principal: Principal | None,
        grid: Grid,
        params: dict[str, str],
        channel: str,
        is_write: bool,
        body: bytes = b"",
    ) -> None:
        """A channel-bound key writes only as its channel; a store-bound key reaches only
        its store's orders and members, and writes only for its store."""
        if principal is None:
            return
        if is_write and principal.channel is not None and channel != principal.channel:
            raise forbidden(f"this key writes only as {principal.channel}")
        store = principal.store
        if store is None:
            return
        if "store" in params and params["store"] != store:
            raise forbidden()
        body_uid = _check_body_stores(body, store) if is_write and body else None
        asks: dict[str, str] = {}
        if "order_id" in params:
            asks[f"order:{params['order_id']}"] = ORDER_STORES
        if "uid" in params:
            asks[f"member:{params['uid']}"] = HOME_STORE
        # a write naming a shopper in its body (a checkout, a review): a walk-in with no
        # home store may be served, another store's member may not (their points, orders)
        named = (
            f"member:{body_uid}"
            if body_uid is not None and body_uid != params.get("uid")  # that one: strict
            else None
        )
        if named is not None:
            asks[named] = HOME_STORE
        if not asks:
            return
        got = await grid.query(asks)
        for key, value in got.items():
            places = value if isinstance(value, list) else [value]
            if store not in places and not (key == named and value is None):
                raise forbidden()  # never saying whether it exists

    async def unmask(self, principal: Principal | None, grid: Grid, route: str, answer: Any) -> Any:
        """``X-Unmask: true``: the clear phone and email, for a ``pii:read`` key only,
        each such read in the pii-access log. Id numbers stay masked: never stored."""
        if route not in UNMASKABLE or not isinstance(answer, dict):
            return answer  # nothing personal to show here
        if principal is None or not principal.allows("pii:read"):
            raise forbidden("X-Unmask needs a key with pii:read")
        uid = answer.get("uid")
        key = f"identity:{uid}"
        sealed = (await grid.query({key: "identity.sealed"}))[key] or []
        shown = [
            {**item, "value": identifiers.unseal(token)} if token else item
            for item, token in zip(answer["identifiers"], sealed, strict=False)
        ]
        if self.unmask_log is not None:
            await self.unmask_log(principal.key_id, route, uid)
        return {**answer, "identifiers": shown}


BODY_STORES = ("store", "pickup_store", "home_store")  # a body's fields that name a store


def _check_body_stores(body: bytes, store: str) -> str | None:
    """A store-bound key's write names no other store: it neither sells for, hands
    over at, nor gives a member to another store. Returns the uid the body names, if
    any, whose member must be the store's too. (A body that is not a JSON object is
    left to the route to refuse.)"""
    try:
        sent = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(sent, dict):
        return None
    for name in BODY_STORES:
        if name in sent and sent[name] is not None and sent[name] != store:
            raise forbidden(f"this key acts only for store {store}")
    uid = sent.get("uid")
    return uid if isinstance(uid, str) and ID_RE.fullmatch(uid) else None
