"""Fault runs: cart writes under load while the journal's Redis stalls or restarts and
PostgreSQL refuses connections, with every answer tallied and checked.

Each writer thread adds one unit at a time to its own carts, so a cart's total
quantity is exactly the number of its adds the grid applied. After each fault
the writers pause and every cart is read: its total must equal its
acknowledged adds (nothing acknowledged lost) and never exceed them (nothing
answered as failed applied), and no answer may be other than 200, 4xx, 429 or
503. The same holds after a clean restart and after a kill -9 of the whole
grid.

    python loadtest/faults.py                  # Redis journal, PostgreSQL store (~3 min)
    python loadtest/faults.py --journal embedded # the default: store locked, disk full
    python loadtest/faults.py --out DIR        # JSON and PNG go there

The test suite runs the same scenario (tests/api/test_faults.py); this
script also writes the figures BENCHMARKS.md quotes: acknowledged writes/s
before, during and after each fault, and the time to heal.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

if __package__ in (None, ""):  # run as a script: the project's root holds loadtest/
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx

from loadtest.fault_makers import (
    RedisServer,
    fill_disk,
    lock_store,
    refuse_postgres,
    small_disk,
)

ALLOWED = {200, 429, 503}  # and every 4xx
SKUS = 4
CLIENT_TIMEOUT_S = 60.0  # longer than anything the grid may take: every write gets an answer


def allowed(status: int) -> bool:
    return status in ALLOWED or 400 <= status < 500


@dataclass
class Tally:
    """Every answer to every add, per cart and over time."""

    carts: int
    acked: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    unknown: list[int] = field(default_factory=list)  # no answer: applied or not
    statuses: Counter[int] = field(default_factory=Counter)
    answers: list[tuple[float, int]] = field(default_factory=list)  # (time, status)
    details: Counter[str] = field(default_factory=Counter)  # refusals' code: detail

    def __post_init__(self) -> None:
        self.acked = [0] * self.carts
        self.failed = [0] * self.carts
        self.unknown = [0] * self.carts


def uid(run: str, cart: int) -> str:
    return f"{run}-u{cart}"


def sku(run: str, cart: int) -> str:
    return f"{run}-s{cart % SKUS}"


class CartWriters:
    """``threads`` threads, each adding one unit at a time to its share of the carts."""

    def __init__(self, url: str, run: str, tally: Tally, threads: int = 8) -> None:
        self.url = url
        self.run = run
        self.tally = tally
        self.threads = threads
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []

    def start(self) -> None:
        self._stop.clear()
        self._workers = [
            threading.Thread(target=self._write, args=(i,), daemon=True)
            for i in range(self.threads)
        ]
        for worker in self._workers:
            worker.start()

    def stop(self) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join()

    def _write(self, index: int) -> None:
        tally, mine = self.tally, range(index, self.tally.carts, self.threads)
        with httpx.Client(base_url=self.url, timeout=CLIENT_TIMEOUT_S) as client:
            while not self._stop.is_set():
                for cart in mine:
                    if self._stop.is_set():
                        return
                    body = {"sku": sku(self.run, cart), "qty": 1}
                    try:
                        r = client.post(
                            f"/v1/carts/{uid(self.run, cart)}/lines",
                            json=body,
                            headers={"X-Channel": "pos"},
                        )
                    except httpx.HTTPError:
                        tally.unknown[cart] += 1
                        tally.answers.append((time.time(), 0))
                        continue
                    tally.statuses[r.status_code] += 1
                    tally.answers.append((time.time(), r.status_code))
                    if r.status_code == 200:
                        tally.acked[cart] += 1
                    else:
                        tally.failed[cart] += 1
                        doc = r.json()
                        tally.details[
                            f"{r.status_code} {doc.get('code')}: {doc.get('detail')}"
                        ] += 1


class HealthProbe:
    """Asks /healthz, /readyz and /metrics in turn; keeps the slowest answer of each."""

    PATHS = ("/healthz", "/readyz", "/metrics")

    def __init__(self, url: str) -> None:
        self.url = url
        self.slowest: dict[str, float] = dict.fromkeys(self.PATHS, 0.0)
        self.failures: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._probe, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _probe(self) -> None:
        with httpx.Client(base_url=self.url, timeout=10) as client:
            while not self._stop.wait(0.2):
                for path in self.PATHS:
                    started = time.monotonic()
                    try:
                        client.get(path)
                    except httpx.HTTPError:
                        self.failures[path] += 1
                    took = time.monotonic() - started
                    self.slowest[path] = max(self.slowest[path], took)


def seed(url: str, run: str) -> None:
    with httpx.Client(base_url=url, timeout=30) as client:
        for i in range(SKUS):
            r = client.put(
                f"/v1/skus/{run}-s{i}/stock",
                json={"on_hand": 1_000_000},
                headers={"X-Channel": "pos"},
            )
            assert r.status_code == 200, r.text


def check_carts(url: str, run: str, tally: Tally) -> list[str]:
    """Every cart holds exactly its acknowledged adds (give or take the unanswered ones)."""
    problems = []
    with httpx.Client(base_url=url, timeout=30) as client:
        for cart in range(tally.carts):
            r = client.get(f"/v1/carts/{uid(run, cart)}")
            if r.status_code != 200:
                problems.append(f"cart {cart}: GET answered {r.status_code}")
                continue
            total = sum(line["qty"] for line in r.json()["lines"])
            acked, unknown = tally.acked[cart], tally.unknown[cart]
            if total < acked:
                problems.append(f"cart {cart}: {acked} adds acknowledged, {total} applied (lost)")
            elif total > acked + unknown:
                problems.append(
                    f"cart {cart}: {acked} adds acknowledged, {total} applied "
                    f"(a refused write came back)"
                )
    bad = {s: n for s, n in tally.statuses.items() if not allowed(s)}
    if bad:
        problems.append(f"answers other than 200/4xx/429/503: {bad}")
    return problems


def heal_seconds(tally: Tally, fault_end: float) -> float | None:
    """Seconds from the fault's end to the first acknowledged write after it."""
    after = [t for t, status in tally.answers if status == 200 and t >= fault_end]
    return min(after) - fault_end if after else None


