"""The track-state changelog's record format: key and value of one track's state (:class:`agents.core.motion.State`).

* key: the track id as a JSON string (``orjson.dumps(track)``), as a Faust table writes it (unchanged);
* value, version 1 (what the worker writes): little-endian ``version`` (1 byte, ``1``), ``t`` (int64, epoch
  ms), ``lon``, ``lat`` (float64: the exact values, so motion after a recovery is the motion without one),
  the number of fences (uint16), then each fence id as its UTF-8 length (uint16) and bytes. 27 bytes for a
  track outside every fence;
* value of the JSON format written before (its first byte is ``{``): ``{"t", "lon", "lat", "fences",
  "hist"}``; it is still read (the history is dropped), so a worker upgraded on a running changelog recovers
  it, writes the new format from then on, and compaction removes the old records as tracks are updated;
* tombstone: no value.

The Spark job keeps states as JSON in its state store: :func:`to_mapping` / :func:`from_mapping` are that form
(the JSON format above without the history; a state written with one is read too).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any

import orjson

from agents.core.motion import NO_FENCES, State, fence_set

VERSION = 1
_HEAD = struct.Struct("<BqddH")
_LENGTH = struct.Struct("<H")
_JSON_START = ord("{")
MAX_FENCES = 0xFFFF  # fence count and id length are uint16


def key(track: str) -> bytes:
    """The changelog key of a track."""
    return orjson.dumps(track)


def track_of(record_key: bytes) -> str:
    """The track id of a changelog key (``ValueError`` when it is not a JSON string)."""
    track = orjson.loads(record_key)
    if type(track) is not str:
        raise ValueError("a changelog key is a JSON string")
    return track


def value(state: State) -> bytes:
    """The changelog value of a state (version 1)."""
    fences = state[3]
    if not fences:
        return _HEAD.pack(VERSION, state[0], state[1], state[2], 0)
    if len(fences) > MAX_FENCES:
        raise ValueError(f"a state holds at most {MAX_FENCES} fences")
    parts = [_HEAD.pack(VERSION, state[0], state[1], state[2], len(fences))]
    for fence in fences:
        raw = fence.encode()
        if len(raw) > MAX_FENCES:
            raise ValueError(f"a fence id is at most {MAX_FENCES} bytes")
        parts.append(_LENGTH.pack(len(raw)))
        parts.append(raw)
    return b"".join(parts)


def state(record_value: bytes) -> State:
    """The state of a changelog value, in either format (``ValueError`` when it is neither)."""
    if not record_value:
        raise ValueError("an empty changelog value")
    version = record_value[0]
    if version == VERSION:
        try:
            _, t, lon, lat, n = _HEAD.unpack_from(record_value)
            if not n:
                fences = NO_FENCES
            else:
                ids, at = [], _HEAD.size
                for _ in range(n):
                    (size,) = _LENGTH.unpack_from(record_value, at)
                    at += 2
                    if at + size > len(record_value):
                        raise ValueError("a fence id runs past the end of the value")
                    ids.append(record_value[at:at + size].decode())
                    at += size
                fences = fence_set(ids)
        except struct.error as exc:
            raise ValueError(f"a version {VERSION} changelog value too short: {exc}") from None
        return State(t, lon, lat, fences)
    if version == _JSON_START:
        return from_mapping(orjson.loads(record_value))
    raise ValueError(f"unknown changelog value version {version}")


def to_mapping(state: State) -> dict[str, Any]:
    """The JSON form of a state (the Spark job's state store)."""
    return {"t": state[0], "lon": state[1], "lat": state[2], "fences": list(state[3])}


def from_mapping(mapping: Mapping[str, Any]) -> State:
    """The state of its JSON form, also one written with a history (dropped); ``ValueError`` when it is not one."""
    try:
        t, lon, lat, fences = mapping["t"], mapping["lon"], mapping["lat"], mapping["fences"]
    except (KeyError, TypeError):
        raise ValueError('a JSON state is an object with "t", "lon", "lat" and "fences"') from None
    if type(t) is not int or not isinstance(lon, (int, float)) or not isinstance(lat, (int, float)) \
            or not isinstance(fences, list) or not all(type(f) is str for f in fences):
        raise ValueError('a JSON state has an integer "t", numbers "lon" and "lat", a list of ids "fences"')
    return State(t, float(lon), float(lat), fence_set(fences))
