"""A lean locust user: one persistent HTTP/1.1 connection per user, nothing else.

Why not FastHttpUser: at 100,000 users the load generator shares the grid's two
cores, and FastHttpUser cost 347 µs of CPU per request here against this
client's 196 µs (``loadtest/client_cost.py``, BENCHMARKS.md): URL building, a
header dictionary, a connection pool with a liveness check, a response object
with parsed headers. These users only ever speak to the grid, whose answers
always carry ``content-length``, so a request is one ``sendall`` of prebuilt
bytes and the answer is read by its status line and length. Each user opens its
connection with its first request and keeps it; one the grid closed while the
user thought (its keep-alive is 75 s) is noticed before sending and opened
again. A connection that breaks mid-request is a failure, and the next request
opens a new one. Nothing is retried, so a write is never sent twice.

Every request is reported to locust's statistics like any other client's
(``events.request``), so the CSV/HTML reports and percentiles are locust's own.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlsplit

import gevent.monkey
import gevent.socket
import orjson
from locust import User
from locust.exception import LocustError

_NO_BODY_STATUS = frozenset((204, 304))
# The real poll(), not gevent's: a zero-timeout check that never yields to the hub
# (and, unlike select(), takes descriptors above 1,023).
_poll = gevent.monkey.get_original("select", "poll")
_POLLIN = gevent.monkey.get_original("select", "POLLIN")


class ConnectionClosed(ConnectionError):
    """The grid closed the connection before the whole answer arrived."""


class HttpStatusError(Exception):
    """An answer whose status the journey did not expect (counted as a failure)."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"HTTP {status}: {body[:120]!r}")
        self.status = status


class Reply:
    """Status and body of one answer; ``json()`` parses the body when asked."""

    __slots__ = ("body", "status")

    def __init__(self, status: int, body: bytes) -> None:
        self.status = status
        self.body = body

    def json(self) -> Any:
        return orjson.loads(self.body)


class Connection:
    """One keep-alive HTTP/1.1 connection, opened on first use and after a failure."""

    def __init__(self, host: str, port: int) -> None:
        self.address = (host, port)
        self.host_header = f"Host: {host}:{port}\r\n"
        self.sock: gevent.socket.socket | None = None
        self.idle_poller: Any = None  # watches the open socket between requests
        self.buffer = b""

    def open(self) -> None:
        sock = gevent.socket.create_connection(self.address, timeout=60.0)
        sock.setsockopt(gevent.socket.IPPROTO_TCP, gevent.socket.TCP_NODELAY, 1)
        self.idle_poller = _poll()
        self.idle_poller.register(sock.fileno(), _POLLIN)
        self.sock, self.buffer = sock, b""

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        self.sock, self.idle_poller, self.buffer = None, None, b""

    def request_bytes(self, method: str, path: str, channel: str, payload: bytes) -> bytes:
        """One request to the grid, as sent: JSON body (possibly empty), channel header."""
        return (
            f"{method} {path} HTTP/1.1\r\n{self.host_header}X-Channel: {channel}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
        ).encode() + payload

    def _closed_while_idle(self) -> bool:
        """A keep-alive connection readable between requests has been closed by the grid.

        The grid closes connections idle for longer than its keep-alive (75 s);
        a shopper whose tasks made no request can think for longer than that.
        """
        return bool(self.idle_poller.poll(0))

    def exchange(self, request: bytes) -> Reply:
        if self.sock is not None and self._closed_while_idle():
            self.close()
        if self.sock is None:
            self.open()
        assert self.sock is not None
        try:
            self.sock.sendall(request)
            return self._read()
        except BaseException:
            self.close()  # half a request or half an answer: this connection is done
            raise

    def _recv(self) -> None:
        assert self.sock is not None
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionClosed("the grid closed the connection")
        self.buffer += chunk

    def _read(self) -> Reply:
        while (end := self.buffer.find(b"\r\n\r\n")) < 0:
            self._recv()
        head = self.buffer[:end].lower()
        status = int(head[9:12])
        at = head.find(b"\r\ncontent-length:")
        if at >= 0:
            start = at + 17
            stop = head.find(b"\r\n", start)
            length = int(head[start:] if stop < 0 else head[start:stop])
        elif status in _NO_BODY_STATUS or 100 <= status < 200:
            length = 0
        else:
            raise LocustError(f"answer without content-length: {head[:200]!r}")
        total = end + 4 + length
        while len(self.buffer) < total:
            self._recv()
        body = self.buffer[end + 4 : total]
        self.buffer = self.buffer[total:]
        if b"\r\nconnection: close" in head:
            self.close()
        return Reply(status, body)


class LeanHttpUser(User):
    """A locust user holding one connection to ``host`` for its whole life."""

    abstract = True

    def __init__(self, environment: Any) -> None:
        super().__init__(environment)
        if not self.host:
            raise LocustError("LeanHttpUser needs a host (--host or the class attribute)")
        url = urlsplit(self.host)
        self.connection = Connection(url.hostname or "127.0.0.1", url.port or 80)
        self._fire = environment.events.request.fire

    def on_stop(self) -> None:
        self.connection.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        name: str,
        channel: str,
        body: Any = None,
        expect: tuple[int, ...] = (200,),
    ) -> Reply | None:
        """Send one request; report it; the reply if its status is in ``expect``.

        A status outside ``expect`` (or a broken connection) is reported as a
        failure and gives None.
        """
        # orjson: 0.2 µs a body against json.dumps's 5.4 µs (and 1 µs a parse against
        # 7 µs), measured here; the generator shares the grid's cores
        payload = b"" if body is None else orjson.dumps(body)
        raw = self.connection.request_bytes(method, path, channel, payload)
        started = time.perf_counter()
        reply: Reply | None = None
        error: Exception | None = None
        try:
            reply = self.connection.exchange(raw)
            if reply.status not in expect:
                error = HttpStatusError(reply.status, reply.body)
        except (OSError, ConnectionError, ValueError, LocustError) as e:
            error = e
        self._fire(
            request_type=method,
            name=name,
            response_time=(time.perf_counter() - started) * 1000,
            response_length=len(reply.body) if reply else 0,
            exception=error,
            context={},
        )
        return None if error else reply