def rate(tally: Tally, start: float, end: float) -> float:
    """Acknowledged writes per second between two times."""
    if end <= start:
        return 0.0
    return sum(1 for t, s in tally.answers if s == 200 and start <= t < end) / (end - start)


@dataclass
class Phase:
    name: str
    started: float
    ended: float
    heal_s: float | None = None
    ready_s: float | None = None  # from the fault's end to /readyz answering 200
    before: float = 0.0
    during: float = 0.0
    after: float = 0.0


def ready_after(url: str, since: float, until: float) -> float | None:
    """Seconds from ``since`` until /readyz answers 200 (asked every 0.1 s until ``until``)."""
    with httpx.Client(base_url=url, timeout=2) as client:
        while time.time() < until:
            with contextlib.suppress(httpx.HTTPError):
                if client.get("/readyz").status_code == 200:
                    return time.time() - since
            time.sleep(0.1)
    return None


def run_phase(
    name: str, fault: Callable[[], None], tally: Tally, url: str, observe_s: float = 4.0
) -> Phase:
    """Run one fault while the writers write; rates measured over equal windows."""
    started = time.time()
    fault()
    ended = time.time()
    ready_s = ready_after(url, ended, ended + observe_s)
    time.sleep(max(0.0, ended + observe_s - time.time()))
    phase = Phase(name, started, ended, heal_seconds(tally, ended), ready_s)
    window = min(observe_s, 4.0)
    phase.before = rate(tally, started - window, started)
    phase.during = rate(tally, started, ended)
    phase.after = rate(tally, ended + (phase.heal_s or 0), ended + (phase.heal_s or 0) + window)
    return phase


@contextlib.contextmanager
def writing(writers: CartWriters) -> Iterator[None]:
    writers.start()
    try:
        yield
    finally:
        writers.stop()


