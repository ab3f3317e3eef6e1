"""Bytes of memory per entity, as a shard holds it after recovery.

    python loadtest/entity_memory.py [count] [--kind cart|member|identifier|identity]

Packs ``count`` typical entities of the kind the way the store keeps them
(a five-line cart; a member with three earns, a redemption and a spend; a
bound identifier; a user with two identifiers), unpacks them all (what a shard
does when it recovers), and divides the growth of this process's RSS by their
count.
"""

from __future__ import annotations

import argparse
import gc
import time
from collections.abc import Callable
from pathlib import Path

from omnigrid.actors.cart import Cart, Line
from omnigrid.actors.entity import Entity
from omnigrid.actors.identifier import Identifier
from omnigrid.actors.identity import Held, Identity
from omnigrid.actors.member import Entry, Member
from omnigrid.actors.residency import pack_state, unpack_entity

NOW = time.time()


def rss_mb() -> float:
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) / 1024


def cart(i: int) -> Entity:
    c = Cart(f"cart:u{i}", f"u{i}")
    for j in range(5):
        c.lines[f"sku-{(i * 7 + j * 13) % 100_000:06d}"] = Line(1 + j, "miniprogram", "app", NOW)
    return c


def member(i: int) -> Entity:
    m = Member(f"member:u{i}", f"u{i}")
    for j in range(3):
        m.entries.append(Entry(100, "earn", "pos", "purchase", f"o{i}-{j}", None, NOW, NOW + 9e6))
        m.lots.append([NOW + 9e6 + j, j, 100])
        m.applied[f"earn:o{i}-{j}"] = j
    m.entries.append(Entry(-50, "redeem", "app", "voucher", f"v{i}", None, NOW, None))
    m.applied[f"redeem:v{i}"] = 3
    m.lots[0][2] = 50
    m.spends.append((NOW, 12_000))
    m.applied[f"spend:p{i}"] = 0
    return m


def identifier(i: int) -> Entity:
    e = Identifier(f"identifier:{i:040x}", f"{i:040x}")
    e.type, e.shown, e.uid, e.bound_at, e.channel = "phone", "+86 139****0001", f"u{i}", NOW, "pos"
    return e


def identity(i: int) -> Entity:
    e = Identity(f"identity:u{i}", f"u{i}")
    e.held = [
        Held("phone", f"{i:040x}", "+86 139****0001", None, NOW, "pos"),
        Held("wechat_openid", f"{i + 1:040x}", f"oX{i}", "wx42", NOW, "miniprogram"),
    ]
    e.history = [[NOW, "resolve_create", None, "pos"], [NOW, "bind", None, "miniprogram"]]
    return e


KINDS: dict[str, Callable[[int], Entity]] = {
    "cart": cart,
    "member": member,
    "identifier": identifier,
    "identity": identity,
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("count", type=int, nargs="?", default=100_000)
    p.add_argument("--kind", choices=KINDS, default="cart")
    args = p.parse_args()
    packed = []
    for i in range(args.count):
        entity = KINDS[args.kind](i)
        entity.version, entity.updated_at = 5, NOW
        packed.append((entity.key, pack_state(entity)))
    gc.collect()
    before = rss_mb()
    held = {key: unpack_entity(key, data) for key, data in packed}
    gc.collect()
    per_entity = (rss_mb() - before) * 1024 * 1024 / len(held)
    print(f"{per_entity:,.0f} bytes per {args.kind} ({len(held):,} of them)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
