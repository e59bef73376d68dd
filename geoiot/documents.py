"""The Elasticsearch document of an observation: field names, ``_id``, daily index names and mapping.

One home for this contract, read by both runtimes, the web API, retention, tests and benchmarks. ``_id`` is
``"<track>:<time_ms>"`` in the daily index of the event time, so a redelivered event overwrites its own
document. ``<base>_latest`` (:func:`latest_index`) holds one document per track, ``_id`` the track, written
with external versioning on the event time, and lies outside ``<base>-*`` so nothing counts a report twice.
The codec that fills these documents is :mod:`agents.core.codec`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime, timezone
from functools import lru_cache
from types import MappingProxyType
from typing import Any

from geoiot.schema import InvalidRecord, Preset

# Fields the agents add to every observation, beside the preset's own.
GEOMETRY = "geometry"
GEOFENCES = "geofences"
GEOHASH = "geohash"
SPEED = "speed_mps"
HEADING = "heading_deg"
DISTANCE = "distance_m"
INGESTED_AT = "ingested_at"
MOTION_FIELDS = (SPEED, HEADING, DISTANCE)  # need the track's previous report
GEOHASH_PRECISION = 12

DERIVED_MAPPING: dict[str, dict[str, Any]] = {
    GEOMETRY: {"type": "geo_point"},
    GEOFENCES: {"type": "keyword"},
    GEOHASH: {"type": "keyword"},
    SPEED: {"type": "double"},
    HEADING: {"type": "double"},
    DISTANCE: {"type": "double"},
    INGESTED_AT: {"type": "date", "format": "epoch_millis"},
}

# The preset type (geoiot.schema.FIELD_TYPES) each derived field is read as, e.g. by the API's filters;
# geometry is a geo_point and filtered by bbox instead.
DERIVED_TYPES: dict[str, str] = {GEOFENCES: "string", GEOHASH: "string", SPEED: "float", HEADING: "float",
                                 DISTANCE: "float", INGESTED_AT: "time"}


@lru_cache(maxsize=16)
def field_types(preset: Preset) -> Mapping[str, str]:
    """Every attribute of an observation document that holds a scalar (or a list of them) -> its preset type
    (read-only: cached per preset, it is asked on every filtered request)."""
    return MappingProxyType({**dict(preset.fields), **DERIVED_TYPES})


_ES_TYPES = {
    "string": {"type": "keyword", "ignore_above": 256},
    "int": {"type": "long"},
    "float": {"type": "double"},
    "bool": {"type": "boolean"},
    "time": {"type": "date", "format": "epoch_millis||strict_date_optional_time"},
}

# Elasticsearch refuses an _id longer than this many UTF-8 bytes, and with it the whole bulk request.
MAX_ID_BYTES = 512
DAY_MS = 86_400_000


def mapping_for(preset: Preset) -> dict[str, Any]:
    """Explicit mapping: dynamic fields are refused so a typo cannot silently create a field."""
    properties = {name: dict(_ES_TYPES[kind]) for name, kind in preset.fields}
    properties.update(DERIVED_MAPPING)
    return {"dynamic": "false", "properties": properties}


def doc_id(track: str, time_ms: int) -> str:
    """The deterministic ``_id``; InvalidRecord when Elasticsearch would refuse it (too long)."""
    value = f"{track}:{time_ms}"
    if len(value) > MAX_ID_BYTES // 4 and len(value.encode("utf-8")) > MAX_ID_BYTES:
        raise InvalidRecord(f"document id of {len(value.encode('utf-8'))} bytes exceeds Elasticsearch's "
                            f"{MAX_ID_BYTES} (the track id is too long)")
    return value


def id_parts(doc_id_: str) -> tuple[str, int]:
    """The track id and event time (epoch ms) of an ``_id`` made by :func:`doc_id`."""
    track, _, ms = doc_id_.rpartition(":")
    return track, int(ms)


def index_pattern(base: str) -> str:
    """The daily indices of ``base`` (what the template and retention match)."""
    return f"{base}-*"


LATEST_SUFFIX = "_latest"  # "_", not "-": outside index_pattern(base)


def latest_index(base: str) -> str:
    """The index of each track's newest observation, beside the daily indices of ``base``."""
    return f"{base}{LATEST_SUFFIX}"


@lru_cache(maxsize=4096)
def _daily(base: str, day: int) -> str:
    date = datetime.fromtimestamp(day * 86_400, tz=timezone.utc)
    return f"{base}-{date:%Y.%m.%d}"


def index_for(base: str, time_ms: int) -> str:
    """The daily index an event of ``time_ms`` belongs to; InvalidRecord outside the years 1-9999."""
    # UTC days are exactly DAY_MS long in epoch time, so the index is a function of the day number.
    try:
        return _daily(base, time_ms // DAY_MS)
    except (ValueError, OverflowError, OSError):
        raise InvalidRecord(f"event time {time_ms} ms has no daily index (outside the years 1-9999)") from None


_DAY_SUFFIX = re.compile(r"-(\d{1,4})\.(\d{2})\.(\d{2})$")


def index_day_ms(base: str, name: str) -> int | None:
    """Start (epoch ms, UTC) of the day a daily index of ``base`` holds; None for any other name."""
    if not name.startswith(base + "-"):
        return None
    match = _DAY_SUFFIX.fullmatch(name, len(base))
    if match is None:
        return None
    try:
        day = datetime(int(match[1]), int(match[2]), int(match[3]), tzinfo=timezone.utc)
    except ValueError:
        return None
    return int(day.timestamp()) * 1000


def keeps_latest(time_ms: int) -> bool:
    """Whether a report can be a latest position: external versions are non-negative (no event before 1970)."""
    return time_ms >= 0
