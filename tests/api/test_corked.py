"""The corked transport on real loopback sockets, under asyncio's loop and uvloop's:
a turn's writes leave as one send, in order; close sends what was held first;
abort drops it."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any

import pytest
import uvloop

from omnigrid.api.runtime.corked import CorkedTransport


def run(loop_factory: Callable[[], asyncio.AbstractEventLoop], test: Any) -> None:
    loop = loop_factory()
    try:
        loop.run_until_complete(test())
    finally:
        loop.close()


async def pair() -> tuple[CorkedTransport, socket.socket]:
    """A corked transport writing to a plain blocking socket the test reads."""
    listener = socket.create_server(("127.0.0.1", 0))
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_connection(asyncio.Protocol, *listener.getsockname())
    peer, _ = listener.accept()
    listener.close()
    peer.settimeout(2)
    return CorkedTransport(transport, loop), peer  # type: ignore[arg-type]


def nothing_yet(peer: socket.socket) -> bool:
    peer.setblocking(False)
    try:
        peer.recv(100)
    except BlockingIOError:
        return True
    finally:
        peer.settimeout(2)
    return False


LOOPS = pytest.mark.parametrize("loop_factory", [asyncio.new_event_loop, uvloop.new_event_loop])


@LOOPS
def test_a_turns_writes_leave_together_and_in_order(
    loop_factory: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    async def test() -> None:
        corked, peer = await pair()
        corked.write(b"HTTP/1.1 200 OK\r\n\r\n")
        corked.write(bytearray(b"body"))
        corked.writelines([b"-", memoryview(b"more")])
        corked.write(b"")
        assert corked.get_write_buffer_size() == 28
        assert nothing_yet(peer)  # held until the loop turns
        await asyncio.sleep(0)
        assert peer.recv(100) == b"HTTP/1.1 200 OK\r\n\r\nbody-more"
        corked.write(b"again")  # a later turn: sent again
        await asyncio.sleep(0)
        assert peer.recv(100) == b"again"
        assert corked.get_extra_info("peername") == peer.getsockname()
        corked.write(b"complete")  # the protocol flushes a complete answer at once
        corked.flush()
        assert peer.recv(100) == b"complete"
        await asyncio.sleep(0)  # the turn's scheduled flush finds nothing left
        corked.close()
        await asyncio.sleep(0.01)
        peer.close()

    run(loop_factory, test)


@LOOPS
def test_close_sends_what_was_held_and_abort_drops_it(
    loop_factory: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    async def test() -> None:
        corked, peer = await pair()
        corked.write(b"last words")
        corked.close()
        assert corked.is_closing()
        corked.write(b"after the close")  # dropped, as the flush finds it closing
        await asyncio.sleep(0.01)
        assert peer.recv(100) == b"last words"
        assert peer.recv(100) == b""  # then the end of the stream
        peer.close()

        corked, peer = await pair()
        corked.write(b"never sent")
        corked.abort()
        await asyncio.sleep(0.01)
        try:
            got = peer.recv(100)
        except ConnectionResetError:
            got = b""
        assert got == b""
        peer.close()

    run(loop_factory, test)
