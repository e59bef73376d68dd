"""Decode and validate one raw Kafka value; invalid ones become dead letters with a reason.

Pure (no Faust, no I/O) so the Faust agents and the PySpark job share the same rules: only the four
core fields (track id, time, lon, lat) decide validity, other attributes are coerced or nulled by
:func:`geoiot.schema.typed_record`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timezone, tzinfo
from typing import Any

import msgspec
import orjson

from agents.core import codec
from geoiot.schema import InvalidRecord, Preset, typed_record


@dataclass(frozen=True, slots=True)
class Observation:
    """A valid event: the typed record plus its core values, and the attributes that became null."""

    record: dict[str, Any]
    track: str
    time_ms: int
    lon: float
    lat: float
    nulled: tuple[str, ...]


def decode(preset: Preset, raw: bytes | bytearray | memoryview | str | None, tz: tzinfo = timezone.utc) -> Observation:
    """The observation in ``raw`` (the JSON object ``python -m replay`` produces).

    Raises :class:`geoiot.schema.InvalidRecord` whose ``reason`` goes to the dead-letter topic.
    """
    if raw is None or len(raw) == 0:
        raise InvalidRecord("empty value")
    if isinstance(raw, memoryview):
        raw = raw.tobytes()
    unusable: list[str] = []
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        obj = _loads_unusual(raw, exc)
        if isinstance(obj, dict):
            unusable = _null_unusable(preset, obj)
    if not isinstance(obj, dict):
        raise InvalidRecord(f"not a JSON object but a {_json_kind(obj)}")
    record, nulled = typed_record(preset, obj, tz)
    return Observation(record, record[preset.track], record[preset.time], record[preset.lon], record[preset.lat],
                       tuple(unusable + nulled))


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _loads_unusual(raw: bytes | bytearray | str, error: Exception) -> Any:
    """Valid JSON that orjson refuses for a value it cannot hold: a number beyond a double (``1e400``) or a
    lone surrogate escape (``"\\ud800"``). The standard library reads those (as inf, and as a str that is not
    UTF-8); anything else it refuses too is not JSON, with orjson's reason (NaN and Infinity are not JSON)."""
    try:
        return json.loads(raw, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        raise InvalidRecord(f"not JSON: {error}") from None


def _null_unusable(preset: Preset, obj: dict[str, Any]) -> list[str]:
    """Null the preset's non-core attributes holding what no document can store (a non-finite number, a string
    that is not UTF-8) and return their names; a track id that is not UTF-8 is invalid (the core decides)."""
    core = {preset.track, preset.time, preset.lon, preset.lat}
    nulled: list[str] = []
    for name, _ in preset.fields:
        value = obj.get(name)
        if isinstance(value, str):
            try:
                value.encode("utf-8")
                continue
            except UnicodeEncodeError:
                if name == preset.track:
                    raise InvalidRecord(f"{name} is not valid Unicode (a lone surrogate)") from None
        elif not (isinstance(value, float) and not math.isfinite(value)):
            continue
        if name not in core:  # a non-finite core time, lon or lat is refused by the core rules with its reason
            obj[name] = None
            nulled.append(name)
    return nulled


@dataclass(slots=True)
class DecodedBatch:
    """The valid events of a batch as columns (parallel lists, in message order) and the others' reasons.

    ``records[k]`` is the typed record of message ``positions[k]``: a fresh dict, or an instance of
    :func:`geoiot.codec.document_type` (the caller completes either into its document); ``reasons`` maps the position of every invalid message to its dead-letter reason.
    """

    positions: list[int]
    records: list[dict[str, Any]]
    tracks: list[str]
    times: list[int]
    lons: list[float]
    lats: list[float]
    reasons: dict[int, str]
    nulled: dict[int, int]  # position -> attributes nulled, for the messages that had some


def decode_batch(preset: Preset, values: Sequence[bytes | bytearray | memoryview | str | None],
                 tz: tzinfo = timezone.utc) -> DecodedBatch:
    """:func:`decode` over a batch: the same records (as values), and the same reasons for the invalid values.

    Each value is first decoded by a compiled msgspec decoder into the preset's document struct
    (:func:`geoiot.codec.document_type`), whose field types accept exactly the values
    :func:`geoiot.schema.typed_record` takes as they are (the wire format ``python -m replay`` sends: every
    field of its type or null, core fields present, strings not empty, ints in 64 bits, times in epoch ms).
    Anything it refuses, and a track id with surrounding blanks, goes through :func:`decode` itself, so
    reasons, coercions and nulls are the row-wise ones. Records are structs (fast path) or dicts.
    """
    kind = codec.document_type(preset)
    positions: list[int] = []
    records: list[Any] = []
    slow: list[int] = []
    reasons: dict[int, str] = {}
    nulled: dict[int, int] = {}
    if kind is not None:
        decoder = codec.document_decoder(preset)
        fast = decoder.decode
        errors = (msgspec.ValidationError, msgspec.DecodeError)
        for i, raw in enumerate(values):
            if type(raw) is bytes:
                try:
                    records.append(fast(raw))
                    positions.append(i)
                    continue
                except errors:
                    pass
            slow.append(i)
        tracks = [r.c_track for r in records]
        times = [r.c_time for r in records]
        lons = [r.c_lon for r in records]
        lats = [r.c_lat for r in records]
        blank = [k for k, t in enumerate(tracks) if t.strip() != t]
        if blank:  # typed_record strips the track id (and refuses a blank one): the exact path decides
            for k in reversed(blank):
                slow.append(positions[k])
                for column in (positions, records, tracks, times, lons, lats):
                    del column[k]
    else:
        slow = list(range(len(values)))
        tracks, times, lons, lats = [], [], [], []
    if slow:
        exact: list[tuple[int, Observation]] = []
        for i in slow:
            try:
                obs = decode(preset, values[i], tz)
            except InvalidRecord as exc:
                reasons[i] = exc.reason
                continue
            except Exception as exc:  # a bug or an input nobody foresaw: this event only
                reasons[i] = f"cannot decode the event: {type(exc).__name__}: {exc}"
                continue
            exact.append((i, obs))
            if obs.nulled:
                nulled[i] = len(obs.nulled)
        if exact:
            merged = sorted([(p, (r, t, ms, x, y)) for p, r, t, ms, x, y in zip(positions, records, tracks, times,
                                                                                   lons, lats)]
                            + [(i, (o.record, o.track, o.time_ms, o.lon, o.lat)) for i, o in exact],
                            key=lambda item: item[0])
            positions = [p for p, _ in merged]
            records = [r[0] for _, r in merged]
            tracks = [r[1] for _, r in merged]
            times = [r[2] for _, r in merged]
            lons = [r[3] for _, r in merged]
            lats = [r[4] for _, r in merged]
    return DecodedBatch(positions, records, tracks, times, lons, lats, reasons, nulled)


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "JSON array"
    if isinstance(value, str):
        return "JSON string"
    if isinstance(value, bool):
        return "JSON boolean"
    if value is None:
        return "JSON null"
    return "JSON number"
