"""Webhook signatures, the way Stripe signs: HMAC-SHA256 over ``<timestamp>.<body>``.

A delivery carries ``Omnigrid-Signature: t=<unix seconds>,v1=<hex digest>``. A
receiver recomputes the digest with the webhook's secret and refuses a delivery
whose timestamp is older than its tolerance (a replayed request).
"""

from __future__ import annotations

import hashlib
import hmac
import time

HEADER = "Omnigrid-Signature"
TOLERANCE_S = 300.0


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    t = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode(), b"%d." % t + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={digest}"


def verify(
    secret: str,
    header: str,
    body: bytes,
    tolerance_s: float = TOLERANCE_S,
    now: float | None = None,
) -> bool:
    """Whether ``header`` signs ``body`` with ``secret``, within the tolerance window."""
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        t = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - t) > tolerance_s:
        return False
    expected = hmac.new(secret.encode(), b"%d." % t + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, parts.get("v1", ""))
