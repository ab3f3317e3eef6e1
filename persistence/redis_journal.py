"""The journal in Redis: one Stream per shard, appended by a script that can be fenced.

A batch is one ``EVALSHA`` of ``APPEND``: it checks that its writer still holds
the journal (the ``epoch`` in ``<stream>:writer``), that it follows the last
number written (``head``) and that Redis runs it before the batch's deadline,
then XADDs every event with the id ``<seq>-0``. A script runs whole or not at
all, so a batch is never half in the journal.

The deadline is what makes a stall harmless: a batch sent to a Redis that is
stopped (``SIGSTOP``, a long fsync, a swapped-out host) and runs it seconds
later finds its deadline passed and writes nothing. When no answer comes
(``JournalOutcomeUnknown``), ``settle`` runs ``SETTLE``: it bumps the epoch
(a batch still on its way is refused when it arrives), removes the doubtful
range if it did land, and reads the head. The shard answered the batch 503;
from then on it is in the journal nowhere.

Redis must keep what it acknowledges: production needs ``appendonly yes`` with
``appendfsync always`` (or replicas and ``WAIT``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from omnigrid.persistence.events import Event
from omnigrid.persistence.journal import (
    APPEND_TIMEOUT_S,
    REPLAY_CHUNK,
    JournalOutcomeUnknown,
    JournalUnavailable,
    pack_event,
    unpack_event,
)

log = logging.getLogger("omnigrid.journal")

# How much longer than its deadline a batch's answer is waited for: the
# answer's trip back, and the two clocks' disagreement left after ``settle``
# measured it.
ANSWER_MARGIN_S = 0.15
SETTLE_TIMEOUT_S = 0.5  # one try of SETTLE; a healer tries again
# APPEND's refusals, made before it writes anything (any other error is an unknown outcome)
REFUSALS = ("OGFENCED", "OGGAP", "OGLATE")

# KEYS: stream, writer. ARGV: epoch, deadline (ms, Redis's clock), first seq, events...
APPEND = """
local w = redis.call('HMGET', KEYS[2], 'epoch', 'head')
if w[1] ~= ARGV[1] then
  return redis.error_reply('OGFENCED another writer holds this journal')
end
local first = tonumber(ARGV[3])
if tonumber(w[2]) ~= first - 1 then
  return redis.error_reply('OGGAP the journal ends at ' .. tostring(w[2]))
end
local now = redis.call('TIME')
if tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) > tonumber(ARGV[2]) then
  return redis.error_reply('OGLATE the batch reached Redis after its deadline')
end
for i = 4, #ARGV do
  redis.call('XADD', KEYS[1], string.format('%.0f-0', first + i - 4), 'e', ARGV[i])
