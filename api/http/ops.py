"""Operations: every channel's sync health (``/v1/ops/sync``), alert rules and alerts.

Each process counts its own requests and deliveries (api/http/sync_stats.py);
a reader merges every process's seconds. Alerts are evaluated by every process
over the merged figures every few seconds (so any process answers
``/v1/ops/alerts``); the process of shard 0 alone notifies the webhooks
subscribed to ``alert``. A rule fires when its metric, over the last
``EVAL_WINDOW_S``, has stayed above its threshold for ``for_s``; it resolves at
the first evaluation below.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Annotated, Any, Literal

import msgspec
import orjson

from omnigrid.actors.declaration import Grid
from omnigrid.actors.errors import InvalidRequest, MalformedRequest
from omnigrid.api.http import sync_stats as st
from omnigrid.api.http import validation as v
from omnigrid.api.http.handlers import Call
from omnigrid.api.http.sync_log import Figures, SyncLogEndpoints
from omnigrid.persistence.events import rfc3339

EVAL_EVERY_S = 5.0
EVAL_WINDOW_S = 10
MAX_WINDOW_S = st.KEEP_S
KEPT_ALERTS = 500


class Rule(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    metric: Literal["p99_ms", "sync_lag_p99_ms", "failure_rate"]
    channel: Annotated[str, msgspec.Meta(min_length=1, max_length=32)] = "*"
    above: Annotated[float, msgspec.Meta(ge=0)]
    for_s: Annotated[int, msgspec.Meta(ge=0, le=3600)] = 60


DEFAULT_RULES = (
    Rule(name="sync_lag", metric="sync_lag_p99_ms", channel="*", above=500.0, for_s=60),
    Rule(name="failures", metric="failure_rate", channel="*", above=0.01, for_s=60),
)


@dataclass(slots=True)
class Alert:
    alert_id: str
    rule: str
    channel: str
    state: str  # firing | resolved
    value: float
    threshold: float
    fired_at: float
    resolved_at: float | None = None

    def view(self) -> dict[str, Any]:
        return {**asdict(self), "fired_at": rfc3339(self.fired_at),
                "resolved_at": rfc3339(self.resolved_at)}  # fmt: skip


# every process's seconds of sync statistics (the last ``window_s``)
Windows = Callable[[int], Awaitable[list[dict[str, Any]]]]
# an alert fired or resolved: to the webhooks subscribed to "alert"
Notify = Callable[[dict[str, Any]], Awaitable[None]]


class AlertBook:
    def __init__(self, rules: tuple[Rule, ...] = DEFAULT_RULES) -> None:
        self.rules = list(rules)
        self.alerts: list[Alert] = []  # newest last
        self._above_since: dict[tuple[str, str], float] = {}
        self._firing: dict[tuple[str, str], Alert] = {}

    def evaluate(self, channels: dict[str, dict[str, Any]], now: float) -> list[Alert]:
        """One evaluation over per-channel figures; the alerts that fired or resolved."""
        changed: list[Alert] = []
        for rule in self.rules:
            for channel, figures in channels.items():
                if rule.channel not in ("*", channel):
                    continue
                value = figures.get(rule.metric)
                key = (rule.name, channel)
                if value is not None and value > rule.above:
                    since = self._above_since.setdefault(key, now)
                    if key not in self._firing and now - since >= rule.for_s:
                        alert = Alert("al_" + secrets.token_hex(6), rule.name, channel,
                                      "firing", float(value), rule.above, now)  # fmt: skip
                        self._firing[key] = alert
                        self.alerts.append(alert)
                        changed.append(alert)
                else:
                    self._above_since.pop(key, None)
                    ended = self._firing.pop(key, None)
                    if ended is not None:
                        ended.state, ended.resolved_at = "resolved", now
                        changed.append(ended)
        del self.alerts[:-KEPT_ALERTS]
        return changed

    def firing(self) -> list[dict[str, Any]]:
        return [a.view() for a in self._firing.values()]


async def _no_deliveries(changes: list[tuple[str, int]]) -> Figures:
    return {}


# the rules as PUT, for every process (the store); None: this process's alone
SaveRules = Callable[[list[dict[str, Any]]], Awaitable[None]]


class OpsEndpoints:
    def __init__(
        self,
        windows: Windows | None,
        book: AlertBook | None = None,
        save_rules: SaveRules | None = None,
        log: SyncLogEndpoints | None = None,
        channels: frozenset[str] = frozenset(),
    ) -> None:
        self.windows = windows
        self.channels = channels  # the registry a rule's channel must be in (empty: any)
        self.book = book or AlertBook()
        self.save_rules = save_rules
        self.log = log or SyncLogEndpoints(None, _no_deliveries)

    async def figures(self, window_s: int) -> dict[str, dict[str, Any]]:
        if self.windows is None:
            return {}
        return st.summary(st.merge(await self.windows(window_s)))

    async def sync(self, grid: Grid, call: Call) -> tuple[int, Any]:
        window_s = call.query_int("window_s", 60, 1, MAX_WINDOW_S)
        return 200, {"window_s": window_s, "channels": await self.figures(window_s),
                     "alerts": self.book.firing()}  # fmt: skip

    async def series(self, grid: Grid, call: Call) -> tuple[int, Any]:
        """The dashboard's points: per second and channel, the last ``window_s``."""
        window_s = call.query_int("window_s", 300, 1, MAX_WINDOW_S)
        merged = st.merge(await self.windows(window_s)) if self.windows else {}
        return 200, {"window_s": window_s, "points": st.series(merged),
                     "alerts": self.book.firing()}  # fmt: skip

    async def get_rules(self, grid: Grid, call: Call) -> tuple[int, Any]:
        return 200, {"rules": [msgspec.to_builtins(r) for r in self.book.rules]}

    async def put_rules(self, grid: Grid, call: Call) -> tuple[int, Any]:
        """The rules as the contract shows them (a JSON array), or as GET answers them
        (``{"rules": [...]}``): a client may send back what it read."""
        try:
            sent = orjson.loads(call.body) if call.body.strip() else None
        except orjson.JSONDecodeError as e:
            raise MalformedRequest(f"the body is not valid JSON: {e}") from None
        if isinstance(sent, dict):
            v.fields(sent, {"rules"})
            sent = sent["rules"]
        try:
            rules = msgspec.convert(sent, list[Rule])
        except msgspec.ValidationError as e:
            raise InvalidRequest(f"rules: {e}") from None
        if len({r.name for r in rules}) != len(rules) or len(rules) > 50:
            raise InvalidRequest("rules must have distinct names (at most 50)")
        unknown = sorted({r.channel for r in rules} - self.channels - {"*"})
        if self.channels and unknown:
            raise InvalidRequest(f"no channel {', '.join(unknown)}: a rule names a channel or *")
        shown = [msgspec.to_builtins(r) for r in rules]
        if self.save_rules is not None:
            await self.save_rules(shown)
        self.book.rules = rules
        return 200, {"rules": shown}

    def load_rules(self, rules: list[dict[str, Any]] | None) -> None:
        """The rules the store holds (None: none PUT yet, the defaults)."""
        if rules is not None:
            self.book.rules = msgspec.convert(rules, list[Rule])

    async def get_alerts(self, grid: Grid, call: Call) -> tuple[int, Any]:
        state = call.query_value("state")
        if state not in (None, "firing", "resolved"):
            raise InvalidRequest("state must be firing or resolved")
        shown = [a.view() for a in reversed(self.book.alerts) if state in (None, a.state)]
        return 200, {"alerts": shown}

    async def evaluate(self, notify: Notify | None) -> list[Alert]:
        changed = self.book.evaluate(await self.figures(EVAL_WINDOW_S), time.time())
        if notify is not None:
            for alert in changed:
                await notify(alert.view())
        return changed
