"""uvicorn's HTTP protocol with two bounds a hostile client cannot get around.

- A request whose headers do not arrive whole within ``header_timeout_s`` of its
  first byte (or of the connection) is cut: a client that sends half a request
  line and waits holds nothing for long.
- Each client address may hold at most ``max_per_client`` connections per
  process; more are closed at once. Trusted addresses (loopback by default: the
  load harness, a local proxy) are not counted.

Idle keep-alive connections are uvicorn's own ``timeout_keep_alive``. Its writes
go through a ``CorkedTransport``: one send per loop turn, not one per write.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from omnigrid.api.runtime.corked import CorkedTransport


class Bounds:
    """The bounds of one process, and its connections per client address."""

    def __init__(
        self, header_timeout_s: float, max_per_client: int, trusted: Iterable[str] = ()
    ) -> None:
        self.header_timeout_s = header_timeout_s
        self.max_per_client = max_per_client
        self.trusted = frozenset(trusted)
        self.per_client: dict[str, int] = {}
        self.cut_slow = 0  # connections cut for headers that did not come in time
        self.refused = 0  # connections refused over an address's bound

    def protocol(self) -> type[HttpToolsProtocol]:
        bounds = self

        class GuardedHttp(HttpToolsProtocol):
            _timer: asyncio.TimerHandle | None = None
            _counted: str | None = None

            def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
                # a response's headers and body in one send (api/runtime/corked.py)
                super().connection_made(CorkedTransport(transport, self.loop))
                host = self.client[0] if self.client else ""
                if host and host not in bounds.trusted and bounds.max_per_client > 0:
                    held = bounds.per_client.get(host, 0)
                    if held >= bounds.max_per_client:
                        bounds.refused += 1
                        transport.abort()
                        return
                    bounds.per_client[host] = held + 1
                    self._counted = host
                self._arm()

            def on_message_begin(self) -> None:
                super().on_message_begin()
                if self._timer is None:
                    self._arm()

            def on_headers_complete(self) -> None:
                self._disarm()
                super().on_headers_complete()

            def on_response_complete(self) -> None:
                # a whole answer leaves now, in one send, not at the loop's next turn
                if isinstance(self.transport, CorkedTransport):
                    self.transport.flush()
                super().on_response_complete()

            def connection_lost(self, exc: Exception | None) -> None:
                self._disarm()
                if self._counted is not None:
                    left = bounds.per_client.get(self._counted, 1) - 1
                    if left > 0:
                        bounds.per_client[self._counted] = left
                    else:
                        bounds.per_client.pop(self._counted, None)
                    self._counted = None
                super().connection_lost(exc)

            def _arm(self) -> None:
                if bounds.header_timeout_s > 0:
                    self._timer = self.loop.call_later(bounds.header_timeout_s, self._too_slow)

            def _disarm(self) -> None:
                if self._timer is not None:
                    self._timer.cancel()
                    self._timer = None

            def _too_slow(self) -> None:
                self._timer = None
                if self.cycle is None or self.cycle.response_complete:  # no request in flight
                    bounds.cut_slow += 1
                    self.transport.abort()

        return GuardedHttp

    def gauges(self) -> dict[str, Any]:
        return {"cut_slow": self.cut_slow, "refused": self.refused,
                "clients": len(self.per_client)}  # fmt: skip
