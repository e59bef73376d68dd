"""Device messages into wire-format objects: the gateway's pure core (no I/O library).

A body is one JSON object, a JSON array of objects or NDJSON (one object per line), optionally gzip
or deflate encoded; decompression stops past a size limit, so a small bomb never becomes a large
buffer. Each row becomes a wire-format object through :class:`geoiot.convert.FastConverter` (the
same validation and event-time bounds as ``python -m replay``) or a :class:`Reject` with its reason
and a kind from a small fixed set (the metrics' label).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from geoiot.convert import FastConverter
from geoiot.schema import InvalidRecord, Preset

REJECT_KINDS = ("json", "not_object", "invalid", "event_time", "track_prefix", "track_mismatch", "retained",
                "no_track", "size")


class TooLarge(ValueError):
    """The body, once decompressed, is above the limit."""


class BadEncoding(ValueError):
    """The body is not valid data of its Content-Encoding."""


@dataclass(frozen=True)
class Reject:
    """A row the gateway did not accept: its position in the body (0-based), why, and the reason's kind."""

    row: int
    reason: str
    kind: str

    def as_json(self) -> dict[str, Any]:
        return {"row": self.row, "reason": self.reason}


def decompress(body: bytes, encoding: str, limit: int) -> bytes:
    """``body`` decoded from its Content-Encoding (identity, gzip or deflate), at most ``limit`` bytes."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        if len(body) > limit:
            raise TooLarge(f"the body is over {limit} bytes")
        return body
    if encoding in ("gzip", "x-gzip"):
        wbits = 16 + zlib.MAX_WBITS
    elif encoding == "deflate":
        wbits = zlib.MAX_WBITS
    else:
        raise BadEncoding(f"Content-Encoding {encoding!r} is not supported (use gzip, deflate or none)")
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise BadEncoding(f"the body is not valid {encoding} data: {exc}") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise TooLarge(f"the body is over {limit} bytes once decompressed")
    if not inflater.eof:
        raise BadEncoding(f"the {encoding} body is truncated")
    return out


def split_body(body: bytes) -> Iterator[tuple[int, Any]]:
    """(row, parsed JSON value or Reject) for a JSON object, a JSON array or NDJSON; blank lines skipped."""
    text = body.lstrip()
    if text[:1] in (b"[", b"{"):  # one JSON document (an object, an array, pretty-printed or not) ...
        try:
            value = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            if text[:1] == b"[":
                yield 0, Reject(0, f"not valid JSON: {exc}", "json")
                return
        else:
            if isinstance(value, list):
                yield from enumerate(value)
            else:
                yield 0, value
            return
    lines = text.split(b"\n")  # ... or NDJSON (its first line ends the document early)
    row = 0
    for line in lines:
        if not line.strip():
            continue
        try:
            yield row, orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            yield row, Reject(row, f"not valid JSON: {exc}", "json")
        row += 1


def _kind(reason: str) -> str:
    return "event_time" if reason.startswith("event time") else "invalid"


def convert(converter: FastConverter, row: int, value: Any) -> dict[str, Any] | Reject:
    """One parsed row as a wire-format object, or why not."""
    if isinstance(value, Reject):
        return value
    if not isinstance(value, dict):
        return Reject(row, f"a JSON {type(value).__name__}, not an object", "not_object")
    try:
        return converter.convert(value)
    except InvalidRecord as exc:
        return Reject(row, exc.reason, _kind(exc.reason))
    except RecursionError:
        return Reject(row, "nested too deeply", "invalid")


def outside_prefix(preset: Preset, record: Mapping[str, Any], prefix: str) -> str | None:
    """Why a token limited to ``prefix`` may not write this record's track, or None when it may."""
    track = record[preset.track]
    if track.startswith(prefix):
        return None
    return f"track id {track!r} is outside this token's prefix {prefix!r}"


def topic_track(filter_: str, topic: str) -> str | None:
    """The topic level matched by the filter's first ``+`` (None when the filter has none or it does not match)."""
    levels = filter_.split("/")
    if "+" not in levels:
        return None
    index = levels.index("+")
    parts = topic.split("/")
    if index >= len(parts):
        return None
    return parts[index] or None


def mqtt_record(preset: Preset, converter: FastConverter, filter_: str, topic: str, payload: bytes,
                retained: bool) -> dict[str, Any] | Reject:
    """One MQTT message as a wire-format object: a JSON object in the preset's names, the track id from
    the topic level of the filter's ``+`` or else from the payload; retained messages are stale, refused."""
    if retained:
        return Reject(0, "a retained message (a stale position, not a live report)", "retained")
    try:
        value = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        return Reject(0, f"not valid JSON: {exc}", "json")
    if not isinstance(value, dict):
        return Reject(0, f"a JSON {type(value).__name__}, not an object", "not_object")
    track = topic_track(filter_, topic)
    if track is not None:
        given = value.get(preset.track)
        if given is None or given == "":
            value[preset.track] = track
        elif str(given).strip() != track:
            return Reject(0, f"{preset.track} {given!r} differs from the topic's track id {track!r}",
                          "track_mismatch")
    elif "+" in filter_.split("/"):
        return Reject(0, f"topic {topic!r} has no track id level", "no_track")
    return convert(converter, 0, value)
