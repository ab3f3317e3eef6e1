"""Locust journeys of shoppers moving across channels (run by loadtest/harness.py).

Traffic, weighted as a retailer's would be: most users browse and look at
their cart; some add on the mini-program, change a line on H5, check out
(reserve and commit each line in the app); POS tills sell the same SKUs in
store; a few buyers chase a flash sale's hot SKUs. Users think between
actions (``OMNIGRID_THINK_MIN_S``/``MAX_S``, default 20-40 s, what DESIGN.md's
calibration used). SKUs come from the catalogue the harness seeded
(``OMNIGRID_SEED_FILE``); every user owns one uid, so its cart is changed by
it alone and its last acknowledged view must be the cart's state at the end.

Each worker process writes what was acknowledged (cart views, committed
quantities) to ``OMNIGRID_TALLY_DIR`` every 30 s and, final, when the run stops
(with the writes then in flight or cut off); the harness checks the grid against
the final tallies. Three patches to locust 2.47's internals below keep
the generator's own cost from growing with the user count; each says what it
measured.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import random
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gevent
import locust
import locust.runners
from locust import argument_parser, between, events, task
from locust.exception import StopUser
from locust.runners import MasterRunner, WorkerRunner

if __package__ in (None, ""):  # locust imports this file by path
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loadtest.leanhttp import LeanHttpUser, Reply

SEED = json.loads(Path(os.environ.get("OMNIGRID_SEED_FILE", "seed.json")).read_text())
SKUS: list[str] = SEED["skus"]
HOT: list[str] = SEED["hot_skus"]
FINAL_WAIT_S = 5.0  # for answers still in flight when the run stops
THINK = between(
    float(os.environ.get("OMNIGRID_THINK_MIN_S", "20")),
    float(os.environ.get("OMNIGRID_THINK_MAX_S", "40")),
)
# locust 2.47's worker, on every spawn message from the master (about one a
# second while users are spawning), tests each option against
# argument_parser.default_args_dict() inside a comprehension, and that function
# builds and runs a whole argument parser: ~3 ms, ~60 times per message. With
# 6 workers that was most of a core for as long as spawning lasted (py-spy: 74%
# of a worker's time). The defaults never change within a process, so one
# parse is kept.
argument_parser.default_args_dict = functools.cache(argument_parser.default_args_dict)
# A worker whose CPU is saturated answers its heartbeats late; after 3 missed
# seconds the master declares it missing, hands its users to the others and
# takes it back when it answers, so more users run than asked (136,000 of
# 100,000 in one overloaded run). A worker 30 s late is truly gone.
locust.runners.HEARTBEAT_LIVENESS = 30


# Runner.user_classes_count walks every user greenlet, and a worker asks for it
# about ten times per spawn message (one of them in a debug log line's f-string,
# built even when not logged). At 15,000 users a worker spent 62% of its time
# there while spawning (py-spy). Live users per class are counted as they start
# and end instead: the same answer in O(classes).
_LIVE_USERS: Counter[str] = Counter()
_start_user = locust.User.start


def _counted_start(user: locust.User, group: Any) -> Any:
    greenlet = _start_user(user, group)
    name = type(user).__name__
    _LIVE_USERS[name] += 1
    greenlet.link(lambda _: _LIVE_USERS.subtract((name,)))
    return greenlet


def _user_classes_count(runner: locust.runners.Runner) -> dict[str, int]:
    return {cls.__name__: _LIVE_USERS[cls.__name__] for cls in runner.user_classes}


locust.User.start = _counted_start  # type: ignore[method-assign,assignment]
locust.runners.Runner.user_classes_count = property(_user_classes_count)  # type: ignore[assignment]
_ids = itertools.count()
RUN = os.environ.get("OMNIGRID_RUN_ID", "lt")  # the harness's run: uids never repeat across runs
# Several ports of the same grid: users spread over them, since one source
# address holds only ~28,000 connections to one address and port.
TARGETS = [t for t in os.environ.get("OMNIGRID_TARGETS", "").split(",") if t]


# What this process saw acknowledged.
CARTS: dict[str, dict[str, Any]] = {}  # uid -> last acknowledged view (version, lines)
COMMITTED: Counter[str] = Counter()  # sku -> quantity committed with a 200
ENVIRONMENT: list[Any] = []  # locust's Environment, once it exists
# Writes sent and not answered yet, and writes cut off (their user stopped, their
# connection broken) before an answer: the only ones the grid may hold unacknowledged.
IN_FLIGHT: Counter[str] = Counter()
CUT_OFF: Counter[str] = Counter()
STOPPING: list[bool] = []  # once the run stops: no user sends anything new


class SpreadUser(LeanHttpUser):
    """A user whose connection goes to one of the grid's ports, chosen at random."""

    abstract = True

    def __init__(self, environment: Any) -> None:
        if TARGETS:
            self.host = random.choice(TARGETS)
        super().__init__(environment)

    def request(self, method: str, path: str, **kwargs: Any) -> Reply | None:
        if STOPPING:  # the final tally is being taken: nothing new starts
            raise StopUser()
        return super().request(method, path, **kwargs)


