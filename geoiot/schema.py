"""Schema presets: which fields are the track id, time and position, and the type of every other field.

One module for replay, agents, the Spark job and web, so a preset means the same thing everywhere.
Shipped presets live in ``geoiot/presets/*.toml``; users point ``IOT_SCHEMA`` at their own TOML or JSON
file of the same shape instead of touching code.
"""

from __future__ import annotations

import json
import math
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timezone, tzinfo
from functools import lru_cache
from pathlib import Path
from typing import Any

from geoiot.timeparse import _MAX_MS, _MS_THRESHOLD, TimeParseError, parse_time

PRESET_DIR = Path(__file__).resolve().parent / "presets"
FIELD_TYPES = ("string", "int", "float", "bool", "time")


class SchemaError(ValueError):
    """A preset file is malformed."""


class InvalidRecord(ValueError):
    """A row or event that must not enter the pipeline; ``reason`` says why in a few words."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Preset:
    name: str
    track: str
    time: str
    lon: str
    lat: str
    fields: tuple[tuple[str, str], ...]  # (name, type) in column order

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.fields)

    @property
    def core(self) -> tuple[str, str, str, str]:
        return (self.track, self.time, self.lon, self.lat)

    def type_of(self, name: str) -> str:
        return dict(self.fields)[name]


def preset_from_mapping(data: Mapping[str, Any], origin: str = "<preset>") -> Preset:
    """Validate a preset's parsed TOML/JSON and build it; errors name the file and the problem."""
    try:
        fields = tuple((str(k), str(v)) for k, v in dict(data["fields"]).items())
        preset = Preset(str(data.get("name", Path(origin).stem)), str(data["track"]), str(data["time"]),
                        str(data["lon"]), str(data["lat"]), fields)
    except KeyError as exc:
        raise SchemaError(f"{origin}: missing key {exc.args[0]!r} (need name, track, time, lon, lat, fields)") from None
    except (TypeError, ValueError):
        raise SchemaError(f"{origin}: 'fields' must be a table of field name = type") from None
    names = preset.names
    for name, kind in fields:
        if kind not in FIELD_TYPES:
            raise SchemaError(f"{origin}: field {name!r} has type {kind!r}; use one of {', '.join(FIELD_TYPES)}")
    for role, name in zip(("track", "time", "lon", "lat"), preset.core):
        if name not in names:
            raise SchemaError(f"{origin}: {role} field {name!r} is not among the fields")
    if preset.type_of(preset.time) != "time" or {preset.type_of(preset.lon), preset.type_of(preset.lat)} != {"float"}:
        raise SchemaError(f"{origin}: the time field must have type time and lon/lat type float")
    return preset