end
local last = string.format('%.0f', first + #ARGV - 4)
redis.call('HSET', KEYS[2], 'head', last)
return last
"""

# KEYS: stream, writer. ARGV: first and last seq of the doubtful range (0 0: none).
# Returns {epoch, head, seconds, microseconds, entries removed}.
SETTLE = """
local head = redis.call('HGET', KEYS[2], 'head')
if not head then
  head = '0'
  local ok, info = pcall(redis.call, 'XINFO', 'STREAM', KEYS[1])
  if ok then
    for i = 1, #info, 2 do
      if info[i] == 'last-generated-id' then head = string.match(info[i + 1], '^(%d+)') end
    end
  end
  redis.call('HSET', KEYS[2], 'head', head)
end
local epoch = redis.call('HINCRBY', KEYS[2], 'epoch', 1)
local removed = 0
if tonumber(ARGV[1]) > 0 and tonumber(head) >= tonumber(ARGV[1]) then
  local entries = redis.call('XRANGE', KEYS[1], ARGV[1] .. '-0', ARGV[2] .. '-0')
  for _, entry in ipairs(entries) do
    redis.call('XDEL', KEYS[1], entry[1])
    removed = removed + 1
  end
end
local now = redis.call('TIME')
return {epoch, head, now[1], now[2], removed}
"""


class _Connection:
    """One connection of its own, opened when first needed and again after a cut.

    No retries: redis-py's default retries a timed-out command, and a journal
    append sent twice is exactly what must never happen.
    """

    def __init__(self, url: str, timeout_s: float, script: str) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self.script = script
        self._client: redis.Redis | None = None
        self._script: Any = None

    def open(self) -> tuple[redis.Redis, Any]:
        """The client and its script, connected; raises ``redis.RedisError`` having sent nothing."""
        if self._client is None:
            # A single-connection client connects as it is made.
            self._client = redis.Redis.from_url(
                self.url,
                socket_timeout=self.timeout_s,
                socket_connect_timeout=self.timeout_s,
                retry=Retry(NoBackoff(), 0),
                single_connection_client=True,
            )
            self._script = self._client.register_script(self.script)
        connection = self._client.connection
        assert connection is not None
        connection.connect()  # type: ignore[no-untyped-call]  # no-op when connected
        return self._client, self._script

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


class RedisJournal:
    def __init__(self, url: str, stream: str, timeout_s: float = APPEND_TIMEOUT_S) -> None:
        self.stream = stream
        self.writer_key = stream + ":writer"
        self.timeout_s = timeout_s
        # Appends come from the shard's loop; settling, replay and trims may
        # come from a worker thread: a connection each.
        self._appender = _Connection(url, timeout_s + ANSWER_MARGIN_S, APPEND)
        self._control = _Connection(url, SETTLE_TIMEOUT_S, SETTLE)
        # Trims leave the shard's loop: on it, a stalled Redis held the loop for
        # SETTLE_TIMEOUT_S per trim (five a second), so the appends waiting behind
        # it were not even sent. A thread of its own, one trim at a time, the
        # newest number winning.
        self._trimmer = _Connection(url, SETTLE_TIMEOUT_S, SETTLE)
        self._housekeeping = ThreadPoolExecutor(1, thread_name_prefix="journal-trim")
        self._trim_lock = threading.Lock()
        self._trim_to: int | None = None  # the number the next trim goes up to
        self._trim_failing = False
        self._epoch: int | None = None
        self._clock_offset = 0.0  # Redis's clock minus ours, measured by settle

    def append(self, first_seq: int, events: Sequence[Event]) -> None:
        last = first_seq + len(events) - 1
        epoch = self._epoch if self._epoch is not None else self._take_over()
        deadline_ms = int((time.time() + self._clock_offset + self.timeout_s) * 1000)
        try:
            _, append = self._appender.open()
        except redis.RedisError as e:  # not connected: nothing was sent
            raise JournalUnavailable(f"Redis journal {self.stream}: {e}") from e
        try:
            append(
                keys=[self.stream, self.writer_key],
                args=[epoch, deadline_ms, first_seq, *(pack_event(e) for e in events)],
            )
        except redis.ResponseError as e:
            if str(e).startswith(REFUSALS):  # the script's own checks: nothing was written
                if str(e).startswith("OGFENCED"):
                    self._epoch = None  # take the journal back on the next append
                raise JournalUnavailable(f"Redis journal {self.stream}: {e}") from e
            # any other error (out of memory, say) may have come after some XADDs
            raise JournalOutcomeUnknown(f"Redis journal {self.stream}: {e}", first_seq, last) from e
        except redis.RedisError as e:
            raise JournalOutcomeUnknown(f"Redis journal {self.stream}: {e}", first_seq, last) from e

    def _take_over(self) -> int:
        """Fence any earlier writer (a process this one replaces) and hold the journal."""
        self.settle(None)
        assert self._epoch is not None
        return self._epoch

    def settle(self, doubtful: tuple[int, int] | None) -> int:
        first, last = doubtful if doubtful is not None else (0, 0)
        before = time.time()
        try:
            _, script = self._control.open()
            answer: Any = script(keys=[self.stream, self.writer_key], args=[first, last])
        except redis.RedisError as e:
            raise JournalUnavailable(f"Redis journal {self.stream}: {e}") from e
        after = time.time()
        epoch, head, seconds, micros, removed = answer
        self._epoch = int(epoch)
        self._clock_offset = int(seconds) + int(micros) / 1e6 - (before + after) / 2
        if removed:
            log.warning(
                "journal %s: a batch answered as failed had landed after all; "
                "removed its %d entries (numbers %d-%d)",
                self.stream,
                removed,
                first,
                last,
            )
        return int(head)

    def replay(self) -> Iterator[tuple[int, Event]]:
        start = "-"
        while True:
            try:
                client, _ = self._control.open()
                entries: Any = client.xrange(self.stream, min=start, count=REPLAY_CHUNK)
            except redis.RedisError as e:
                raise JournalUnavailable(f"Redis journal {self.stream}: {e}") from e
            if not entries:
                return
            for entry_id, fields in entries:
                yield int(bytes(entry_id).split(b"-")[0]), unpack_event(fields[b"e"])
            start = "(" + bytes(entries[-1][0]).decode()

    def trim(self, upto: int) -> None:
        with self._trim_lock:
            pending = self._trim_to is not None
            self._trim_to = max(self._trim_to or 0, upto)
        if not pending:
            self._housekeeping.submit(self._trim)

    def _trim(self) -> None:
        with self._trim_lock:
            upto, self._trim_to = self._trim_to, None
        assert upto is not None
        try:
            client, _ = self._trimmer.open()
            client.xtrim(self.stream, minid=f"{upto + 1}-0", approximate=False)
        except redis.RedisError as e:  # the next drain's trim goes as far
            if not self._trim_failing:
                log.warning("Redis journal %s: trimming failed: %s", self.stream, e)
            self._trim_failing = True
            return
        self._trim_failing = False

    def wait_for_housekeeping(self) -> None:
        """Until the trims handed over so far are done."""
        self._housekeeping.submit(lambda: None).result()

    def last_seq(self) -> int:
        """Take the journal over (fencing any earlier writer) and say where it ends."""
        return self.settle(None)

    def close(self) -> None:
        self._housekeeping.shutdown(wait=True)
        self._appender.close()
        self._control.close()
        self._trimmer.close()
