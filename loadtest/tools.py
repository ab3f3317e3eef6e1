"""Load generators: wrk (closed loop, saturation) and h2load (fixed offered rate).

wrk scenarios are generated as Lua scripts whose ``request()`` draws a random uid or
SKU and a random channel for every request. The checkout flows (``checkout_pay``,
``flash_checkout``) are stateful: ``response()`` queues the order_id of every 201
checkout, ``request()`` pays a queued order if there is one, else checks out anew; the
script times checkouts and pays separately and prints its counts and latency
histograms as one ``FLOW_JSON {...}`` line from ``done()``. Fixed-rate runs use h2load over HTTP/1.1
with ``--rps`` (per connection, so total rate = rps x connections) and ``-i`` (a file
of cart URIs); latency percentiles come from h2load's per-request ``--log-file``.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

CHANNELS = ("miniprogram", "app", "h5", "wechat_oa", "pos", "web", "alipay", "kiosk")
SKU_LUA_FMT = "sku-%05d"
HOT_SKU = "flash-1"


def sku_name(i: int) -> str:
    return f"sku-{i:05d}"


def cart_add_uid(i: int) -> str:
    return f"u-{i}"


def read_cart_uid(i: int) -> str:
    return f"r-{i}"


# --- wrk Lua scripts -----------------------------------------------------------

# each thread's own random sequence, and a request's headers (a random channel)
_LUA_INIT_HEADERS = """
function init(args)
  math.randomseed(os.time() * 1000 + (tid or 0) * 7919)
  math.random(); math.random()
end
local function hdrs()
  return {["Content-Type"] = "application/json",
          ["X-Channel"] = channels[math.random(1, %(nch)d)]}
end
"""

_LUA_COMMON = (
    """
local channels = {%(channels)s}
local counter = 1
function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
end
"""
    + _LUA_INIT_HEADERS
)

_LUA_REQUEST = {
    "cart_add": """
function request()
  local path = string.format("/v1/carts/u-%%d/lines", math.random(0, %(users)d - 1))
  local body = string.format('{"sku":"%(sku_fmt)s","qty":1}', math.random(0, %(skus)d - 1))
  return wrk.format("POST", path, hdrs(), body)
end
""",
    "cart_read": """
function request()
  return wrk.format("GET", string.format("/v1/carts/r-%%d", math.random(0, %(carts)d - 1)),
                    hdrs(), nil)
end
""",
    "reserve_spread": """
local body = '{"qty":1,"ttl_s":%(ttl)d}'
function request()
  local path = string.format("/v1/skus/%(sku_fmt)s/reservations", math.random(0, %(skus)d - 1))
  return wrk.format("POST", path, hdrs(), body)
end
""",
    "reserve_hot": """
local body = '{"qty":1,"ttl_s":%(ttl)d}'
function request()
  return wrk.format("POST", "/v1/skus/%(hot)s/reservations", hdrs(), body)
end
""",
    # v2 (omnigrid only): a known shopper's phone resolved; points earned, each once
    "resolve_known": """
function request()
  local body = string.format('{"identifiers":[{"type":"phone","value":"139%%08d"}],'
                             .. '"create":false}', math.random(0, %(carts)d - 1))
  return wrk.format("POST", "/v1/identities/resolve", hdrs(), body)
end
""",
    "points_earn": """
local n = 0
function request()
  n = n + 1
  local path = string.format("/v1/members/u-%%d/points/earn", math.random(0, %(users)d - 1))
  local body = string.format('{"points":10,"reason":"bench","external_id":"%%d-%%d-%%d"}',
                             tid or 0, n, math.random(0, 1000000000))
  return wrk.format("POST", path, hdrs(), body)
