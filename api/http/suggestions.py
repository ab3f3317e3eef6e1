"""Merge suggestions: users who share a device, an address or a payment account.

Behaviour events may carry ``properties`` with a ``device_id``, an ``address``
or a ``payment`` account. The values are evidence that two uids are one
person; they are kept only as keyed hashes (what matching needs) and masked
forms, never in clear (persistence/behaviour.py, ``omnigrid_evidence``).
``GET /v1/users/{uid}/merge-suggestions`` lists the other uids that share any,
with the evidence and a score. Nothing is ever merged automatically.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import msgspec

from omnigrid.actors import identifiers
from omnigrid.actors.errors import InvalidRequest
from omnigrid.persistence.behaviour import Evidence
from omnigrid.persistence.events import rfc3339

MAX_PROPERTY_CHARS = 256
MAX_SUGGESTIONS = 20
# How much one kind of shared evidence says on its own; several combine as
# independent signs: 1 - (1 - a)(1 - b).
WEIGHTS = {"payment": 0.7, "device_id": 0.5, "address": 0.4}
SPACES = re.compile(r"\s+")


class Properties(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The document's shape of an event's ``properties`` (``evidence_of`` checks it)."""

    device_id: Annotated[str, msgspec.Meta(max_length=MAX_PROPERTY_CHARS)] | None = None
    address: Annotated[str, msgspec.Meta(max_length=MAX_PROPERTY_CHARS)] | None = None
    payment: (
        Annotated[str, msgspec.Meta(max_length=MAX_PROPERTY_CHARS, description="a payment account")]
        | None
    ) = None


class EvidenceView(msgspec.Struct, kw_only=True):
    kind: Literal["device_id", "address", "payment"]
    value: Annotated[str, msgspec.Meta(description="masked")]
    seen_at: str


class Suggestion(msgspec.Struct, kw_only=True):
    uid: str
    evidence: list[EvidenceView]
    score: float


class Suggestions(msgspec.Struct, kw_only=True):
    suggestions: list[Suggestion]


def evidence_of(properties: Any, at: float) -> list[Evidence]:
    """An event's properties as evidence: hashed and masked (a refusal echoes no value)."""
    if properties is None:
        return []
    if not isinstance(properties, dict):
        raise InvalidRequest("properties must be an object")
    unknown = properties.keys() - WEIGHTS.keys()
    if unknown:
        raise InvalidRequest(f"unknown properties: {', '.join(sorted(unknown))}")
    out = []
    for kind, value in properties.items():
        if value is None:
            continue
        if not isinstance(value, str) or not value.strip() or len(value) > MAX_PROPERTY_CHARS:
            raise InvalidRequest(f"properties.{kind} must be a string of 1-256 characters")
        normal = SPACES.sub(" ", value.strip().lower())
        out.append(Evidence(kind, identifiers.digest(kind, normal), _shown(kind, normal), at))
    return out


def _shown(kind: str, normal: str) -> str:
    if kind == "device_id":
        return normal[:64]
    if kind == "payment":
        return "****" + normal[-4:]
    return normal[:6] + "***"  # an address: enough to recognise, not to find


def suggestions(shared: list[tuple[str, str, str, float]]) -> dict[str, Any]:
    """Group (other uid, kind, shown, seen_at) rows by uid and score each uid."""
    by_uid: dict[str, dict[tuple[str, str], float]] = {}
    for uid, kind, shown, seen_at in shared:
        seen = by_uid.setdefault(uid, {})
        seen[(kind, shown)] = max(seen_at, seen.get((kind, shown), 0.0))
    out: list[dict[str, Any]] = []
    for uid, seen in by_uid.items():
        doubt = 1.0
        for kind in {kind for kind, _ in seen}:
            doubt *= 1 - WEIGHTS[kind]
        evidence = [{"kind": k, "value": s, "seen_at": rfc3339(t)}
                    for (k, s), t in sorted(seen.items(), key=lambda i: -i[1])]  # fmt: skip
        out.append({"uid": uid, "evidence": evidence, "score": round(1 - doubt, 2)})
    out.sort(key=lambda s: (-float(s["score"]), str(s["uid"])))
    return {"suggestions": out[:MAX_SUGGESTIONS]}
