"""The registry of entity kinds: a key ``"<kind>:<ident>"`` names its class."""

from __future__ import annotations

from omnigrid.actors.cart import Cart
from omnigrid.actors.entity import Entity
from omnigrid.actors.stock import Stock

ENTITY_KINDS: dict[str, type[Entity]] = {cls.kind: cls for cls in (Cart, Stock)}


def entity_key(kind: str, ident: str) -> str:
    return f"{kind}:{ident}"


def split_key(key: str) -> tuple[type[Entity] | None, str]:
    """The entity class a key names (``None`` for an unknown kind) and its ident."""
    kind, _, ident = key.partition(":")
    return ENTITY_KINDS.get(kind), ident