def plot(
    tally: Tally, phases: list[Phase], pauses: list[tuple[float, float]], path: Path, t0: float
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    end = max(t for t, _ in tally.answers) if tally.answers else t0
    seconds = int(end - t0) + 1
    ok, refused = [0] * seconds, [0] * seconds
    for t, status in tally.answers:
        (ok if status == 200 else refused)[int(t - t0)] += 1
    fig, ax = plt.subplots(figsize=(11, 4))
    ax.plot(range(seconds), ok, label="acknowledged adds/s")
    ax.plot(range(seconds), refused, label="refused adds/s (503 and 429)", alpha=0.7)
    top = max(ok or [1])
    for n, phase in enumerate(phases):
        ax.axvspan(phase.started - t0, phase.ended - t0, color="red", alpha=0.15)
        ax.text(phase.started - t0, top * (1.02 + 0.07 * (n % 2)), phase.name, fontsize=8)
    for n, (start, end) in enumerate(pauses):
        label = "writers paused: every cart checked" if n == 0 else None
        ax.axvspan(start - t0, end - t0, color="grey", alpha=0.2, label=label)
    ax.set_xlabel("seconds")
    ax.set_ylabel("answers per second")
    ax.set_title("Cart adds under journal and store faults (red: the fault)", pad=22)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


Faults = list[tuple[str, Callable[[], None]]]


class Restartable(Protocol):
    """A grid the run can stop, start again and kill (tests' Grid, procs.Server)."""

    url: str

    def stop(self) -> None: ...

    def start(self) -> Any: ...

    def kill(self) -> None: ...


@dataclass
class FaultRun:
    """What a run saw: every answer, each fault's phase, and the checks' problems."""

    tally: Tally
    phases: list[Phase]
    pauses: list[tuple[float, float]]  # writers paused while every cart was checked
    checks: dict[str, list[str]]  # after each fault, a clean restart and a kill -9
    probe: HealthProbe
    audit: subprocess.CompletedProcess[str]
    t0: float


def run_faults(
    grid: Restartable,
    faults: Faults,
    run: str,
    carts: int,
    threads: int,
    warmup_s: float = 4.0,
    observe_s: float = 4.0,
    say: Callable[[str], None] = print,
) -> FaultRun:
    """Every fault under load, every cart checked after each, after a clean restart
    and after a kill -9 of the whole grid, then ``omnigrid audit``."""
    tally = Tally(carts)
    seed(grid.url, run)
    writers = CartWriters(grid.url, run, tally, threads)
    probe = HealthProbe(grid.url)
    probe.start()
    t0 = time.time()
    phases: list[Phase] = []
    checks: dict[str, list[str]] = {}
    pauses: list[tuple[float, float]] = []
    try:
        for name, fault in faults:
            with writing(writers):
                time.sleep(warmup_s)
                phases.append(run_phase(name, fault, tally, grid.url, observe_s))
            paused = time.time()
            checks[name] = check_carts(grid.url, run, tally)
            pauses.append((paused, time.time()))
            p = phases[-1]
            heal = "never" if p.heal_s is None else f"{p.heal_s:.2f} s"
            ready = "never" if p.ready_s is None else f"{p.ready_s:.2f} s"
            say(
                f"{name}: {p.before:.0f} acknowledged/s before, {p.during:.0f} during, "
                f"{p.after:.0f} after; first write in {heal}, /readyz 200 in {ready}; "
                f"problems: {len(checks[name])}"
            )
    finally:
        probe.stop()
    grid.stop()
    grid.start()
    checks["after a clean restart"] = check_carts(grid.url, run, tally)
    grid.kill()
    grid.start()
    checks["after kill -9"] = check_carts(grid.url, run, tally)
    audit = subprocess.run(
        [sys.executable, "-m", "omnigrid.api.runtime.cli", "audit", "--url", grid.url],
        capture_output=True,
        text=True,
        timeout=300,
    )
    return FaultRun(tally, phases, pauses, checks, probe, audit, t0)


def exercise(grid: Restartable, faults: Faults, args: argparse.Namespace, out: Path) -> int:
    """The run, its JSON summary and its PNG; exit status 1 on any problem."""
    result = run_faults(grid, faults, f"f{out.name.replace('-', '')}", args.carts, args.threads)
    tally, checks, audit = result.tally, result.checks, result.audit
    summary: dict[str, Any] = {
        "command": " ".join(sys.argv),
        "journal": args.journal,
        "carts": args.carts,
        "threads": args.threads,
        "statuses": dict(tally.statuses),
        "refusals": dict(tally.details.most_common(10)),
        "acknowledged": sum(tally.acked),
        "unanswered": sum(tally.unknown),
        "phases": [p.__dict__ for p in result.phases],
        "health_slowest_s": result.probe.slowest,
        "health_failures": dict(result.probe.failures),
        "problems": checks,
        "audit_exit": audit.returncode,
        "audit": audit.stdout.strip().splitlines()[-3:],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    plot(tally, result.phases, result.pauses, out / "faults.png", result.t0)
    print(json.dumps({k: summary[k] for k in ("statuses", "health_slowest_s")}, default=str))
    counts = {k: len(v) for k, v in checks.items()}
    print(f"problems: {counts}; audit exit {audit.returncode}; results in {out}")
    return 1 if any(checks.values()) or audit.returncode != 0 else 0


def main() -> int:
    from loadtest.procs import free_port, omnigrid_server

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="results directory")
    parser.add_argument(
        "--journal",
        choices=("redis", "embedded"),
        default="redis",
        help="redis: Redis journal and PostgreSQL store (stalls, restart, refusals); "
        "embedded: the default journal files and SQLite store on a small disk of its own "
        "(the store locked, the disk full)",
    )
    parser.add_argument("--carts", type=int, default=320)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = args.out or Path(__file__).parent / "results" / f"faults-{args.journal}-{stamp}"
    out.mkdir(parents=True, exist_ok=True)
    logs = Path(tempfile.mkdtemp(prefix="omnigrid-faults-log-"))
    with contextlib.ExitStack() as stack:
        faults: Faults
        if args.journal == "embedded":
            data = stack.enter_context(small_disk(256))
            env: dict[str, str] = {}
            faults = [
                ("store file locked 3 s", lambda: lock_store(data, 3)),
                ("disk full 4 s", lambda: fill_disk(data, 4)),
            ]
        else:
            import psycopg

            database = f"omnigrid_faults_{stamp.replace('-', '_')}"
            with psycopg.connect(args.postgres, autocommit=True) as admin:
                admin.execute(f"CREATE DATABASE {database}")
            stack.callback(drop_database, args.postgres, database)
            redis_server = RedisServer(free_port())
            redis_server.start()
            stack.callback(redis_server.remove)
            data = Path(tempfile.mkdtemp(prefix="omnigrid-faults-"))
            stack.callback(shutil.rmtree, data, True)
            env = {
                "OMNIGRID_REDIS_URL": redis_server.url,
                "OMNIGRID_POSTGRES_DSN": args.postgres.rsplit("/", 1)[0] + "/" + database,
            }

            def restart_redis() -> None:
                redis_server.kill()
                time.sleep(3)
                redis_server.start()

            faults = [
                ("Redis stalled 1 s", lambda: redis_server.stall(1)),
                ("Redis stalled 4 s", lambda: redis_server.stall(4)),
                ("Redis stalled 10 s", lambda: redis_server.stall(10)),
                ("Redis killed, restarted 3 s later", restart_redis),
                ("PostgreSQL refuses 15 s", lambda: refuse_postgres(args.postgres, database, 15)),
            ]
        grid = omnigrid_server(data, logs / "grid.log", shards=2, env=env)
        stack.callback(grid.stop)
        print(f"grid up in {grid.start(120):.1f} s ({args.journal} journal); log in {logs}")
        return exercise(grid, faults, args, out)
    return 1


def drop_database(admin_dsn: str, database: str) -> None:
    import psycopg

    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")


if __name__ == "__main__":
    sys.exit(main())
