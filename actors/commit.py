"""The unit of work's commit: a turn's changes go to the journal as one group, or not at all.

A shard runs a turn's commands in memory; their events wait in ``pending``
until ``flush`` hands them to the journal in one group commit, numbered after
``seq``. Once journaled they join the write-behind's backlog and the live
streams hear of them.

When the journal refuses a group, or cannot say whether it took it (a timeout:
``JournalOutcomeUnknown``), the commit is *broken*: the refused changes are
dropped from memory (``on_refused``: the shard rebuilds those entities from
the store and the journaled events), writes answer 503 with a fixed sentence
and nothing is sent until ``heal`` has settled the journal. Settling fences
any append still on its way and removes a doubtful group that landed after
all, so a change answered as refused never comes back. A grid process heals
from a worker thread (``heals_inline = False``: see api/runtime/node.py); tests and
tools heal on the next write.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from omnigrid.actors.backlog import Backlog
from omnigrid.actors.protocol import Result
from omnigrid.persistence.events import Event
from omnigrid.persistence.journal import Journal, JournalOutcomeUnknown, JournalUnavailable

# While the journal is broken, it is settled again at most this often: a dead
# store costs callers an immediate 503, not a connect timeout each.
RETRY_PAUSE_S = 0.5
# What a client is told; the cause goes to the log (it can carry driver text).
JOURNAL_REFUSED = "the journal cannot take writes right now; retry later"
log = logging.getLogger("omnigrid.commit")


class Commit:
    def __init__(
        self,
        shard_id: int,
        journal: Journal,
        backlog: Backlog,
        keep_refused: bool,
        on_refused: Callable[[set[str]], None],
    ) -> None:
        self.shard_id = shard_id
        self.journal = journal
        self.backlog = backlog
        # async durability acknowledged its changes already: a refused group is
        # kept and sent again once healed, never dropped
        self.keep_refused = keep_refused
        self.on_refused = on_refused
        self.unjournaled: list[Event] = []  # changed in this turn, not journaled yet
        self.seq = journal.last_seq()  # the last number journaled
        # Told of every group of events once journaled (the live streams' hub).
        self.on_journaled: Callable[[list[Event]], None] | None = None
        self._broken: str | None = None  # why (for the log), until healed
        self._broken_since = 0.0
        self.doubtful: tuple[int, int] | None = None  # a group sent, outcome unknown
        self.retry_at = 0.0
        self.heals_inline = True

    def ok(self) -> bool:
        return self._broken is None

    def refusal(self) -> Result | None:
        """503 for writes while the journal is broken (after one inline try, if due)."""
        if self._broken is None:
            return None
        if self.heals_inline and time.monotonic() >= self.retry_at:
            self.heal()
        return None if self._broken is None else refused()

    def flush(self) -> bool:
        """Hand pending events to the journal; False if it refused them.

        While the journal is broken nothing is sent: pending changes (expiries
        run by reads and timers, async durability's acknowledged writes) wait
        in memory for ``heal``.
        """
        if not self.unjournaled:
            return True
        if self._broken is not None:
            return False
        events, self.unjournaled = self.unjournaled, []
        try:
            self.journal.append(self.seq + 1, events)
        except JournalUnavailable as e:
            self._break(e)
            if self.keep_refused:  # sent again once healed (a doubtful copy removed first)
                self.unjournaled = events + self.unjournaled
            else:
                self.on_refused({event.key for event in events})
            return False
        for event in events:
            self.seq += 1
            self.backlog.journaled(self.seq, event)
        if self.on_journaled is not None:
            self.on_journaled(events)
        return True

    def _break(self, error: JournalUnavailable) -> None:
        if isinstance(error, JournalOutcomeUnknown):
            self.doubtful = (error.first_seq, error.last_seq)
        self._broken = str(error)
        self._broken_since = time.monotonic()
        self.retry_at = self._broken_since + RETRY_PAUSE_S
        log.warning(
            "shard %d: the journal %s a batch (%s); writes answer 503 until it is settled",
            self.shard_id,
            "did not answer" if self.doubtful else "refused",
            error,
        )

    def heal(self) -> bool:
        """Settle the journal (blocking I/O); True when it takes writes again."""
        try:
            head = self.journal.settle(self.doubtful)
        except JournalUnavailable as e:
            self.heal_failed(e)
            return False
        self.healed(head)
        return True

    def heal_failed(self, error: JournalUnavailable) -> None:
        self._broken = str(error)
        self.retry_at = time.monotonic() + RETRY_PAUSE_S

    def healed(self, head: int) -> None:
        """The journal was settled and ends at ``head``: writes go to it again."""
        if self._broken is None:
            return
        log.warning(
            "shard %d: the journal takes writes again after %.1f s",
            self.shard_id,
            time.monotonic() - self._broken_since,
        )
        self.seq = max(self.seq, head)
        self._broken = None
        self.doubtful = None
        self.flush()  # what waited: expiries, async durability's writes


def refused() -> Result:
    return Result(503, None, "unavailable", JOURNAL_REFUSED)
