"""An outage as a loop that retries sees it: how many failures, since when, said in the log.

The write-behind (the store) and the hot copy (Redis) each keep one: a line
when the failures start, one every ``LOG_EVERY_S`` while they last (never
one per retry), and one saying how long it lasted when a try works again.
"""

from __future__ import annotations

import logging
import time

LOG_EVERY_S = 10.0


class Outage:
    def __init__(self, log: logging.Logger, what: str) -> None:
        self.log = log
        self.what = what  # "write-behind: the store", "hot copy: Redis"
        self.failures = 0
        self.failing_since: float | None = None  # monotonic
        self._last_log = 0.0

    def failed(self, error: Exception, waiting: str) -> None:
        self.failures += 1
        now = time.monotonic()
        if self.failing_since is None:
            self.failing_since = now
        if now - self._last_log >= LOG_EVERY_S:
            self._last_log = now
            self.log.warning("%s refuses writes (%s); %s, retrying", self.what, error, waiting)

    def worked(self) -> None:
        if self.failing_since is not None:
            self.log.warning(
                "%s is back; caught up after %.1f s of failures",
                self.what,
                time.monotonic() - self.failing_since,
            )
            self.failing_since = None