end
""",
}

# --- the checkout flows: checkout (201 order) then pay (200 paid) ----------------------
#
# Per wrk thread: a FIFO of order_ids from 201 checkouts; request() pays the oldest if
# any, else sends a new checkout. wrk hands response() no request, so a response is
# matched to its request by what it echoes: a checkout's answer by its "uid" (the last
# checkout sent for that uid; uids come from --users, two in flight for the same uid in
# one thread are rare), a pay's by its "order_id". Send and answer times come from
# clock_gettime(CLOCK_MONOTONIC) through LuaJIT's ffi, into log-scale histograms (1%
# buckets, in microseconds) per request type; failed answers carry no echo and are
# counted by status and problem code instead of timed.

_LUA_FLOW = (
    """
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } og_timespec;
int clock_gettime(int clk_id, og_timespec *tp);
]]
local ts = ffi.new("og_timespec")
local function now_us()
  ffi.C.clock_gettime(1, ts)
  return tonumber(ts.tv_sec) * 1000000 + tonumber(ts.tv_nsec) / 1000
end
local channels = {%(channels)s}
local threads = {}
local counter = 1
function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
  table.insert(threads, thread)
end
-- globals: done() reads them from each thread with thread:get()
ck_hist, pay_hist, fails = {}, {}, {}
stats = {checkouts_sent = 0, pays_sent = 0, checkouts_ok = 0, paid = 0,
         ok_other = 0, unmatched = 0}
local queue, head, tail = {}, 1, 0
local ck_sent, pay_sent = {}, {}
local n = 0
local LOG_STEP = math.log(1.01)
"""
    + _LUA_INIT_HEADERS
    + """local function record(h, us)
  local b = math.floor(math.log(us > 1 and us or 1) / LOG_STEP)
  h[b] = (h[b] or 0) + 1
end
%(lines)s
function request()
  n = n + 1
  if head <= tail then
    local oid = queue[head]
    queue[head] = nil
    head = head + 1
    stats.pays_sent = stats.pays_sent + 1
    pay_sent[oid] = now_us()
    return wrk.format("POST", "/v1/orders/" .. oid .. "/pay", hdrs(),
                      string.format('{"payment_ref":"bench-%%d-%%d"}', tid or 0, n))
  end
  local uid = string.format("u-%%d", math.random(0, %(users)d - 1))
  stats.checkouts_sent = stats.checkouts_sent + 1
  ck_sent[uid] = now_us()
  return wrk.format("POST", "/v1/checkouts", hdrs(),
                    '{"uid":"' .. uid .. '","lines":[' .. lines() .. '],"fulfilment":"delivery"}')
end
function response(status, headers, body)
  local t = now_us()
  local oid = string.match(body, '"order_id"%%s*:%%s*"([^"]+)"')
  if status == 201 and oid then
    stats.checkouts_ok = stats.checkouts_ok + 1
    tail = tail + 1
    queue[tail] = oid
    local uid = string.match(body, '"uid"%%s*:%%s*"([^"]+)"')
    local t0 = uid and ck_sent[uid]
    if t0 then
      record(ck_hist, t - t0)
      ck_sent[uid] = nil
    else
      stats.unmatched = stats.unmatched + 1
    end
  elseif status == 200 and oid and string.find(body, '"status"%%s*:%%s*"paid"') then
    stats.paid = stats.paid + 1
    local t0 = pay_sent[oid]
    if t0 then
      record(pay_hist, t - t0)
      pay_sent[oid] = nil
    else
      stats.unmatched = stats.unmatched + 1
    end
  elseif status >= 200 and status < 300 then
    stats.ok_other = stats.ok_other + 1
    local st = string.match(body, '"status"%%s*:%%s*"([^"]+)"') or "-"
    local k = status .. " status=" .. string.gsub(st, "[^%%w_.-]", "?")
    fails[k] = (fails[k] or 0) + 1
  else
    local code = string.match(body, '"code"%%s*:%%s*"([^"]+)"') or "-"
    local k = status .. " " .. string.gsub(code, "[^%%w_.-]", "?")
    fails[k] = (fails[k] or 0) + 1
  end
end
local function merge(into, from)
  for k, v in pairs(from or {}) do into[k] = (into[k] or 0) + v end
