"""Rows and JSON objects into typed wire-format objects, fast, and their Kafka messages.

The one home of what a valid position is on its way into the source topic (replay's files, the
ingest gateway's devices): :class:`FastConverter` makes the common case fast and falls back to
:func:`geoiot.schema.typed_record` for anything unusual, so rejection reasons are exactly the shared
core's; :func:`message` is the wire format (key = track id, value = the object as JSON).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import timezone, tzinfo
from typing import Any

import orjson

from geoiot.schema import InvalidRecord, Preset, typed_record
from geoiot.timeparse import EventTimeBounds, TimeParseError, parse_time

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


class FastConverter:
    """Typed wire-format objects from rows in preset field order, identical to ``typed_record``.

    For CSV rows (all strings) a converter specialised to the preset is compiled once: one dict
    display with inline conversions instead of a call per field, which triples the throughput of
    the max-rate replay. Anything it does not handle (or any doubt) goes to the shared core.
    """

    _TIME_CACHE_LIMIT = 200_000

    def __init__(self, preset: Preset, tz: tzinfo = timezone.utc, bounds: EventTimeBounds | None = None) -> None:
        self.preset = preset
        self.tz = tz
        self.bounds = bounds
        self.names = preset.names
        self._times: dict[str, int] = {}
        self._strings = self._compile()
        self._int_fields = tuple(name for name, kind in preset.fields if kind in ("int", "time"))

    def _time(self, text: str) -> int:
        ms = self._times.get(text)
        if ms is None:
            ms = parse_time(text, self.tz)  # raises TimeParseError
            if not INT64_MIN <= ms <= INT64_MAX:
                raise TimeParseError(f"time {text!r} is out of range")
            if self.bounds is not None and self.bounds.problem(ms) is not None:
                raise TimeParseError(text)  # the slow path rejects the row with the reason
            if len(self._times) >= self._TIME_CACHE_LIMIT:
                self._times.clear()
            self._times[text] = ms
        return ms

    def _compile(self) -> Callable[[Sequence[str]], dict[str, Any]]:
        p = self.preset
        idx = {name: i for i, name in enumerate(self.names)}
        items = []
        for i, (name, kind) in enumerate(p.fields):
            x = f"c{i}"  # the row is unpacked into locals once: cheaper than indexing per use
            if name == p.track:
                expr = "track"
            elif name == p.time:
                expr = "time_ms"
            elif name == p.lon:
                expr = "lon"
            elif name == p.lat:
                expr = "lat"
            elif kind == "string":
                expr = f"({x} or None)"
            elif kind == "int":  # 19+ characters may not fit in 64 bits: the slow path decides
                expr = f"((int({x}) if len({x}) < 19 else _bad()) if {x} else None)"
            elif kind == "float":  # 'nan', 'inf', 'infinity' all contain an n: leave them to the shared core
                expr = f"((float({x}) if 'n' not in {x} and 'N' not in {x} else _bad()) if {x} else None)"
            elif kind == "time":
                expr = f"((_times.get({x}) or _time({x})) if {x} else None)"
            else:
                expr = "_bad()"
            items.append(f"{name!r}: {expr}")
        source = (
            "def convert(v):\n"
            f"    ({''.join(f'c{i}, ' for i in range(len(p.fields)))}) = v\n"
            f"    track = c{idx[p.track]}.strip()\n"
            f"    t = c{idx[p.time]}\n"
            "    time_ms = _times.get(t)\n"
            "    if time_ms is None:\n"
            "        time_ms = _time(t)\n"
            f"    lon = float(c{idx[p.lon]})\n"
            f"    lat = float(c{idx[p.lat]})\n"
            "    if not track or not (-180.0 <= lon <= 180.0) or not (-90.0 <= lat <= 90.0):\n"
            "        _bad()\n"
            "    return {" + ", ".join(items) + "}\n"
        )
        namespace: dict[str, Any] = {"_times": self._times, "_time": self._time, "_bad": _bad}
        exec(compile(source, f"<converter {p.name}>", "exec"), namespace)  # noqa: S102 - names are repr()'d
        return namespace["convert"]

    def convert_strings(self, values: Sequence[str]) -> dict[str, Any]:
        """A CSV row (strings in preset order) as a wire object; raises InvalidRecord like the shared core."""
        try:
            return self._strings(values)
        except (ValueError, TypeError, TimeParseError, OverflowError, IndexError):
            return self._fit(typed_record(self.preset, dict(zip(self.names, values)), self.tz)[0])

    def convert(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """A parsed JSON object as a wire object (values may be numbers, strings or null)."""
        values = [record.get(n) for n in self.names]
        if all(type(v) is str for v in values):
            return self.convert_strings(values)
        return self._fit(typed_record(self.preset, record, self.tz)[0])

    def _fit(self, out: dict[str, Any]) -> dict[str, Any]:
        """Integers beyond 64 bits fit neither JSON consumers nor Elasticsearch longs: an attribute
        becomes null (the shared core's rule for values it cannot keep), an event time rejects the row."""
        for name in self._int_fields:
            value = out[name]
            if value is not None and not INT64_MIN <= value <= INT64_MAX:
                if name == self.preset.time:
                    raise InvalidRecord(f"{name} {value} is out of range")
                out[name] = None
        problem = None if self.bounds is None else self.bounds.problem(out[self.preset.time])
        if problem is not None:
            raise InvalidRecord(problem)
        return out


def _bad() -> Any:
    raise ValueError


def message(preset: Preset, record: Mapping[str, Any]) -> tuple[bytes, bytes]:
    """The Kafka key and value of a wire-format object: keyed by track id, the object as JSON."""
    return record[preset.track].encode(), orjson.dumps(record)