def _tracked(kind: str, send: Callable[[], Reply | None], units: int = 1) -> Reply | None:
    """A write counted (in ``units``: a commit's quantity) while it is in flight, and
    as cut off when its answer never came (a killed greenlet, a broken connection)."""
    if STOPPING:  # never sent: not in flight, not cut off
        raise StopUser()
    IN_FLIGHT[kind] += units
    try:
        return send()
    except BaseException:
        CUT_OFF[kind] += units
        raise
    finally:
        IN_FLIGHT[kind] -= units


class Shopper(SpreadUser):
    weight = 20
    wait_time = THINK

    def on_start(self) -> None:
        self.uid = f"{RUN}-{os.getpid()}-{next(_ids)}"
        self.lines: dict[str, int] = {}

    def _cart_write(self, method: str, path: str, body: Any, channel: str, name: str) -> None:
        # 409: sold out or cart full, a shopper's answer and not a failure
        r = _tracked(
            "cart_writes",
            lambda: self.request(
                method, path, body=body, channel=channel, name=name, expect=(200, 409)
            ),
        )
        if r is not None and r.status == 200:
            view = r.json()
            CARTS[self.uid] = {
                "version": view["version"],
                "lines": {line["sku"]: line["qty"] for line in view["lines"]},
            }
            self.lines = dict(CARTS[self.uid]["lines"])

    @task(10)
    def browse(self) -> None:
        channel = random.choice(("app", "miniprogram", "h5", "web"))
        path = f"/v1/skus/{random.choice(SKUS)}/stock"
        self.request("GET", path, channel=channel, name="/v1/skus/[sku]/stock")

    @task(6)
    def look_at_cart_in_app(self) -> None:
        self.request("GET", f"/v1/carts/{self.uid}", channel="app", name="/v1/carts/[uid]")

    @task(4)
    def add_on_miniprogram(self) -> None:
        body = {"sku": random.choice(SKUS), "qty": random.randint(1, 3)}
        path = f"/v1/carts/{self.uid}/lines"
        self._cart_write("POST", path, body, "miniprogram", "/v1/carts/[uid]/lines")

    @task(2)
    def change_on_h5(self) -> None:
        if not self.lines:
            return
        sku = random.choice(list(self.lines))
        path = f"/v1/carts/{self.uid}/lines/{sku}"
        body = {"qty": random.randint(0, 4)}
        self._cart_write("PUT", path, body, "h5", "/v1/carts/[uid]/lines/[sku]")

    @task(1)
    def check_out_in_app(self) -> None:
        """Hold every line, commit them all, empty the cart; give back holds on a refusal."""
        held: list[tuple[str, str, int]] = []
        for sku, qty in list(self.lines.items()):
            r = _reserve(self, sku, qty, "app", ttl_s=300)
            if r is None or r.status != 201:
                break
            held.append((sku, r.json()["reservation_id"], qty))
        if len(held) < len(self.lines):
            for sku, rid, _ in held:
                path = f"/v1/skus/{sku}/reservations/{rid}"
                name = "/v1/skus/[sku]/reservations/[rid]"
                self.request("DELETE", path, channel="app", name=name)
            return
        for sku, rid, qty in held:
            _commit(self, sku, rid, qty, "app")
        self._cart_write("DELETE", f"/v1/carts/{self.uid}", None, "app", "/v1/carts/[uid]")


class PosTill(SpreadUser):
    """A till in a store: sells from the same stock, one reserve-and-commit per sale."""

    weight = 2
    wait_time = THINK

    @task
    def sell(self) -> None:
        _sell(self, random.choice(SKUS), "pos", random.randint(1, 2))


class FlashBuyer(SpreadUser):
    """Chases the flash sale's few hot SKUs, which run out."""

    weight = 1
    wait_time = THINK

    @task
    def buy(self) -> None:
        _sell(self, random.choice(HOT), random.choice(("miniprogram", "app")), 1)


def _reserve(user: LeanHttpUser, sku: str, qty: int, channel: str, ttl_s: int) -> Reply | None:
    """A hold; 409 (sold out) is an answer, not a failure."""
    return user.request(
        "POST",
        f"/v1/skus/{sku}/reservations",
        body={"qty": qty, "ttl_s": ttl_s},
        channel=channel,
        name="/v1/skus/[sku]/reservations",
        expect=(201, 409),
    )


