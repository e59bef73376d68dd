"""When to send what: constant-rate batch schedules and timestamp-group schedules.

Deadlines are offsets in seconds from the start of the run, measured on ``time.monotonic`` so wall
clock adjustments cannot speed up or stall a replay. Counts are cumulative (``floor(rate * t)``), so
fractional rates are exact over time and one late batch does not lose events: the next catches up.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator


def constant_schedule(rate: float, interval_s: float) -> Iterator[tuple[float, int]]:
    """(deadline offset, events to send) per batch: batch k leaves at k*interval with the events due."""
    if rate <= 0 or interval_s <= 0:
        raise ValueError("rate and interval must be positive")
    sent = 0
    k = 0
    while True:
        due = math.floor(rate * (k + 1) * interval_s + 1e-9)
        yield k * interval_s, due - sent
        sent = due
        k += 1


def rate_from_batches(events_per_interval: int, interval_ms: float) -> float:
    """Events per second of ``N events every MS milliseconds``."""
    if events_per_interval <= 0 or interval_ms <= 0:
        raise ValueError("--events-per-interval and --interval-ms must be positive")
    return events_per_interval * 1000.0 / interval_ms


def batch_interval(rate: float) -> float:
    """Batch period for a bare ``--rate``: 100 ms (smooth enough) unless that is under one event."""
    return max(0.1, 1.0 / rate) if rate > 0 else 0.1


class Timestamps:
    """Deadlines of timestamp groups: a fixed interval apart, or the file's gaps divided by a speedup."""

    def __init__(self, interval_s: float | None = None, speedup: float | None = None) -> None:
        if (interval_s is None) == (speedup is None):
            raise ValueError("give exactly one of --interval-ms and --speedup")
        if interval_s is not None and interval_s < 0:
            raise ValueError("--interval-ms must not be negative")
        if speedup is not None and speedup <= 0:
            raise ValueError("--speedup must be positive")
        self.interval_s = interval_s
        self.speedup = speedup
        self._first_ms: int | None = None
        self._last = 0.0
        self._count = 0

    def deadline(self, group_time_ms: int) -> float:
        """Offset at which the next group (with event time ``group_time_ms``) is due; never earlier than the last."""
        if self.interval_s is not None:
            due = self._count * self.interval_s
        else:
            if self._first_ms is None:
                self._first_ms = group_time_ms
            due = (group_time_ms - self._first_ms) / 1000.0 / self.speedup  # type: ignore[operator]
        self._count += 1
        self._last = max(self._last, due)  # a file going back in time sends at once, never waits negative
        return self._last


class Clock:
    """Monotonic run clock; sleeps until an offset without ever sleeping per message."""

    def __init__(self) -> None:
        self.start = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def rebase(self, offset: float) -> None:
        """Make ``offset`` be now: forgive a backlog that cannot be caught up without a burst."""
        self.start = time.monotonic() - offset
