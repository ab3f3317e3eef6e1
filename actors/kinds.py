"""The registry of entity kinds: a key ``"<kind>:<ident>"`` names its kind.

The grid's own kinds are registered here; a deployment (or a test) adds more
by naming modules that define a ``KIND`` (``OMNIGRID_KIND_MODULES``, ``load``).
Everything kind-specific the grid serves is derived from this registry.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable

from omnigrid.actors import (
    cart,
    coupon,
    identifier,
    identity,
    member,
    merge,
    order_lists,
    order_saga,
    product,
    stock,
    wallet,
)
from omnigrid.actors.declaration import Kind, Refusal
from omnigrid.actors.errors import COMMON_CODES, forget_code, register_code

_KINDS: dict[str, Kind] = {}


def register(kind: Kind) -> None:
    """Add a kind; its name, ops, routes and codes must not clash with another's."""
    if kind.name in _KINDS:
        if _KINDS[kind.name] is kind:
            return
        raise ValueError(f"an entity kind named {kind.name!r} is registered already")
    paths = {(r.method, r.path) for k in _KINDS.values() for r in k.routes}
    names = {r.name for k in _KINDS.values() for r in k.routes}
    for route in kind.routes:
        if (route.method, route.path) in paths or route.name in names:
            raise ValueError(f"{kind.name}: route {route.name} is taken")
    if kind.stream is not None:  # kinds may share a stream path: the same stream
        same = (kind.stream.path, kind.stream.name, kind.ident)
        for other in _KINDS.values():
            if other.stream is None or other.stream.path != kind.stream.path:
                continue
            if (other.stream.path, other.stream.name, other.ident) != same:
                raise ValueError(f"{kind.name}: stream {kind.stream.path} is taken")
    for refusal in kind.refusals:
        register_code(refusal.code, refusal.status, refusal.title)
    _KINDS[kind.name] = kind


def unregister(kind: Kind) -> None:
    """Take a kind out again (tests that register one of their own)."""
    if _KINDS.get(kind.name) is not kind:
        return
    del _KINDS[kind.name]
    in_use = {r.code for k in _KINDS.values() for r in k.refusals} | set(COMMON_CODES)
    for refusal in kind.refusals:
        if refusal.code not in in_use:
            forget_code(refusal.code)


def load(modules: Iterable[str]) -> None:
    """Import modules that each define ``KIND`` and register their kinds."""
    for name in modules:
        module = importlib.import_module(name)
        register(module.KIND)


def kinds() -> tuple[Kind, ...]:
    return tuple(_KINDS.values())


def kind_named(name: str) -> Kind | None:
    return _KINDS.get(name)


def split_key(key: str) -> tuple[Kind | None, str]:
    """The kind a key names (``None`` for an unknown one) and its ident."""
    name, _, ident = key.partition(":")
    return _KINDS.get(name), ident


def refusals() -> tuple[Refusal, ...]:
    """Every error code: the common ones, then each kind's."""
    common = tuple(Refusal(code, status, title) for code, (status, title) in COMMON_CODES.items())
    return common + tuple(r for kind in _KINDS.values() for r in kind.refusals)


register(stock.KIND)
register(product.KIND)
register(cart.KIND)
register(member.KIND)
register(identifier.KIND)
register(identity.KIND)
register(merge.KIND)
register(order_saga.KIND)
register(order_lists.USER_KIND)
register(order_lists.STORE_KIND)
register(coupon.KIND)
register(wallet.KIND)
