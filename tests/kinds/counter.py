"""A small entity kind defined only in the tests: a named counter.

It exists to show that one module is all a kind needs: registered (in-process
with ``kinds.register``, in a real grid with ``OMNIGRID_KIND_MODULES``), it gets
routes, an OpenAPI document, idempotency, If-Match, journaling, crash
recovery, a live stream and webhooks from the grid, with no change to it.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

import msgspec

from omnigrid.actors.declaration import Input, Kind, Op, Refusal, Route, Stream, View
from omnigrid.actors.entity import Entity, Outcome
from omnigrid.persistence.events import rfc3339

MAX_VALUE = 1_000
OVERFLOW = Refusal("counter_overflow", 409, "Counter overflow")


class CounterSet(Input):
    value: Annotated[int, msgspec.Meta(ge=0, le=MAX_VALUE)]


class Increment(Input):
    by: Annotated[int, msgspec.Meta(ge=1, le=MAX_VALUE)] = 1
    note: Annotated[str, msgspec.Meta(max_length=32)] | None = None


class CounterView(View):
    cid: str
    value: int
    version: int
    updated_at: str | None


class Counter(Entity):
    __slots__ = ("value",)
    kind: ClassVar[str] = "counter"

    def __init__(self, key: str, ident: str) -> None:
        super().__init__(key, ident)
        self.value = 0

    def view(self) -> dict[str, Any]:
        return {
            "cid": self.ident,
            "value": self.value,
            "version": self.version,
            "updated_at": rfc3339(self.updated_at),
        }

    def kind_state(self) -> Any:
        return self.value

    def load_kind_state(self, data: Any) -> None:
        self.value = data

    def get(self, _: None, channel: str, now: float) -> Outcome:
        return Outcome(200, self.view(), changed=False)

    def set(self, inp: CounterSet, channel: str, now: float) -> Outcome:
        changed = inp.value != self.value or not self.exists
        self.value = inp.value
        return Outcome(200, None, changed=changed)

    def increment(self, inp: Increment, channel: str, now: float) -> Outcome:
        if self.value + inp.by > MAX_VALUE:
            raise OVERFLOW(f"{self.value} + {inp.by} is over {MAX_VALUE}")
        self.value += inp.by
        return Outcome(200, None, changed=True)


KIND = Kind(
    name="counter",
    entity=Counter,
    ident="cid",
    view=CounterView,
    ops=(
        Op("counter.get", Counter.get, read=True),
        Op("counter.set", Counter.set, CounterSet),
        Op("counter.increment", Counter.increment, Increment),
    ),
    routes=(
        Route("GET", "/v1/counters/{cid}", "get_counter", "counter.get", "Read", CounterView),
        Route("PUT", "/v1/counters/{cid}", "set_counter", "counter.set", "Set", CounterView),
        Route(
            "POST",
            "/v1/counters/{cid}/increments",
            "increment_counter",
            "counter.increment",
            "Add to a counter",
            CounterView,
            refusals=("counter_overflow",),
        ),
    ),
    queries={"counter.value": lambda counter: counter.value},
    stream=Stream("/v1/streams/counters/{cid}", "counter_stream", "A counter's changes"),
    refusals=(OVERFLOW,),
)
