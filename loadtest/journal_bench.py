"""Journal append cost: how long one group commit holds a shard's event loop.

    python loadtest/journal_bench.py [--redis URL] [--batches N]

Appends ``--batches`` batches of 1 and of 20 cart events to each journal
backend (the segment files and SQLite, each with sync NORMAL and FULL, Redis)
and prints the median, p99 and longest of one append, in microseconds, how many
took over 5 ms, and the CPU time of one append on average, as JSON. ``--before F``
measures an earlier commit's SQLite journal instead, beside today's. ``--steady S``
instead appends without pause for S seconds and prints the SQLite WAL file's size
each second (with ``--before``, that journal's too).
BENCHMARKS.md quotes runs with their commands.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
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
        # the pauses: SQLite's automatic checkpoint ran inside the append that filled
        # 1,000 pages (now a thread does it: persistence/journal.py, Checkpointer)
        "max_us": round(took[-1], 1),
        "over_5ms": sum(1 for t in took if t > 5_000),
    }


def journal_module(path: str | None) -> Any:
    """Today's journal module, or an earlier commit's persistence/journal.py saved at
    ``path`` (git show REV:persistence/journal.py > F)."""
    if path is None:
        from omnigrid.persistence import journal

        return journal
    spec = importlib.util.spec_from_file_location("journal_before", path)
    assert spec is not None and spec.loader is not None
    before = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(before)
    return before


def before_and_now(path: str, batches: int) -> dict[str, Any]:
    """The SQLite journal of an earlier commit (its persistence/journal.py, saved at
    ``path``) against today's, batches of 20, each twice, alternating in one run."""
    before, now = journal_module(path), journal_module(None)
    results: dict[str, Any] = {}
    for run in (1, 2):
        for name, module in (("before", before), ("now", now)):
            for sync in ("normal", "full"):
                journal = module.SqliteJournal(f"{tempfile.mkdtemp()}/journal.sqlite3", sync)
                results[f"{name}{run}/sqlite-{sync}/20"] = measure(journal.append, batches, 20)
                journal.close()
    return results


def wal_under_steady_appends(seconds: float, path: str | None = None) -> dict[str, Any]:
    """Appends of 5 events that never pause for ``seconds``; the WAL file's size each
    second (the checkpointer must let it start over, or it grows without end)."""
    file = f"{tempfile.mkdtemp()}/journal.sqlite3"
    journal = journal_module(path).SqliteJournal(file, "normal")
    events, seq, appends = _events(5), 1, 0
    sizes: list[float] = []
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        journal.append(seq, events)
        seq, appends = seq + 5, appends + 1
        time.sleep(0.0002)
        if time.monotonic() - started >= len(sizes) + 1:
            sizes.append(round(os.path.getsize(file + "-wal") / 1e6, 1))
            print(f"  {len(sizes)} s: WAL {sizes[-1]} MB after {appends:,} appends", flush=True)
    journal.close()
    return {"appends": appends, "wal_mb_each_second": sizes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--batches", type=int, default=5_000)
    parser.add_argument(
        "--before",
        metavar="JOURNAL_PY",
        help="an earlier persistence/journal.py (git show REV:persistence/journal.py > F): "
        "its SQLite journal against today's, nothing else",
    )
    parser.add_argument(
        "--steady",
        type=float,
        metavar="SECONDS",
        help="only the WAL's size under appends that never pause (with --before: that "
        "journal's too)",
    )
    args = parser.parse_args()
    if args.steady:
        out = {"now": wal_under_steady_appends(args.steady)}
        if args.before:
            out["before"] = wal_under_steady_appends(args.steady, args.before)
        print(json.dumps(out))
        return
    if args.before:
        print(json.dumps(before_and_now(args.before, args.batches), indent=1))
        return
    from omnigrid.persistence import journal as journals

    results: dict[str, Any] = {}
    for size in (1, 20):
        for sync in ("normal", "full"):
            try:  # the segment files, from the commit that made them the default
                from omnigrid.persistence.file_journal import FileJournal

                files = FileJournal(tempfile.mkdtemp(), sync)
                results[f"files-{sync}/{size}"] = measure(files.append, args.batches, size)
                files.close()
            except ImportError:
                pass
            path = f"{tempfile.mkdtemp()}/journal.sqlite3"
            sqlite = journals.SqliteJournal(path, sync)
            results[f"sqlite-{sync}/{size}"] = measure(sqlite.append, args.batches, size)
        try:  # where the Redis journal lives differs between commits
            from omnigrid.persistence.redis_journal import RedisJournal
        except ImportError:
            RedisJournal = journals.RedisJournal  # type: ignore[attr-defined,misc]
        stream = f"og:bench-{uuid.uuid4().hex[:8]}:journal:0"
        redis_journal = RedisJournal(args.redis, stream)
        redis_journal.last_seq()
        results[f"redis/{size}"] = measure(redis_journal.append, args.batches, size)
        import redis

        r = redis.Redis.from_url(args.redis)
        r.delete(stream, stream + ":writer")
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