end
local function pairs_json(h, keyfmt)
  local parts = {}
  for k, v in pairs(h) do parts[#parts + 1] = string.format(keyfmt .. ":%%d", k, v) end
  return "{" .. table.concat(parts, ",") .. "}"
end
function done(summary, latency, requests)
  local ck, pay, st, fl = {}, {}, {}, {}
  for _, t in ipairs(threads) do
    merge(ck, t:get("ck_hist"))
    merge(pay, t:get("pay_hist"))
    merge(st, t:get("stats"))
    merge(fl, t:get("fails"))
  end
  io.write("FLOW_JSON {\\"duration_us\\":", summary.duration,
           ",\\"stats\\":", pairs_json(st, '"%%s"'),
           ",\\"failures\\":", pairs_json(fl, '"%%s"'),
           ",\\"checkout_hist\\":", pairs_json(ck, '"%%d"'),
           ",\\"pay_hist\\":", pairs_json(pay, '"%%d"'), "}\\n")
end
"""
)

# lines(): the checkout's lines as JSON (no brackets)
_LUA_FLOW_LINES = {
    "checkout_pay": """
local function lines()
  local a = math.random(0, %(skus)d - 1)
  local b = math.random(0, %(skus)d - 1)
  while b == a do b = math.random(0, %(skus)d - 1) end
  local c = math.random(0, %(skus)d - 1)
  while c == a or c == b do c = math.random(0, %(skus)d - 1) end
  return string.format('{"sku":"%(sku_fmt)s","qty":1},{"sku":"%(sku_fmt)s","qty":1},'
                       .. '{"sku":"%(sku_fmt)s","qty":1}', a, b, c)
end
""",
    "flash_checkout": """
local function lines()
  return '{"sku":"%(hot)s","qty":1}'
end
""",
}

V2_SCENARIOS = ("resolve_known", "points_earn")
FLOW_SCENARIOS: tuple[str, ...] = tuple(_LUA_FLOW_LINES)
SCENARIOS: tuple[str, ...] = (
    *(s for s in _LUA_REQUEST if s not in V2_SCENARIOS),
    *FLOW_SCENARIOS,
)
ALL_SCENARIOS: tuple[str, ...] = (*_LUA_REQUEST, *FLOW_SCENARIOS)


def known_phone(i: int) -> str:
    """The phone of the i-th seeded shopper (the resolve_known scenario asks for them)."""
    return f"139{i:08d}"


def wrk_script(scenario: str, *, skus: int, users: int, carts: int, ttl: int) -> str:
    """Lua source for one scenario (request() varies uid/sku and X-Channel per request)."""
    params: dict[str, Any] = {
        "channels": ", ".join(f'"{c}"' for c in CHANNELS),
        "nch": len(CHANNELS),
        "skus": skus,
        "users": users,
        "carts": carts,
        "ttl": ttl,
        "sku_fmt": SKU_LUA_FMT,
        "hot": HOT_SKU,
    }
    if scenario in _LUA_FLOW_LINES:
        params["lines"] = _LUA_FLOW_LINES[scenario] % params
        return _LUA_FLOW % params
    return (_LUA_COMMON % params) + (_LUA_REQUEST[scenario] % params)


# --- wrk -------------------------------------------------------------------------

_UNITS_S = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def _to_ms(value: str, unit: str) -> float:
    return float(value) * _UNITS_S[unit] * 1000.0


@dataclass
class WrkResult:
    requests: int = 0
    duration_s: float = 0.0
    rps: float = 0.0
    ok_rps: float = 0.0
    non_2xx: int = 0
    socket_errors: dict[str, int] = field(default_factory=dict)
    latency_ms: dict[str, float] = field(default_factory=dict)
    flow: dict[str, Any] | None = None  # checkout flows only: see parse_flow
    raw: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


HIST_STEP = 1.01  # the flow scripts' histogram buckets: [1.01^b, 1.01^(b+1)) microseconds


def hist_percentiles(hist: dict[int, int]) -> dict[str, float]:
    """p50/p90/p99/p99.9/max in ms (nearest rank; a bucket read as its geometric middle,
    within 0.5%) and the count, from a flow script's {bucket: count} histogram."""
    total = sum(hist.values())
    out: dict[str, float] = {"count": float(total)}
    if not total:
        return out
    buckets = sorted(hist.items())
    for name, pct in (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99.9", 99.9)):
        rank = max(1, math.ceil(pct / 100.0 * total))
        seen = 0
        for b, c in buckets:
            seen += c
            if seen >= rank:
                out[name] = HIST_STEP ** (b + 0.5) / 1000.0
                break
    out["max"] = HIST_STEP ** (buckets[-1][0] + 1) / 1000.0
    return out


def parse_flow(text: str) -> dict[str, Any] | None:
    """The FLOW_JSON line a checkout-flow script prints: counts per request type, paid
    orders per second, and checkout and pay latency percentiles (ms)."""
    m = re.search(r"^FLOW_JSON (\{.*\})$", text, re.M)
    if not m:
        return None
    doc = json.loads(m.group(1))
    st: dict[str, int] = doc["stats"]
    dur = doc["duration_us"] / 1e6
    ck_hist = {int(k): int(v) for k, v in doc["checkout_hist"].items()}
    pay_hist = {int(k): int(v) for k, v in doc["pay_hist"].items()}
    ok = st.get("checkouts_ok", 0)
    return {
        "duration_s": dur,
        "checkouts_sent": st.get("checkouts_sent", 0),
        "checkouts_ok": ok,
        "pays_sent": st.get("pays_sent", 0),
        "paid": st.get("paid", 0),
        "paid_per_s": st.get("paid", 0) / dur if dur else 0.0,
        "checkouts_per_s": ok / dur if dur else 0.0,
        "paid_of_checkouts": st.get("paid", 0) / ok if ok else None,
        "ok_other": st.get("ok_other", 0),
        "unmatched": st.get("unmatched", 0),
        "failures": doc["failures"],
        "checkout_ms": hist_percentiles(ck_hist),
        "pay_ms": hist_percentiles(pay_hist),
        "hist_step": HIST_STEP,  # [bucket, count]: [1.01^b, 1.01^(b+1)) microseconds
        "checkout_hist": sorted(ck_hist.items()),
        "pay_hist": sorted(pay_hist.items()),
    }


def parse_wrk(text: str) -> WrkResult:
    res = WrkResult(raw=text)
    m = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m|h)", text)
    if m:
        res.requests = int(m.group(1))
        res.duration_s = _to_ms(m.group(2), m.group(3)) / 1000.0
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if m:
        res.rps = float(m.group(1))
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    if m:
        res.non_2xx = int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        res.socket_errors = dict(
            zip(("connect", "read", "write", "timeout"), map(int, m.groups()), strict=True)
        )
    m = re.search(
        r"^\s+Latency\s+([\d.]+)(us|ms|s|m|h)\s+([\d.]+)(us|ms|s|m|h)\s+"
        r"([\d.]+)(us|ms|s|m|h)",
        text,
        re.M,
    )
    if m:
        res.latency_ms["mean"] = _to_ms(m.group(1), m.group(2))
        res.latency_ms["max"] = _to_ms(m.group(5), m.group(6))
    for pct, value, unit in re.findall(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s|m|h)", text, re.M):
        res.latency_ms[f"p{pct}"] = _to_ms(value, unit)
    if res.duration_s > 0:
        res.ok_rps = (res.requests - res.non_2xx) / res.duration_s
    res.flow = parse_flow(text)
    return res


def run_wrk(
    base_url: str,
    script: Path,
    *,
    duration_s: float,
    connections: int = 64,
    threads: int = 2,
    timeout_s: float = 5.0,
) -> WrkResult:
    cmd = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration_s))}s",
        "--latency",
        f"--timeout={timeout_s:g}s",
        "-s",
        str(script),
        base_url,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=duration_s + 60, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stderr.strip()[:500]}")
    return parse_wrk(proc.stdout)


