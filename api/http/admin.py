"""``/v1/admin/keys`` (create, list, rotate, revoke) and ``/v1/admin/pii-access``.

A key's secret is shown once, at creation or rotation, and stored nowhere: it is
derived from the deployment's secret (api/http/auth.py). A change is pushed to
every grid process at once (``on_change``): a revoked key is refused everywhere
from the answer on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import msgspec

from omnigrid.actors.declaration import Grid, Id, check_id
from omnigrid.actors.errors import GridError, InvalidRequest, Unavailable
from omnigrid.api.http import validation as v
from omnigrid.api.http.auth import SCOPES, Keyring
from omnigrid.api.http.handlers import Call
from omnigrid.persistence.events import parse_rfc3339
from omnigrid.persistence.keys import ApiKey, KeyStore
from omnigrid.persistence.store import StoreUnavailable

MAX_OVERLAP_S = 30 * 24 * 3600


class KeyCreate(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
    scopes: Annotated[list[str], msgspec.Meta(min_length=1, max_length=len(SCOPES))]
    channel: Id | None = None
    store: Id | None = None

    def __post_init__(self) -> None:
        unknown = sorted(set(self.scopes) - SCOPES)
        if unknown:
            raise ValueError(f"unknown scope(s): {', '.join(unknown)}")
        for name, value in (("channel", self.channel), ("store", self.store)):
            if value is not None:
                check_id(value, name)


class KeyRotate(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    overlap_s: Annotated[int, msgspec.Meta(ge=0, le=MAX_OVERLAP_S)] = 3600


async def _in_thread(work: Callable[..., Any], *args: Any) -> Any:
    try:
        return await asyncio.to_thread(work, *args)
    except StoreUnavailable as e:
        raise Unavailable("the key registry cannot be reached right now; retry later") from e


class KeyEndpoints:
    def __init__(
        self,
        store: KeyStore | None,
        keyring: Keyring | None,
        on_change: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._store = store
        self.keyring = keyring
        self.on_change = on_change

    @property
    def store(self) -> KeyStore:
        if self._store is None or self.keyring is None:
            raise Unavailable("this process has no key registry")
        return self._store

    async def _changed(self) -> None:
        if self.on_change is not None:
            await self.on_change()

    def _shown(self, key: ApiKey) -> dict[str, Any]:
        assert self.keyring is not None
        return {**key.public(), "secret": self.keyring.secret_of(key)}

    async def create(self, grid: Grid, call: Call) -> tuple[int, Any]:
        try:
            req = msgspec.convert(v.json_object(call.body), KeyCreate)
        except msgspec.ValidationError as e:
            raise InvalidRequest(str(e)) from None
        scopes = sorted(set(req.scopes))
        key = await _in_thread(self.store.create, req.name, scopes, req.channel, req.store)
        await self._changed()
        return 201, self._shown(key)

    async def list_keys(self, grid: Grid, call: Call) -> tuple[int, Any]:
        keys: list[ApiKey] = await _in_thread(self.store.all)
        return 200, {"keys": [k.public() for k in keys]}

    async def rotate(self, grid: Grid, call: Call) -> tuple[int, Any]:
        key_id = v.identifier(call.params["key_id"], "key_id")
        try:
            req = msgspec.convert(v.json_object(call.body) if call.body else {}, KeyRotate)
        except msgspec.ValidationError as e:
            raise InvalidRequest(str(e)) from None
        key = await _in_thread(self.store.rotate, key_id, req.overlap_s)
        if key is None:
            raise GridError("not_found", f"no live key {key_id!r}")
        await self._changed()
        return 200, self._shown(key)

    async def revoke(self, grid: Grid, call: Call) -> tuple[int, Any]:
        key_id = v.identifier(call.params["key_id"], "key_id")
        key = await _in_thread(self.store.revoke, key_id)
        if key is None:
            raise GridError("not_found", f"no key {key_id!r}")
        await self._changed()
        return 200, key.public()

    async def pii_access(self, grid: Grid, call: Call) -> tuple[int, Any]:
        raw = call.query_value("since")
        try:
            since = parse_rfc3339(raw, "since") if raw else 0.0
        except ValueError as e:
            raise InvalidRequest(str(e)) from None
        limit = call.query_int("limit", 1000, 1, 10_000)
        return 200, {"reads": await _in_thread(self.store.pii_access, since, limit)}
