"""A grid process's part in authentication: every key in memory, reloaded from the
store and at once after a change anywhere; nonces checked by the process that
owns them (api/http/auth.py says why)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from omnigrid.actors.protocol import Command, Result
from omnigrid.api.http.admin import KeyEndpoints
from omnigrid.api.http.auth import Keyring
from omnigrid.api.http.guard import Guard
from omnigrid.api.runtime.peers import PeerLink
from omnigrid.persistence.db import Database
from omnigrid.persistence.keys import KeyStore
from omnigrid.persistence.store import StoreUnavailable

log = logging.getLogger("omnigrid.node")

KEYS_RELOAD_S = 2.0  # keys changed outside the grid (the CLI) are seen this fast
NONCE_OP = "auth.nonce"  # "is this nonce new?", to the process that owns it


class NodeKeys:
    def __init__(
        self,
        database: Database,
        server_secret: bytes,
        bootstrap_key: str,
        shard_id: int,
        owner_of: Callable[[str], int],
        links: dict[int, PeerLink],
        ask_all: Callable[[str], Awaitable[Any]],
        always_on: bool = False,
    ) -> None:
        self.shard_id = shard_id
        self.owner_of = owner_of
        self.links = links
        self.ask_all = ask_all
        self.store = KeyStore(database)
        self.keyring = Keyring(server_secret, bootstrap_key, always_on)
        try:
            self.keyring.load(self.store.all())
        except StoreUnavailable as e:  # closed until the reload loop reads them
            log.warning("the API keys cannot be read: %s", e)
        self.guard = Guard(self.keyring, self.first_use, self.log_unmask)
        self.nonces = self.guard.nonces  # the nonces this process owns
        self.endpoints = KeyEndpoints(self.store, self.keyring, self.changed)

    async def first_use(self, token: str, owner_key: str | None) -> bool:
        """Whether a nonce (``"<key id>:<nonce>"``) is new, asked of the process that
        owns ``owner_key`` (the request's entity), else the nonce's own slot, so a
        request replayed to any process is caught."""
        owner = self.owner_of(owner_key or f"nonce:{token}")
        link = self.links.get(owner)
        if owner == self.shard_id or link is None:
            return self.nonces.first_use_token(token)
        try:
            result = await link.call(Command(NONCE_OP, "", {"token": token}))
        except Exception:  # its owner is away: this process remembers it meanwhile
            return self.nonces.first_use_token(token)
        return bool(result.body)

    def serve_nonce(self, cmd: Command) -> Result:
        return Result(200, self.nonces.first_use_token(cmd.args["token"]))

    async def log_unmask(self, key_id: str, route: str, uid: str | None) -> None:
        await asyncio.to_thread(self.store.log_pii_access, key_id, route, uid)

    async def reload(self) -> None:
        self.keyring.load(await asyncio.to_thread(self.store.all))

    async def changed(self) -> None:
        """A key was created, rotated or revoked: every process reloads at once."""
        await self.reload()
        await self.ask_all("reload_keys")

    async def reload_forever(self) -> None:
        while True:  # keys changed by ``omnigrid keys`` on a host reach every process
            await asyncio.sleep(KEYS_RELOAD_S)
            try:
                await self.reload()
            except Exception as e:
                log.warning("the keys cannot be reloaded: %r", e)
