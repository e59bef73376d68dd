"""Repeated log lines, at most one per period and kind, with a count of those held back.

During an outage the same error comes back many times a second; one line per period that says how
many were held back keeps the log readable (and small) without hiding that it goes on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


class QuietLog:
    """``warning(kind, msg, *args)``: logged when ``kind`` was not logged in the last ``period_s``,
    else counted; the next line of that kind (or ``flush()``) says how many were held back."""

    def __init__(self, logger: logging.Logger, period_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.period_s = period_s
        self.clock = clock
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def log(self, level: int, kind: str, msg: str, *args: object) -> bool:
        """Log or hold back one occurrence; True when it was logged."""
        now = self.clock()
        last = self._last.get(kind)
        if last is not None and now - last < self.period_s:
            self._held[kind] = self._held.get(kind, 0) + 1
            return False
        self._last[kind] = now
        held = self._held.pop(kind, 0)
        if held:
            msg += " (%d more like this in the last %gs)"
            args = (*args, held, self.period_s)
        self.logger.log(level, msg, *args)
        return True

    def warning(self, kind: str, msg: str, *args: object) -> bool:
        return self.log(logging.WARNING, kind, msg, *args)

    def error(self, kind: str, msg: str, *args: object) -> bool:
        return self.log(logging.ERROR, kind, msg, *args)

    def held(self, kind: str) -> int:
        """Occurrences of ``kind`` held back since it was last logged."""
        return self._held.get(kind, 0)

    def flush(self) -> None:
        """One line per kind with occurrences still held back (call at the end of a run)."""
        for kind, held in sorted(self._held.items()):
            self.logger.warning("%s: %d more like this were not logged", kind, held)
        self._held.clear()