def _commit(user: LeanHttpUser, sku: str, rid: str, qty: int, channel: str) -> None:
    path = f"/v1/skus/{sku}/reservations/{rid}/commit"
    name = "/v1/skus/[sku]/reservations/[rid]/commit"
    answer = _tracked(
        "commits", lambda: user.request("POST", path, channel=channel, name=name), units=qty
    )
    if answer is not None:
        COMMITTED[sku] += qty


def _sell(user: LeanHttpUser, sku: str, channel: str, qty: int) -> None:
    r = _reserve(user, sku, qty, channel, ttl_s=120)
    if r is not None and r.status == 201:
        _commit(user, sku, r.json()["reservation_id"], qty, channel)


def _write_tally(**kwargs: Any) -> None:
    """What this worker saw acknowledged; ``final`` once the run stops, with the writes
    then in flight or cut off (the grid may hold those without an answer)."""
    folder = os.environ.get("OMNIGRID_TALLY_DIR")
    if not folder or not ENVIRONMENT or isinstance(ENVIRONMENT[0].runner, MasterRunner):
        return  # the master runs no users
    path = Path(folder) / f"tally-{os.getpid()}.json"
    temp = path.with_suffix(".tmp")
    unanswered = IN_FLIGHT + CUT_OFF
    tally = {
        "carts": CARTS,
        "committed": dict(COMMITTED),
        "final": bool(STOPPING),
        # cart writes in requests (one user per cart), commits in units (as sold)
        "unanswered": {kind: unanswered[kind] for kind in ("cart_writes", "commits")},
    }
    temp.write_text(json.dumps(tally))
    temp.replace(path)  # a reader never sees half a tally


def _final_tally(**kwargs: Any) -> None:
    """As the run stops, before locust stops the users (at 36,000 and 100,000 users the
    tallies written at ``test_stop`` never landed; stopping 16,000 users a worker may
    outlast the master): no new request starts, the ones in flight get up to
    FINAL_WAIT_S for their answers, then the final tally is written; again once the
    users are stopped."""
    if not ENVIRONMENT or isinstance(ENVIRONMENT[0].runner, MasterRunner) or STOPPING:
        return
    STOPPING.append(True)

    def settle() -> None:
        deadline = time.monotonic() + FINAL_WAIT_S
        while sum(IN_FLIGHT.values()) and time.monotonic() < deadline:
            gevent.sleep(0.05)
        _write_tally()

    gevent.spawn(settle)


def _keep_tally(**kwargs: Any) -> None:
    """Write the tally every 30 s as well as at the end.

    An overloaded worker can be killed before it quits cleanly; an older tally
    still checks everything it holds (later answers only count as "applied
    without an answer", never as lost).
    """

    def loop() -> None:
        while True:
            gevent.sleep(30)
            _write_tally()

    gevent.spawn(loop)


def _remember_environment(environment: Any, **kwargs: Any) -> None:
    ENVIRONMENT.append(environment)


def _measure_the_hold(**kwargs: Any) -> None:
    """On the master, once every user is spawned: settle, then restart the statistics.

    The figures up to then (spawning, then ``OMNIGRID_SETTLE_S`` seconds for
    the requests queued while spawning to drain) go to ``OMNIGRID_RAMP_FILE``;
    what locust reports from then on is the held load alone. Workers send their
    statistics as deltas, so clearing the master's is enough.
    """
    if not ENVIRONMENT or isinstance(ENVIRONMENT[0].runner, WorkerRunner):
        return
    environment = ENVIRONMENT[0]

    def settle_then_reset() -> None:
        gevent.sleep(float(os.environ.get("OMNIGRID_SETTLE_S", "0")))
        total = environment.stats.total
        ramp = {
            "requests": total.num_requests,
            "failures": total.num_failures,
            **{f"p{q}_ms": total.get_response_time_percentile(q / 100) for q in (50, 95, 99)},
        }
        path = os.environ.get("OMNIGRID_RAMP_FILE")
        if path:
            Path(path).write_text(json.dumps(ramp))
        environment.stats.reset_all()

    gevent.spawn(settle_then_reset)


events.test_start.add_listener(_keep_tally)  # type: ignore[no-untyped-call]
events.test_stopping.add_listener(_final_tally)  # type: ignore[no-untyped-call]
events.test_stop.add_listener(_write_tally)  # type: ignore[no-untyped-call]
events.quitting.add_listener(_write_tally)  # type: ignore[no-untyped-call]
events.init.add_listener(_remember_environment)  # type: ignore[no-untyped-call]
events.spawning_complete.add_listener(_measure_the_hold)  # type: ignore[no-untyped-call]
