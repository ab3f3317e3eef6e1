"""Signing requests to a grid: ``httpx.Client(auth=GridAuth(key_id, secret))``.

The scheme (``OG1-HMAC-SHA256``, ``shared/API-v2.md``): the method, the target
as sent (path, and ``?`` with the raw query), the time, a fresh nonce and the
SHA-256 of the body, signed with the key's secret."""

from __future__ import annotations

import secrets
import time
from collections.abc import Generator

import httpx

from omnigrid.api.http.auth import SCHEME, signature


class GridAuth(httpx.Auth):
    requires_request_body = True

    def __init__(self, key_id: str, secret: str) -> None:
        self.key_id = key_id
        self.secret = secret

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = self.header(
            request.method, request.url.raw_path.decode("ascii"), request.content
        )
        yield request

    def header(self, method: str, target: str, body: bytes, ts: int | None = None) -> str:
        """The Authorization header of one request (a fresh nonce each time)."""
        stamp = str(int(time.time()) if ts is None else ts)
        nonce = secrets.token_hex(16)
        sig = signature(self.secret, method, target, stamp, nonce, body)
        return f"{SCHEME} key={self.key_id}, ts={stamp}, nonce={nonce}, sig={sig}"
