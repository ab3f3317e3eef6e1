"""The lean channel between grid processes: length-prefixed msgpack frames.

Measured on these machines, a Ray actor call costs about as much as the Redis
round trip the grid replaces, so commands for another process travel over a
direct stream instead (a Unix socket on the same node, TCP across nodes). Ray
still finds the stream's address (through the owner's actor handle) and
restarts processes that die.

A ``PeerLink`` is a micro-batcher: while one batch to a peer is in flight,
everything else for that peer waits in the next batch, so a flood costs one
frame per round trip, never one message per command. Its queue is bounded:
past ``max_pending`` a caller is told to back off (429) instead of growing
memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgpack

from omnigrid.actors.errors import Overloaded, Unavailable
from omnigrid.actors.protocol import Command, Result

log = logging.getLogger("omnigrid.peers")
_LENGTH = struct.Struct("!I")
MAX_FRAME_BYTES = 256 * 1024 * 1024
UNREACHABLE = "the owner of this entity cannot be reached; nothing was applied; retry later"
OUTCOME_UNKNOWN = (
    "the owner of this entity stopped answering after the request reached it: it may "
    "have been applied; retry with the same Idempotency-Key"
)


@dataclass(frozen=True, slots=True)
class PeerAddress:
    node_id: str
    unix_path: str | None
    host: str
    port: int


async def read_frame(reader: asyncio.StreamReader) -> Any:
    header = await reader.readexactly(_LENGTH.size)
    (size,) = _LENGTH.unpack(header)
    if size > MAX_FRAME_BYTES:
        raise ConnectionError(f"frame of {size} bytes is over the limit")
    return msgpack.unpackb(await reader.readexactly(size), use_list=True)


def frame(payload: Any) -> bytes:
    body: bytes = msgpack.packb(payload, use_bin_type=True)
    return _LENGTH.pack(len(body)) + body


class PeerLink:
    """Sends commands to one peer in micro-batches over one connection."""

    def __init__(
        self,
        peer_id: int,
        resolve: Callable[[], Awaitable[PeerAddress]],
        local_node_id: str,
        max_pending: int = 10_000,
        timeout_s: float = 5.0,
        on_batch: Callable[[int, int], None] | None = None,
    ) -> None:
        self.peer_id = peer_id
        self._resolve = resolve
        self._local_node_id = local_node_id
        self.max_pending = max_pending
        self.timeout_s = timeout_s
        self._on_batch = on_batch
        self._queue: list[tuple[list[Any], asyncio.Future[Result]]] = []
        self._sending = False
        self._sent = False  # the batch in flight has been written to the peer
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    @property
    def pending(self) -> int:
        return len(self._queue)

    def call(self, cmd: Command) -> asyncio.Future[Result]:
        """Queue one command; the future resolves with its result."""
        return self.call_wire(cmd.to_wire())

    def call_wire(self, wire: list[Any]) -> asyncio.Future[Result]:
        if len(self._queue) >= self.max_pending:
            raise Overloaded(f"{len(self._queue)} commands already wait for shard {self.peer_id}")
        fut: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._queue.append((wire, fut))
        if not self._sending:
            self._sending = True
            asyncio.get_running_loop().create_task(self._drain())
        return fut

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                self._sent = False
                try:
                    results = await asyncio.wait_for(self._round_trip(batch), self.timeout_s)
                except Exception as e:  # a socket's error, a timeout, Ray unable to say where
                    # the peer is (the actor restarting): the batch's callers must hear back
                    await self._close()
                    log.warning("shard %d is unreachable: %r", self.peer_id, e)
                    # once the batch left, the owner may have applied (and journaled) it
                    # before it died: the caller must not take this answer as a refusal
                    error = Unavailable(OUTCOME_UNKNOWN if self._sent else UNREACHABLE)
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(error)
                    continue
                for (_, fut), wire in zip(batch, results, strict=True):
                    if not fut.done():
                        fut.set_result(Result.from_wire(wire))
        finally:
            self._sending = False

    async def _round_trip(self, batch: list[tuple[list[Any], asyncio.Future[Result]]]) -> Any:
        if self._reader is not None and self._reader.at_eof():
            # The peer hung up while idle (it died or restarted): nothing of this
            # batch was sent yet, so a fresh connection is safe.
            await self._close()
        if self._writer is None:
            await self._connect()
        assert self._reader is not None and self._writer is not None
        if self._on_batch is not None:
            self._on_batch(self.peer_id, len(batch))
        self._writer.write(frame([wire for wire, _ in batch]))
        self._sent = True
        results = await read_frame(self._reader)
        if not isinstance(results, list) or len(results) != len(batch):
            raise ValueError("the peer answered a batch with the wrong number of results")
        return results

    async def _connect(self) -> None:
        address = await self._resolve()
        if address.unix_path and address.node_id == self._local_node_id:
            self._reader, self._writer = await asyncio.open_unix_connection(address.unix_path)
        else:
            self._reader, self._writer = await asyncio.open_connection(address.host, address.port)

    async def _close(self) -> None:
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def close(self) -> None:
        await self._close()


Serve = Callable[[list[Any]], list[Any]]


async def serve_connection(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, serve: Serve
) -> None:
    """Answer batches from one peer until it hangs up: one frame in, one frame out."""
    try:
        while True:
            batch = await read_frame(reader)
            writer.write(frame(serve(batch)))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, OSError):
        pass
    finally:
        writer.close()
