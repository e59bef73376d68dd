"""Repeated log lines, rate-limited: the first of a kind goes out, then at most one per period with a count.

During a Kafka outage aiokafka logs a line for every reconnect attempt of every connection (several
per second per client, for as long as the broker is away), which buried the one line that mattered
and filled disks. :class:`RepeatFilter` keeps the first record of each kind (logger, level and message
template, not its arguments, so "cannot connect to node 1: <error>" is one kind), drops the repeats for
``period`` seconds and then lets one through saying how many were dropped. Records below ``level``
(WARNING by default) pass untouched, so a component's regular progress lines are never dropped.
:func:`quiet_repeats` installs it on the loggers that repeat; components call it at start, never at import.
Our own code, where it knows what repeats (a wait for the broker, a rate it cannot keep up with), says so
at the call site with :class:`QuietLog`, which keys by a kind it is given and can flush its counts at the end.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable

DEFAULT_PERIOD = 30.0
NOISY_LOGGERS = ("aiokafka", "faust.transport", "kafka")  # their reconnect loops repeat per attempt
WORKER_LOGGERS = (*NOISY_LOGGERS, "agents")  # and the worker's own retry warnings
MAX_KINDS = 1024  # distinct kinds remembered; the oldest is forgotten first


class RepeatFilter(logging.Filter):
    """A logging filter that passes one record per kind and period and counts the ones it drops."""

    def __init__(self, period: float = DEFAULT_PERIOD, clock: Callable[[], float] = time.monotonic,
                 level: int = logging.WARNING) -> None:
        super().__init__()
        self.period, self.level = period, level
        self.clock = clock
        self._kinds: OrderedDict[tuple[str, int, str], list[float]] = OrderedDict()  # kind -> [passed at, dropped]

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < self.level:
            return True
        kind = (record.name, record.levelno, str(record.msg))
        now = self.clock()
        seen = self._kinds.get(kind)
        if seen is not None and now - seen[0] < self.period:
            seen[1] += 1
            return False
        if seen is not None and seen[1]:
            record.msg = f"{record.msg} [{int(seen[1])} more like this in the last {now - seen[0]:.0f} s]"
        self._kinds[kind] = [now, 0]
        self._kinds.move_to_end(kind)
        while len(self._kinds) > MAX_KINDS:
            self._kinds.popitem(last=False)
        return True


_installed: dict[str, RepeatFilter] = {}


def quiet_repeats(prefixes: Iterable[str] = NOISY_LOGGERS, period: float = DEFAULT_PERIOD) -> list[str]:
    """Put one :class:`RepeatFilter` on every existing logger under ``prefixes``; returns their names.

    A logger's filters see only the records created on that logger, so each module's logger gets the
    filter (the libraries create theirs when imported, before a component starts). Idempotent.
    """
    prefixes = tuple(prefixes)
    names = [name for name in list(logging.root.manager.loggerDict) + list(prefixes)
             if any(name == p or name.startswith(p + ".") for p in prefixes)]
    for name in dict.fromkeys(names):
        if name not in _installed:
            _installed[name] = RepeatFilter(period)
            logging.getLogger(name).addFilter(_installed[name])
    return sorted(_installed)


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
