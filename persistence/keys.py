"""API keys as the store keeps them: who may call, with which scopes, as which channel
and store. No secret is stored: a key's secret is derived from the deployment's
secret, its id and its generation (api/http/auth.py), so the store holds nothing
a reader could sign with. Every grid process keeps all keys in memory and reloads
them from here (api/runtime/keyring.py)."""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from omnigrid.persistence.db import Database
from omnigrid.persistence.events import rfc3339


@dataclass(frozen=True, slots=True)
class ApiKey:
    key_id: str
    name: str
    scopes: tuple[str, ...]
    channel: str | None
    store: str | None
    generation: int
    previous_generation: int | None
    previous_until: float | None
    created_at: float
    revoked_at: float | None

    def public(self) -> dict[str, Any]:
        """What ``GET /v1/admin/keys`` shows: never a secret."""
        return {
            "key_id": self.key_id,
            "name": self.name,
            "scopes": list(self.scopes),
            "channel": self.channel,
            "store": self.store,
            "created_at": rfc3339(self.created_at),
            "revoked_at": rfc3339(self.revoked_at),
            "previous_valid_until": rfc3339(self.previous_until),
        }


_COLUMNS = (
    "id, name, scopes, channel, store, generation, previous_generation, previous_until, "
    "created_at, revoked_at"
)


class KeyStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def create(
        self, name: str, scopes: Sequence[str], channel: str | None, store: str | None
    ) -> ApiKey:
        key = ApiKey(
            "k_" + secrets.token_hex(8),
            name,
            tuple(scopes),
            channel,
            store,
            1,
            None,
            None,
            time.time(),
            None,
        )
        self.db.execute(
            f"INSERT INTO omnigrid_keys ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                key.key_id,
                key.name,
                orjson.dumps(list(key.scopes)).decode(),
                key.channel,
                key.store,
                key.generation,
                None,
                None,
                key.created_at,
                None,
            ),
        )
        return key

    def all(self) -> list[ApiKey]:
        rows = self.db.query(f"SELECT {_COLUMNS} FROM omnigrid_keys ORDER BY created_at")
        return [_key(row) for row in rows]

    def get(self, key_id: str) -> ApiKey | None:
        rows = self.db.query(f"SELECT {_COLUMNS} FROM omnigrid_keys WHERE id = ?", (key_id,))
        return _key(rows[0]) if rows else None

    def rotate(self, key_id: str, overlap_s: float) -> ApiKey | None:
        """A new generation; the current one stays valid for ``overlap_s``."""
        key = self.get(key_id)
        if key is None or key.revoked_at is not None:
            return None
        until = time.time() + overlap_s
        self.db.execute(
            "UPDATE omnigrid_keys SET generation = ?, previous_generation = ?, "
            "previous_until = ? WHERE id = ?",
            (key.generation + 1, key.generation, until, key_id),
        )
        return self.get(key_id)

    def revoke(self, key_id: str) -> ApiKey | None:
        key = self.get(key_id)
        if key is None:
            return None
        if key.revoked_at is None:
            self.db.execute(
                "UPDATE omnigrid_keys SET revoked_at = ? WHERE id = ?", (time.time(), key_id)
            )
        return self.get(key_id)

    def log_pii_access(self, key_id: str, route: str, uid: str | None) -> None:
        self.db.execute(
            "INSERT INTO omnigrid_pii_access (key_id, route, uid, at) VALUES (?, ?, ?, ?)",
            (key_id, route, uid, time.time()),
        )

    def pii_access(self, since: float, limit: int) -> list[dict[str, Any]]:
        rows = self.db.query(
            "SELECT key_id, route, uid, at FROM omnigrid_pii_access WHERE at >= ? "
            "ORDER BY at LIMIT ?",
            (since, limit),
        )
        return [{"key_id": k, "route": r, "uid": u, "at": rfc3339(a)} for k, r, u, a in rows]


def _key(row: Sequence[Any]) -> ApiKey:
    kid, name, scopes, channel, store, gen, prev, until, created, revoked = row
    return ApiKey(
        kid,
        name,
        tuple(orjson.loads(scopes)),
        channel,
        store,
        int(gen),
        None if prev is None else int(prev),
        until,
        float(created),
        revoked,
    )
