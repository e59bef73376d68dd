"""Turn the time notations found in position files into epoch milliseconds (UTC), and say which
event times are valid (:class:`EventTimeBounds`)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone, tzinfo
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

# Epoch values at or above this are milliseconds (1e11 s is the year 5138; 1e11 ms is 1973).
_MS_THRESHOLD = 100_000_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_ONE_MS = timedelta(milliseconds=1)
_MIN_MS = (datetime(1, 1, 1, tzinfo=timezone.utc) - _EPOCH) // _ONE_MS
_MAX_MS = (datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=timezone.utc) - _EPOCH) // _ONE_MS


class TimeParseError(ValueError):
    """The value is not a time in any accepted notation."""


@lru_cache(maxsize=64)
def zone(name: str) -> tzinfo:
    if name.upper() in {"UTC", "Z"}:
        return timezone.utc
    try:
        return ZoneInfo(name)
    except Exception:
        raise ValueError(f"unknown time zone {name!r} (use an IANA name such as UTC or America/New_York)") from None


def epoch_to_ms(value: float) -> int:
    """Epoch seconds or milliseconds (told apart by magnitude) to integer milliseconds."""
    if not math.isfinite(value):
        raise TimeParseError(f"time {value!r} is not finite")
    ms = int(round(value)) if abs(value) >= _MS_THRESHOLD else int(round(value * 1000))
    if not _MIN_MS <= ms <= _MAX_MS:
        raise TimeParseError(f"time {value!r} is outside the years 1-9999")
    return ms


def parse_time(value: str | int | float, tz: tzinfo = timezone.utc) -> int:
    """Epoch ms from ISO 8601, 'YYYY-MM-DD HH:MM:SS', epoch seconds or epoch ms.

    Times without an offset are read in ``tz``. Booleans are refused: they are ints to Python only.
    """
    if isinstance(value, bool):
        raise TimeParseError(f"time {value!r} is a boolean")
    if isinstance(value, (int, float)):
        return epoch_to_ms(value)
    if not isinstance(value, str):
        raise TimeParseError(f"time {value!r} is a {type(value).__name__}, not a string or number")
    text = value.strip()
    if not text:
        raise TimeParseError("time is empty")
    if text[0] in "+-" or text[0].isdigit():
        try:
            return epoch_to_ms(float(text)) if _looks_numeric(text) else _parse_iso(text, tz)
        except TimeParseError:
            raise
        except (ValueError, OverflowError) as exc:
            raise TimeParseError(f"time {value!r} is not ISO 8601 or epoch: {exc}") from None
    raise TimeParseError(f"time {value!r} is not ISO 8601 or epoch")


def _looks_numeric(text: str) -> bool:
    body = text[1:] if text[0] in "+-" else text
    return body.replace(".", "", 1).isdigit() and "-" not in body[1:]


def _parse_iso(text: str, tz: tzinfo) -> int:
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=tz)
    ms = (parsed - _EPOCH) // _ONE_MS
    if not _MIN_MS <= ms <= _MAX_MS:  # e.g. 0001-01-01T00:00+01:00 is in the year 0 UTC
        raise TimeParseError(f"time {text!r} is outside the years 1-9999 UTC")
    return ms


DAY_MS = 86_400_000
# Every reason of EventTimeBounds.problem starts with it (replay counts those rows under the kind "bounds").
BOUNDS_REASON_PREFIX = "event time "


def retention_cutoff(retention_days: int, now_ms: int) -> int:
    """The start (epoch ms, UTC) of the oldest day that ``IOT_RETENTION_DAYS`` keeps now.

    The one boundary of retention: a daily index whose day starts before it is deleted
    (:func:`agents.store.retention.expired`), a latest position older than it goes, and an event older than it is
    refused (:class:`EventTimeBounds`), so an event is refused exactly when retention would delete its day.
    """
    return (now_ms - retention_days * DAY_MS) // DAY_MS * DAY_MS


@dataclass(frozen=True)
class EventTimeBounds:
    """What a valid event time is, relative to now: the one rule replay and the agents apply.

    An event older than ``max_age_days`` or more than ``max_ahead_days`` in the future is refused
    (replay skips it, the agents dead-letter it), so no input can create a daily index for the year 1
    or 9999. With a retention period, an event in a day retention deletes now is refused too
    (:func:`retention_cutoff`: the same boundary as retention's, whole days).
    """

    max_age_days: float = 36525.0
    max_ahead_days: float = 1.0
    retention_days: int = 0

    @classmethod
    def from_settings(cls, settings: Any) -> "EventTimeBounds":
        return cls(settings.iot_max_event_age_days, settings.iot_max_event_ahead_days,
                   max(0, int(settings.iot_retention_days)))

    def window(self, now_ms: int) -> tuple[float, float]:
        """The oldest and newest valid event times now (epoch ms, inclusive)."""
        oldest = now_ms - self.max_age_days * DAY_MS
        if self.retention_days > 0:
            oldest = max(oldest, retention_cutoff(self.retention_days, now_ms))
        return oldest, now_ms + self.max_ahead_days * DAY_MS

    def problem(self, time_ms: int, now_ms: int | None = None) -> str | None:
        """Why ``time_ms`` is not a valid event time now, or None when it is."""
        now = int(time.time() * 1000) if now_ms is None else now_ms
        if self.retention_days > 0 and time_ms < retention_cutoff(self.retention_days, now):
            return (f"{BOUNDS_REASON_PREFIX}{format_ms(time_ms)} is in a day IOT_RETENTION_DAYS={self.retention_days} deletes "
                    f"(before {format_ms(retention_cutoff(self.retention_days, now))})")
        if time_ms < now - self.max_age_days * DAY_MS:
            return (f"{BOUNDS_REASON_PREFIX}{format_ms(time_ms)} is more than {self.max_age_days:g} days old "
                    "(IOT_MAX_EVENT_AGE_DAYS)")
        if time_ms > now + self.max_ahead_days * DAY_MS:
            return (f"{BOUNDS_REASON_PREFIX}{format_ms(time_ms)} is more than {self.max_ahead_days:g} days ahead "
                    "(IOT_MAX_EVENT_AHEAD_DAYS)")
        return None


def format_ms(ms: int) -> str:
    """ISO 8601 UTC text of epoch ms, for reasons and logs meant for people (epoch ms when out of range)."""
    try:
        return (_EPOCH + ms * _ONE_MS).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    except OverflowError:
        return f"{ms} ms"
