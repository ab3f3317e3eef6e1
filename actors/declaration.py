"""What an entity kind declares, as data: everything the grid derives from it.

A kind is one module (actors/cart.py, actors/stock.py) holding its entity
class and one ``Kind``: the key prefix, its commands with typed inputs, its
read-only queries, the view it answers with, its HTTP routes with their
answers and refusals, its live stream and its error codes. The route table,
the OpenAPI document, ETags, streams, webhook event names and problem titles
are all derived from the registered kinds (actors/kinds.py); nothing in the
shard, the router or the HTTP layer names a kind.

Inputs are ``msgspec.Struct``\\ s: the same class validates a request body at
the gateway and documents it in ``/openapi.json``, so a limit such as a cart
line's 9,999 is written once.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Protocol

import msgspec

from omnigrid.actors.entity import Entity, Outcome
from omnigrid.actors.errors import GridError
from omnigrid.actors.protocol import Command, Result

# Every id in a path or a body: short, printable, safe in a key and a log line.
ID_PATTERN = "^[A-Za-z0-9_.:-]{1,64}$"
ID_RE = re.compile(ID_PATTERN[1:-1])  # fullmatch: "$" also matches before a final newline
Id = Annotated[str, msgspec.Meta(pattern=ID_PATTERN)]
# Counts are bounded far below JSON's range so that no sum can overflow a
# 64-bit store later (PostgreSQL bigint) and no huge number costs CPU.
MAX_COUNT = 1_000_000_000_000


def check_id(value: str, what: str) -> None:
    """For ``__post_init__``: msgspec matches patterns with ``re.search``, whose ``$``
    also matches before a final newline; an id must match whole."""
    if ID_RE.fullmatch(value) is None:
        raise ValueError(f"{what} must match {ID_PATTERN}")


# A query every entity answers: the ident it is an alias of (a merged user's
# survivor), or None.
ALIAS_QUERY = "alias"


class Input(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A command's typed input: one class validates the request and documents it.

    Validation beyond types and bounds goes in ``__post_init__`` (raise
    ``ValueError``); msgspec reports it as a validation error.
    """


class View(msgspec.Struct, kw_only=True):
    """An answer's shape, for the document only: answers are built as plain dicts."""


@dataclass(frozen=True, slots=True)
class Refusal:
    """A kind's own error code: its status and its problem title."""

    code: str
    status: int
    title: str

    def __call__(self, detail: str, **extra: object) -> GridError:
        return GridError(self.code, detail, self.status, extra or None)


@dataclass(frozen=True, slots=True)
class Op:
    """One command: ``handler(entity, input, channel, now) -> Outcome``.

    No handler: the op is a route's own, run by its flow at the gateway (a resolve,
    a merge); it declares the input the route checks, and an owner refuses it.
    """

    name: str  # "<kind>.<verb>", unique in the grid
    handler: Callable[[Any, Any, str, float], Outcome] | None
    input: type[Input] | None = None
    read: bool = False  # never changes state: no idempotency, no If-Match, no journal
    # Input fields the grid fills in, never the client (a reservation's id, a cart
    # line's checked availability): decisions, journaled so a replay repeats them.
    decided: frozenset[str] = frozenset()
    # runs on an entity that is an alias (a merge's own steps); any other op is
    # sent on to the entity the alias stands for
    on_alias: bool = False
    # a saga's bookkeeping (its work recorded sent): journaled and stored like any
    # change, but no webhook delivery, since nothing a receiver knows of moved
    quiet: bool = False


class Grid(Protocol):
    """What a route's flow may ask of the grid (api/runtime/router.py is one)."""

    async def call(self, cmd: Command) -> Result: ...

    async def query(self, asks: Mapping[str, str]) -> dict[str, Any]: ...

    def is_local(self, key: str) -> bool:
        """Whether this process owns the key (its commands cost no hop to a peer)."""
        ...


# A route's way from its command to its answer across entities: (status, body),
# refusals raised as GridError. The default sends the one command to its owner.
Flow = Callable[[Grid, Command], Awaitable[tuple[int, Any]]]


def answer(result: Result) -> tuple[int, Any]:
    """A result as an HTTP answer; a refusal is raised in the grid's one error form."""
    if not result.ok:
        raise GridError(result.code or "invalid_request", result.detail or "", result.status)
    return result.status, result.body


async def one_call(grid: Grid, cmd: Command) -> tuple[int, Any]:
    return answer(await grid.call(cmd))


