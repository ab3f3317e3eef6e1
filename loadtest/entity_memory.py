"""Bytes of memory per five-line cart, as a shard holds it after recovery.

    python loadtest/entity_memory.py [carts]

Packs ``carts`` carts the way the store keeps them, unpacks them all (what a shard
does when it recovers), and divides the growth of this process's RSS by their count.
"""

from __future__ import annotations

import gc
import sys
import time
from pathlib import Path

from omnigrid.actors.cart import Cart, Line
from omnigrid.actors.residency import pack_state, unpack_entity


def rss_mb() -> float:
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) / 1024


def main() -> int:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    now = time.time()
    packed = []
    for i in range(count):
        cart = Cart(f"cart:u{i}", f"u{i}")
        for j in range(5):
            cart.lines[f"sku-{(i * 7 + j * 13) % 100_000:06d}"] = Line(
                1 + j, "miniprogram", "app", now
            )
        cart.version, cart.updated_at = 5, now
        packed.append((cart.key, pack_state(cart)))
    gc.collect()
    before = rss_mb()
    held = {key: unpack_entity(key, data) for key, data in packed}
    gc.collect()
    per_cart = (rss_mb() - before) * 1024 * 1024 / len(held)
    print(f"{per_cart:,.0f} bytes per five-line cart ({len(held):,} carts)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