@lru_cache(maxsize=16)
def load_preset(name_or_path: str) -> Preset:
    """A shipped preset by name (``taxi``) or a user's ``.toml``/``.json`` file by path."""
    path = Path(name_or_path)
    if path.suffix not in {".toml", ".json"}:
        path = PRESET_DIR / f"{name_or_path}.toml"
        if not path.is_file():
            shipped = sorted(p.stem for p in PRESET_DIR.glob("*.toml"))
            raise SchemaError(f"unknown schema preset {name_or_path!r}; shipped: {', '.join(shipped)}; "
                              "or give the path of a .toml/.json preset file")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SchemaError(f"cannot read preset {path}: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode()) if path.suffix == ".toml" else json.loads(raw)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SchemaError(f"{path}: not valid {path.suffix[1:].upper()}: {exc}") from None
    return preset_from_mapping(data, str(path))


# --- values -------------------------------------------------------------------------------------

def _coordinate(value: Any, name: str, limit: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise InvalidRecord(f"{name} is not a number")
    try:
        number = float(value)
    except ValueError:
        raise InvalidRecord(f"{name} {value!r} is not a number") from None
    if not math.isfinite(number) or not -limit <= number <= limit:
        raise InvalidRecord(f"{name} {value!r} is outside [-{limit:g}, {limit:g}]")
    return number


_INT64 = (-(2**63), 2**63 - 1)


def _int64(value: int) -> int:
    """Integers beyond 64 bits fit neither JSON encoders (orjson) nor Elasticsearch's long."""
    if not _INT64[0] <= value <= _INT64[1]:
        raise ValueError(f"{value} does not fit in 64 bits")
    return value


def coerce(kind: str, value: Any, tz: tzinfo = timezone.utc) -> Any:
    """Convert a value to ``kind`` when that loses nothing ("3" -> 3, 3.0 -> 3); raise ValueError otherwise.

    Empty strings and None become None: the original data leaves optional columns empty.
    """
    if value is None or value == "":
        return None
    if kind == "string":
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ValueError(f"{value!r} is not a string")
    if kind == "int":
        if isinstance(value, bool):
            raise ValueError("a boolean is not an int")
        if isinstance(value, int):
            return _int64(value)
        number = float(value) if isinstance(value, str) else value
        if isinstance(number, float) and number.is_integer():
            exact = value.strip().lstrip("+-").isdigit() if isinstance(value, str) else False
            return _int64(int(value) if exact else int(number))
        raise ValueError(f"{value!r} is not an integer")
    if kind == "float":
        if isinstance(value, bool):
            raise ValueError("a boolean is not a number")
        number = float(value)
        if not math.isfinite(number):
            raise ValueError(f"{value!r} is not finite")
        return number
    if kind == "bool":
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in {"true", "1", "y", "yes", "t"}:
            return True
        if text in {"false", "0", "n", "no", "f"}:
            return False
        raise ValueError(f"{value!r} is not a boolean")
    if kind == "time":
        try:
            return parse_time(value, tz)
        except TimeParseError as exc:
            raise ValueError(str(exc)) from None
    raise ValueError(f"unknown type {kind!r}")


def core_values(preset: Preset, record: Mapping[str, Any], tz: tzinfo = timezone.utc) -> tuple[str, int, float, float]:
    """Track id, epoch-ms time, lon, lat of a record; raises InvalidRecord with the reason otherwise."""
    track = record.get(preset.track)
    if isinstance(track, bool) or not isinstance(track, (str, int)):
        raise InvalidRecord(f"{preset.track} is missing or not a string" if track is None
                            else f"{preset.track} is a {type(track).__name__}, not a string")
    track = str(track).strip()
    if not track:
        raise InvalidRecord(f"{preset.track} is empty")
    raw_time = record.get(preset.time)
    if raw_time is None or raw_time == "":
        raise InvalidRecord(f"{preset.time} is missing")
    try:
        time_ms = parse_time(raw_time, tz)
    except TimeParseError as exc:
        raise InvalidRecord(f"{preset.time}: {exc}") from None
    lon = _coordinate(record.get(preset.lon), preset.lon, 180.0)
    lat = _coordinate(record.get(preset.lat), preset.lat, 90.0)
    return track, time_ms, lon, lat


_WIRE_TYPES = {"string": str, "int": int, "float": float, "bool": bool}


@lru_cache(maxsize=64)
def _plan(preset: Preset) -> tuple[tuple[str, str, type | None, int], ...]:
    """Per field: name, kind, the Python type of its wire format, role (0 other, 1-4 track/time/lon/lat)."""
    roles = {preset.track: 1, preset.time: 2, preset.lon: 3, preset.lat: 4}
    return tuple((name, kind, _WIRE_TYPES.get(kind), roles.get(name, 0)) for name, kind in preset.fields)


def _fast_core(preset: Preset, record: Mapping[str, Any]) -> tuple[str, int, float, float] | None:
    """Core values of a record already in the wire format (exact types, in range), else None."""
    track = record.get(preset.track)
    time_ms = record.get(preset.time)
    lon = record.get(preset.lon)
    lat = record.get(preset.lat)
    if (type(track) is str and type(time_ms) is int and type(lon) is float and type(lat) is float
            and -180.0 <= lon <= 180.0 and -90.0 <= lat <= 90.0 and _MS_THRESHOLD <= time_ms <= _MAX_MS):
        track = track.strip()
        if track:
            return track, time_ms, lon, lat
    return None


def typed_record(preset: Preset, record: Mapping[str, Any], tz: tzinfo = timezone.utc) -> tuple[dict[str, Any], list[str]]:
    """The wire-format object of a record, and the names of attributes that had to become null.

    Only the four core fields decide validity (InvalidRecord); any other attribute that cannot be
    coerced without loss is stored as None and reported, never rejecting the record. Values already
    of their wire type (what ``python -m replay`` sends) are taken as they are, without :func:`coerce`.
    """
    core = _fast_core(preset, record) or core_values(preset, record, tz)
    out: dict[str, Any] = {}
    nulled: list[str] = []
    get = record.get
    for name, kind, wire, role in _plan(preset):
        if role:
            out[name] = core[role - 1]
            continue
        value = get(name)
        if value is None:
            out[name] = None
        elif type(value) is wire and (value != "" if wire is str else math.isfinite(value) if wire is float
                                      else _INT64[0] <= value <= _INT64[1] if wire is int else True):
            out[name] = value
        elif kind == "time" and type(value) is int and _MS_THRESHOLD <= value <= _MAX_MS:
            out[name] = value  # epoch ms already (what parse_time returns for it)
        else:
            try:
                out[name] = coerce(kind, value, tz)
            except (ValueError, TypeError, OverflowError):
                out[name] = None
                nulled.append(name)
    return out, nulled


def parse_row(preset: Preset, values: Sequence[str], tz: tzinfo = timezone.utc) -> tuple[dict[str, Any], list[str]]:
    """A headerless CSV row (strings in column order) as a typed wire-format object."""
    if len(values) != len(preset.fields):
        raise InvalidRecord(f"expected {len(preset.fields)} columns, found {len(values)}")
    return typed_record(preset, dict(zip(preset.names, values)), tz)