# --- h2load (fixed offered rate) ----------------------------------------------------


@dataclass
class RateResult:
    offered_rps: float
    connections: int
    duration_s: float
    requests: int = 0
    achieved_rps: float = 0.0
    non_2xx: int = 0
    failed: int = 0
    latency_ms: dict[str, float] = field(default_factory=dict)
    saturated: bool = False
    late_frac: float = 0.0
    summary: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def percentile(sorted_values: list[float], pct: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(pct / 100.0 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def parse_h2load_log(
    path: Path, warmup_s: float, duration_s: float
) -> tuple[list[float], int, float]:
    """From an h2load --log-file: (sorted latencies in ms, non-2xx count, measured seconds)
    of the requests sent in [first + warmup, first + warmup + duration)."""
    rows: list[tuple[int, int, int]] = []
    with path.open() as fh:
        for line in fh:
            parts = line.split("\t")
            if len(parts) >= 3:
                rows.append((int(parts[0]), int(parts[1]), int(parts[2])))
    if not rows:
        return [], 0, duration_s
    t0 = min(r[0] for r in rows) + int(warmup_s * 1e6)
    t1 = t0 + int(duration_s * 1e6)
    kept = [r for r in rows if t0 <= r[0] < t1]
    lat = sorted(r[2] / 1000.0 for r in kept)
    bad = sum(1 for r in kept if not 200 <= r[1] < 300)
    return lat, bad, duration_s


def run_h2load(
    uri_file: Path,
    *,
    rate: float,
    connections: int,
    duration_s: float,
    warmup_s: float,
    log_path: Path,
    body: Path | None = None,
    headers: tuple[str, ...] = (),
) -> RateResult:
    """Offer ``rate`` req/s of GETs (URIs from ``uri_file``) for ``warmup_s + duration_s``
    (POSTs of ``body`` if given, with ``headers`` such as "X-Channel: app").

    h2load's ``--rps`` is per connection and every connection's timer starts when the
    connection does; started together (``-D``) all connections fire in the same
    millisecond, i.e. bursts of ``connections`` requests. So connections are opened
    staggered (``-r``/``--rate-period 1ms``) across one send interval, which spreads
    arrivals evenly. ``-r`` excludes ``-D``: the run is bounded by ``-n`` and by
    ``-T`` (connection lifetime); the warm-up is cut from the log by send time.
    """
    per_conn = rate / connections
    interval_ms = 1000.0 / per_conn
    per_ms = max(1, round(connections / interval_ms))
    total_s = warmup_s + duration_s
    n = max(connections, math.ceil(rate * total_s / connections) * connections)
    log_path.unlink(missing_ok=True)  # h2load appends
    cmd = [
        "h2load",
        "--h1",
        "-t",
        "1",
        "-c",
        str(connections),
        "-m",
        "1",
        "--rps",
        f"{per_conn:.4f}",
        "-n",
        str(n),
        "-r",
        str(per_ms),
        "--rate-period",
        "1ms",
        "-T",
        f"{math.ceil(total_s + 5)}s",
        "-i",
        str(uri_file),
        "--log-file",
        str(log_path),
    ]
    if body is not None:
        cmd += ["-d", str(body)]
    for header in headers:
        cmd += ["-H", header]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=total_s + 60, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"h2load failed ({proc.returncode}): {proc.stderr.strip()[:500]}")
    res = RateResult(offered_rps=rate, connections=connections, duration_s=duration_s)
    res.summary = "\n".join(
        ln
        for ln in proc.stdout.splitlines()
        if ln.startswith(("finished in", "requests:", "status codes:"))
    )
    m = re.search(
        r"requests: \d+ total, \d+ started, \d+ done, \d+ succeeded, (\d+) failed", proc.stdout
    )
    if m:
        res.failed = int(m.group(1))
    lat, res.non_2xx, measured_s = parse_h2load_log(log_path, warmup_s, duration_s)
    res.requests = len(lat)
    res.achieved_rps = len(lat) / measured_s
    for pct in (50.0, 90.0, 99.0, 99.9):
        res.latency_ms[f"p{pct:g}"] = percentile(lat, pct)
    if lat:
        res.latency_ms["max"] = lat[-1]
        # a response slower than its connection's send interval delays the next send
        # (coordinated omission): past ~1% of requests, p99 is understated
        res.late_frac = sum(1 for x in lat if x > interval_ms) / len(lat)
    # "saturated": the offered schedule was not kept (rate missed, failures, or >1% of
    # responses slower than the send interval); its percentiles are then optimistic
    res.saturated = res.achieved_rps < 0.97 * rate or res.failed > 0 or res.late_frac > 0.01
    return res


def missing_tools(names: tuple[str, ...] = ("wrk", "h2load")) -> list[str]:
    return [n for n in names if shutil.which(n) is None]
