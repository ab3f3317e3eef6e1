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
quantities) to ``OMNIGRID_TALLY_DIR`` when it quits; the harness checks the
grid against it.
"""

from __future__ import annotations

import itertools
import json
import os
import random
from collections import Counter
from pathlib import Path
from typing import Any

from locust import FastHttpUser, between, events, task

SEED = json.loads(Path(os.environ.get("OMNIGRID_SEED_FILE", "seed.json")).read_text())
SKUS: list[str] = SEED["skus"]
HOT: list[str] = SEED["hot_skus"]
THINK = between(
    float(os.environ.get("OMNIGRID_THINK_MIN_S", "20")),
    float(os.environ.get("OMNIGRID_THINK_MAX_S", "40")),
)
_ids = itertools.count()
# Several ports of the same grid: users spread over them, since one source
# address holds only ~28,000 connections to one address and port.
TARGETS = [t for t in os.environ.get("OMNIGRID_TARGETS", "").split(",") if t]


class SpreadUser(FastHttpUser):
    """A user whose connection goes to one of the grid's ports, chosen at random."""

    abstract = True

    def __init__(self, environment: Any) -> None:
        if TARGETS:
            self.host = random.choice(TARGETS)
        super().__init__(environment)


# What this process saw acknowledged.
CARTS: dict[str, dict[str, Any]] = {}  # uid -> last acknowledged view (version, lines)
COMMITTED: Counter[str] = Counter()  # sku -> quantity committed with a 200


def _json(channel: str) -> dict[str, str]:
    return {"X-Channel": channel, "Content-Type": "application/json"}


class Shopper(SpreadUser):
    weight = 20
    wait_time = THINK

    def on_start(self) -> None:
        self.uid = f"lt-{os.getpid()}-{next(_ids)}"
        self.lines: dict[str, int] = {}

    def _cart_write(self, method: str, path: str, body: Any, channel: str, name: str) -> None:
        with self.client.request(
            method, path, json=body, headers=_json(channel), name=name, catch_response=True
        ) as r:
            if r.status_code == 200:
                view = r.json()
                CARTS[self.uid] = {
                    "version": view["version"],
                    "lines": {line["sku"]: line["qty"] for line in view["lines"]},
                }
                self.lines = dict(CARTS[self.uid]["lines"])
            elif r.status_code == 409:
                r.success()  # sold out or cart full: a shopper's answer, not a failure

    @task(10)
    def browse(self) -> None:
        sku = random.choice(SKUS)
        channel = random.choice(("app", "miniprogram", "h5", "web"))
        self.client.get(
            f"/v1/skus/{sku}/stock", headers={"X-Channel": channel}, name="/v1/skus/[sku]/stock"
        )

    @task(6)
    def look_at_cart_in_app(self) -> None:
        self.client.get(
            f"/v1/carts/{self.uid}", headers={"X-Channel": "app"}, name="/v1/carts/[uid]"
        )

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
            with self.client.post(
                f"/v1/skus/{sku}/reservations",
                json={"qty": qty, "ttl_s": 300},
                headers=_json("app"),
                name="/v1/skus/[sku]/reservations",
                catch_response=True,
            ) as r:
                if r.status_code == 201:
                    held.append((sku, r.json()["reservation_id"], qty))
                elif r.status_code == 409:
                    r.success()
                    break
        if len(held) < len(self.lines):
            for sku, rid, _ in held:
                self.client.delete(
                    f"/v1/skus/{sku}/reservations/{rid}",
                    headers=_json("app"),
                    name="/v1/skus/[sku]/reservations/[rid]",
                )
            return
        for sku, rid, qty in held:
            r = self.client.post(
                f"/v1/skus/{sku}/reservations/{rid}/commit",
                headers=_json("app"),
                name="/v1/skus/[sku]/reservations/[rid]/commit",
            )
            if r.status_code == 200:
                COMMITTED[sku] += qty
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


def _sell(user: FastHttpUser, sku: str, channel: str, qty: int) -> None:
    with user.client.post(
        f"/v1/skus/{sku}/reservations",
        json={"qty": qty, "ttl_s": 120},
        headers=_json(channel),
        name="/v1/skus/[sku]/reservations",
        catch_response=True,
    ) as r:
        if r.status_code == 409:
            r.success()  # sold out
            return
        if r.status_code != 201:
            return
        rid = r.json()["reservation_id"]
    done = user.client.post(
        f"/v1/skus/{sku}/reservations/{rid}/commit",
        headers=_json(channel),
        name="/v1/skus/[sku]/reservations/[rid]/commit",
    )
    if done.status_code == 200:
        COMMITTED[sku] += qty


def _write_tally(environment: Any, **kwargs: Any) -> None:
    folder = os.environ.get("OMNIGRID_TALLY_DIR")
    if not folder or not (CARTS or COMMITTED):
        return
    path = Path(folder) / f"tally-{os.getpid()}.json"
    path.write_text(json.dumps({"carts": CARTS, "committed": dict(COMMITTED)}))


events.quitting.add_listener(_write_tally)  # type: ignore[no-untyped-call]