@dataclass(frozen=True, slots=True)
class Route:
    """One HTTP endpoint of a kind: it runs one command on the entity its path names."""

    method: str
    path: str  # template; the kind's ident parameter names the entity
    name: str  # the route's name in metrics and the document's operationId
    op: str
    summary: str
    answer: Any  # a View, or a list of them: for the document
    status: int = 200
    refusals: tuple[str, ...] = ()  # codes beyond those every route can answer
    # Path parameters (besides the ident) that are input fields, and their field names.
    path_fields: Mapping[str, str] = field(default_factory=dict)
    query_fields: tuple[str, ...] = ()  # input fields read from the query string
    # path fields the input checks, not the id pattern (an email in a path)
    loose_path: frozenset[str] = frozenset()
    flow: Flow = one_call
    # the key scope it needs (api/http/auth.py); None: the kind's, "<scope>:read" for
    # a GET, "<scope>:write" for a write
    scope: str | None = None

    @property
    def is_write(self) -> bool:
        return self.method not in ("GET", "HEAD")


@dataclass(frozen=True, slots=True)
class Stream:
    """A kind's Server-Sent Events route: every change to one entity, live."""

    path: str
    name: str
    summary: str


Query = Callable[[Any], Any]


class QueryFamilies(Mapping[str, Query]):
    """A kind's queries (``Kind.queries``): fixed names, and families of names
    ``<prefix><argument>`` whose query is made for the argument (``coupon.usage:<uid>``:
    one query reads many coupons for one uid). A family's maker raises KeyError for an
    argument it refuses, as for an unknown name."""

    def __init__(self, fixed: dict[str, Query], families: dict[str, Callable[[str], Query]]):
        self.fixed = fixed
        self.families = families

    def __getitem__(self, name: str) -> Query:
        if name in self.fixed:
            return self.fixed[name]
        for prefix, make in self.families.items():
            if name.startswith(prefix):
                return make(name[len(prefix) :])
        raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.fixed)

    def __len__(self) -> int:
        return len(self.fixed)


@dataclass(frozen=True, slots=True)
class Kind:
    """Everything the grid knows of an entity kind."""

    name: str  # key prefix ("cart" -> "cart:<uid>"), stream and webhook event name
    entity: type[Entity]
    ident: str  # the path parameter that names one entity ("uid", "sku")
    view: type[View]  # the entity's own view: routes answering it carry an ETag
    ops: tuple[Op, ...]
    routes: tuple[Route, ...] = ()
    # What other kinds' flows may read of this one, many entities at once:
    # name -> (entity) -> plain data.
    queries: Mapping[str, Callable[[Any], Any]] = field(default_factory=dict)
    stream: Stream | None = None
    # the stream event name of some ops' changes (a product's price change is a
    # "price" event); every other change is an event named after the kind
    stream_events: Mapping[str, str] = field(default_factory=dict)
    # what a stream event carries of a change, if not the entity's view (a user's
    # order list: the order its change noted)
    event_view: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    # what a stream shows of changes, read live as they are sent (a cart: its lines'
    # availability and prices, and the subtotal, as its GET answers):
    # (grid, the events' views, the reading channel) -> the views to send
    live_views: (
        Callable[[Grid, list[dict[str, Any]], str], Awaitable[list[dict[str, Any]]]] | None
    ) = None
    refusals: tuple[Refusal, ...] = ()
    # Work an entity asks the grid to do for it when its timed work falls due
    # (a saga left unfinished by a crash): run by the process owning the entity.
    resume: Callable[[Grid, str], Awaitable[Any]] | None = None
    # its routes' key scope: "carts" -> carts:read, carts:write (a route may say its own)
    scope: str = ""
    ops_by_name: dict[str, Op] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "ops_by_name", {op.name: op for op in self.ops})
        for route in self.routes:
            if route.op not in self.ops_by_name:
                raise ValueError(f"route {route.name} runs {route.op!r}, not an op of {self.name}")
            if "{" + self.ident + "}" not in route.path and route.flow is one_call:
                # only a flow may find its entities itself (a resolve by identifiers)
                raise ValueError(f"route {route.name} does not name a {self.ident}")
        for op in self.ops:
            if not op.name.startswith(self.name + "."):
                raise ValueError(f"op {op.name!r} must start with {self.name!r}.")

    def key(self, ident: str) -> str:
        return f"{self.name}:{ident}"
