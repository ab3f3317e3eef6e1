"""Journal append cost: how long one group commit holds a shard's event loop.

    python loadtest/journal_bench.py [--redis URL] [--batches N]
    git show b21606e:persistence/journal.py > /tmp/sqlite_journal.py
    python loadtest/journal_bench.py --before /tmp/sqlite_journal.py

Appends ``--batches`` batches of 1 and of 20 cart events to each journal
backend (the segment files with sync NORMAL and FULL, Redis) and prints the
median, p99 and longest of one append, in microseconds, how many took over
5 ms, and the CPU time of one append on average, as JSON. ``--before F``
measures an earlier commit's SQLite journal (its persistence/journal.py) beside
today's segment files instead, alternating, twice. BENCHMARKS.md quotes runs
with their commands.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from typing import Any

from omnigrid.persistence.events import Event


def _events(n: int) -> list[Event]:
    view = {"uid": "u", "version": 1, "lines": [{"sku": "s", "qty": 1}]}
    return [Event("cart", f"cart:u{i}", 1, "app", "cart.add", time.time(), view) for i in range(n)]


def measure(
    append: Callable[[int, list[Event]], None], batches: int, size: int
) -> dict[str, float]:
    events = _events(size)
    took = []
    seq = 1
    cpu = time.process_time()
    for _ in range(batches):
        started = time.perf_counter()
        append(seq, events)
        took.append((time.perf_counter() - started) * 1e6)
        seq += size
    cpu = time.process_time() - cpu
    took.sort()
    return {
        "cpu_us": round(cpu / batches * 1e6, 1),
        "p50_us": round(statistics.median(took), 1),
        "p99_us": round(took[len(took) * 99 // 100], 1),
        # the pauses (SQLite's checkpoint once ran inside the append that filled 1,000 pages)
        "max_us": round(took[-1], 1),
        "over_5ms": sum(1 for t in took if t > 5_000),
    }


def journal_module(path: str) -> Any:
    """An earlier commit's persistence/journal.py saved at ``path``
    (git show REV:persistence/journal.py > F)."""
    spec = importlib.util.spec_from_file_location("journal_before", path)
    assert spec is not None and spec.loader is not None
    before = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(before)
    return before


def before_and_now(path: str, batches: int) -> dict[str, Any]:
    """The SQLite journal of an earlier commit (its persistence/journal.py, saved at
    ``path``) against today's segment files, batches of 1 and 20, twice, alternating."""
    from omnigrid.persistence.file_journal import FileJournal

    before = journal_module(path)
    results: dict[str, Any] = {}
    for run in (1, 2):
        for size in (1, 20):
            for sync in ("normal", "full"):
                sqlite = before.SqliteJournal(f"{tempfile.mkdtemp()}/journal.sqlite3", sync)
                results[f"sqlite{run}-{sync}/{size}"] = measure(sqlite.append, batches, size)
                sqlite.close()
                files = FileJournal(tempfile.mkdtemp(), sync)
                results[f"files{run}-{sync}/{size}"] = measure(files.append, batches, size)
                files.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--batches", type=int, default=5_000)
    parser.add_argument(
        "--before",
        metavar="JOURNAL_PY",
        help="an earlier persistence/journal.py (git show REV:persistence/journal.py > F): "
        "its SQLite journal against today's segment files, nothing else",
    )
    args = parser.parse_args()
    if args.before:
        print(json.dumps(before_and_now(args.before, args.batches), indent=1))
        return
    import redis

    from omnigrid.persistence.file_journal import FileJournal
    from omnigrid.persistence.redis_journal import RedisJournal

    results: dict[str, Any] = {}
    for size in (1, 20):
        for sync in ("normal", "full"):
            files = FileJournal(tempfile.mkdtemp(), sync)
            results[f"files-{sync}/{size}"] = measure(files.append, args.batches, size)
            files.close()
        stream = f"og:bench-{uuid.uuid4().hex[:8]}:journal:0"
        redis_journal = RedisJournal(args.redis, stream)
        redis_journal.last_seq()
        results[f"redis/{size}"] = measure(redis_journal.append, args.batches, size)
        redis.Redis.from_url(args.redis).delete(stream, stream + ":writer")
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
