"""Key -> slot -> owner shard, then run the command where the owner lives.

A command whose key this process owns runs in place, synchronously, with no
serialisation at all; any other goes to its owner through that owner's
``PeerLink`` micro-batcher. A "moved" answer carries the owner's newer slot
map; the router adopts it and tries again.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from omnigrid.actors.errors import GridError, Unavailable
from omnigrid.actors.protocol import ALIASED, MOVED, Command, Result
from omnigrid.actors.shard import QUERY, Shard
from omnigrid.actors.slots import SlotMap
from omnigrid.api.http.nonce_claim import PENDING, NonceCheck, PendingNonce, replayed
from omnigrid.api.runtime.peers import PeerLink

MAX_REDIRECTS = 3
REDIRECT_PAUSE_S = 0.05


class Router:
    def __init__(self, shard: Shard, links: dict[int, PeerLink]) -> None:
        self.shard = shard
        self.links = links
        self.slot_map = shard.slot_map
        self._local: list[tuple[Command, asyncio.Future[Result]]] = []
        # a signed request's nonce (api/http/nonce_claim.py): this process's book, and
        # the check on its own at the owner's; none wired: no nonce is ever pending
        self.first_use: Callable[[str], bool] = lambda token: True
        self.nonce_check: NonceCheck | None = None
        # told of every newer map it adopts (the node links to new shards)
        self.on_new_map: Callable[[SlotMap], None] = lambda slot_map: None

    def _run_local(self, cmd: Command) -> asyncio.Future[Result]:
        """Queue a command for this process's shard; the queue runs as one batch.

        Everything that arrives in one turn of the event loop is one group
        commit to the journal, the same as a forwarded batch.
        """
        fut: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        if not self._local:
            asyncio.get_running_loop().call_soon(self._drain_local)
        self._local.append((cmd, fut))
        return fut

    def _drain_local(self) -> None:
        batch, self._local = self._local, []
        results = self.shard.apply_batch([cmd for cmd, _ in batch])
        for (_, fut), result in zip(batch, results, strict=True):
            if not fut.done():
                fut.set_result(result)

    def adopt(self, slot_map: SlotMap) -> None:
        if slot_map.version > self.slot_map.version:
            self.slot_map = slot_map
            self.on_new_map(slot_map)

    async def _send(self, owner: int, cmd: Command) -> Result:
        pending = PENDING.get()
        if pending is not None and not pending.claimed:
            cmd = await self._claim(pending, owner, cmd)
        if owner == self.shard.shard_id:
            return await self._run_local(cmd)
        link = self.links.get(owner)
        if link is None:
            raise Unavailable(f"shard {owner} is not known to this process")
        return await link.call(cmd)

    async def _claim(self, pending: PendingNonce, owner: int, cmd: Command) -> Command:
        """The request's nonce goes with its first command to its entity's owner
        (checked here when that is this process); a write elsewhere first waits for
        a check on its own. Reads elsewhere go ahead: they apply nothing."""
        nonce_owner = self.slot_map.owner(pending.key)
        if owner == nonce_owner:
            pending.claimed = True  # before any await: a gathered sibling sees it taken
            if owner != self.shard.shard_id:  # a copy: a redirect resends it without
                c = cmd  # (dataclasses.replace costs several times this)
                return Command(
                    c.op,
                    c.key,
                    c.args,
                    c.channel,
                    c.idempotency_key,
                    c.fingerprint,
                    c.if_match,
                    pending.token,
                )
            if not self.first_use(pending.token):
                raise replayed()
            return cmd
        if cmd.op == QUERY:
            return cmd
        pending.claimed = True
        if self.nonce_check is not None and not await self.nonce_check(pending.token, pending.key):
            raise replayed()
        return cmd

    def is_local(self, key: str) -> bool:
        return self.slot_map.owner(key) == self.shard.shard_id

    async def call(self, cmd: Command) -> Result:
        for attempt in range(MAX_REDIRECTS + 1):
            result = await self._send(self.slot_map.owner(cmd.key), cmd)
            if result.status == ALIASED:  # a merged user: the command is the survivor's
                kind = cmd.key.partition(":")[0]
                cmd = dataclasses.replace(cmd, key=f"{kind}:{result.body['into']}")
                continue
            if result.status != MOVED:
                return result
            self.adopt(SlotMap.from_wire(result.body))
            if attempt:
                await asyncio.sleep(REDIRECT_PAUSE_S)
        raise Unavailable("the slot map is changing; try again")

    async def query(self, asks: Mapping[str, str], redirects: int = 0) -> dict[str, Any]:
        """Declared queries (Kind.queries), key -> query name, of entities of any kinds:
        key -> answer (``None``: never seen); one command per owner shard, all at once."""
        groups: dict[int, dict[str, str]] = {}
        for key, name in asks.items():
            groups.setdefault(self.slot_map.owner(key), {})[key] = name
        results = await asyncio.gather(
            *(
                self._send(owner, Command(QUERY, next(iter(group)), {"asks": group}))
                for owner, group in groups.items()
            )
        )
        out: dict[str, Any] = {}
        moved: dict[str, str] = {}
        for group, result in zip(groups.values(), results, strict=True):
            if result.status == MOVED:
                self.adopt(SlotMap.from_wire(result.body))
                moved.update(group)
            elif result.ok:
                out.update(result.body)
            else:  # the owner refused the read (its store is unreachable, say)
                raise GridError(result.code or "unavailable", result.detail or "", result.status)
        if moved:
            if redirects >= MAX_REDIRECTS:
                raise Unavailable("the slot map is changing; try again")
            await asyncio.sleep(REDIRECT_PAUSE_S)
            out.update(await self.query(moved, redirects + 1))
        return out
