"""The floor under any Python HTTP service on this machine: an ASGI app that does nothing.

    python -m uvicorn loadtest.floor:app --uds /tmp/s.sock --http httptools --loop uvloop

Every request gets the same cart-shaped JSON (the size of a small cart view, with a
``reservation_id`` for the journeys that hold stock), its body read and dropped:
201 to a ``POST .../reservations``, 404 to ``/metrics`` (the floor keeps no
histogram), 200 to anything else. Served by uvicorn (httptools,
uvloop) behind the grid's nginx (``loadtest/baseline_front.py --floor``), its CPU
per request is what the stack alone costs (the kernel's sockets, nginx, uvicorn's
protocol and one ASGI call), with no routing, validation, state or storage: no
service on this stack, the grid included, can cost less per request.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

Message = MutableMapping[str, Any]

ANSWER = orjson.dumps(
    {
        "uid": "floor",
        "version": 1,
        "lines": [{"sku": "SKU-0001", "qty": 1, "available": 10**8, "in_stock": True}],
        "reservation_id": "r-floor",
        "updated_at": "2026-11-30T00:00:00.000Z",
    }
)
HEADERS = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(ANSWER))]


async def app(
    scope: MutableMapping[str, Any],
    receive: Callable[[], Awaitable[Message]],
    send: Callable[[Message], Awaitable[None]],
) -> None:
    if scope["type"] != "http":
        return
    more = True
    while more:  # the body, read and dropped, as a service must read it
        message = await receive()
        more = message.get("more_body", False)
    path: str = scope["path"]
    status = 200
    if path == "/metrics":
        status = 404
    elif scope["method"] == "POST" and path.endswith("/reservations"):
        status = 201
    await send({"type": "http.response.start", "status": status, "headers": HEADERS})
    await send({"type": "http.response.body", "body": ANSWER})
