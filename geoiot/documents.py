"""The Elasticsearch document of an observation: field names, ``_id``, daily index name and mapping.

The one home of this contract: the Faust agents and the Spark job build documents with it, the web
queries read its field names, retention parses its index names, and the tests and benchmarks index
documents built by it, so a change to the document shape shows everywhere at once.

``_id`` is ``"<track>:<time_ms>"`` and the index is the daily index of the event time (UTC), so a
redelivered event overwrites its own document instead of adding one: at-least-once delivery plus
idempotent writes gives effectively-once documents.

Beside the daily indices, ``<base>_latest`` (:func:`latest_index`) holds one document per track: its
newest indexed observation, ``_id`` the track id, written with external versioning on the event time
(:func:`latest_action`), so Elasticsearch itself refuses (409) an older or re-delivered report. The
latest index has no alias and is outside ``<base>-*`` (so neither the alias, nor retention, nor a Kibana
data view ``<base>-*`` ever counts a report twice).
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from functools import lru_cache
from types import MappingProxyType
from typing import Annotated, Any

import geohash
import msgspec

from geoiot.geohash_batch import encode_many
from geoiot.schema import _INT64, InvalidRecord, Preset
from geoiot.timeparse import _MAX_MS, _MS_THRESHOLD

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


def build(record: dict[str, Any], lon: float, lat: float, fences: Sequence[str], distance_m: float | None,
          speed_mps: float | None, heading_deg: float | None, ingested_at: int | None = None) -> dict[str, Any]:
    """The preset's fields plus geometry, geofences, motion, geohash and ingestion time."""
    return build_into(dict(record), lon, lat, fences, distance_m, speed_mps, heading_deg, ingested_at)


def build_into(doc: dict[str, Any], lon: float, lat: float, fences: Sequence[str], distance_m: float | None,
               speed_mps: float | None, heading_deg: float | None, ingested_at: int | None = None,
               cell: str | None = None) -> dict[str, Any]:
    """:func:`build` in place: the batch core turns each freshly decoded record into its document without a copy
    (``cell``: the point's geohash when the caller computed it, :func:`geohashes`)."""
    doc[GEOMETRY] = {"lat": lat, "lon": lon}
    doc[GEOFENCES] = list(fences)
    doc[SPEED] = speed_mps
    doc[HEADING] = heading_deg
    doc[DISTANCE] = distance_m
    doc[GEOHASH] = geohash.encode(lat, lon, precision=GEOHASH_PRECISION) if cell is None else cell
    doc[INGESTED_AT] = int(time.time() * 1000) if ingested_at is None else ingested_at
    return doc


def geohashes(lats: Sequence[float], lons: Sequence[float]) -> list[str]:
    """The ``geohash`` field of many points (each equal to the one :func:`build` writes), by columns."""
    return encode_many(lats, lons, GEOHASH_PRECISION)


def action(base: str, track: str, time_ms: int, doc: dict[str, Any]) -> dict[str, Any]:
    """A bulk ``index`` action: overwrites the document of the same event if it exists."""
    return {"_op_type": "index", "_index": index_for(base, time_ms), "_id": doc_id(track, time_ms), "_source": doc}


def keeps_latest(time_ms: int) -> bool:
    """Whether a report can be a latest position: external versions are non-negative (no event before 1970)."""
    return time_ms >= 0


def latest_action(base: str, track: str, time_ms: int, doc: dict[str, Any]) -> dict[str, Any]:
    """A bulk ``index`` action of the track's latest document, versioned by the event time: Elasticsearch
    refuses it with 409 when the stored document is as new or newer (a stale report, not an error)."""
    return {"_op_type": "index", "_index": latest_index(base), "_id": track, "version": time_ms,
            "version_type": "external", "_source": doc}


# --- the document as a compiled struct (the batch core's fast path) -------------------------------

_DERIVED_ORDER = (GEOMETRY, GEOFENCES, SPEED, HEADING, DISTANCE, GEOHASH, INGESTED_AT)  # as build() sets them
_NONEMPTY = Annotated[str, msgspec.Meta(min_length=1)]
_EPOCH_MS = Annotated[int, msgspec.Meta(ge=_MS_THRESHOLD, le=_MAX_MS)]
# Per preset type: what geoiot.schema.typed_record takes as it is (anything else it coerces, nulls or refuses).
_STRUCT_TYPES: dict[str, Any] = {
    "string": _NONEMPTY,
    "int": Annotated[int, msgspec.Meta(ge=_INT64[0], le=_INT64[1])],
    "float": float,  # a JSON int too: typed_record makes it the same float
    "bool": bool,
    "time": _EPOCH_MS,
}
_CORE_TYPES = {"track": _NONEMPTY, "time": _EPOCH_MS,
               "lon": Annotated[float, msgspec.Meta(ge=-180.0, le=180.0)],
               "lat": Annotated[float, msgspec.Meta(ge=-90.0, le=90.0)]}


@lru_cache(maxsize=16)
def document_type(preset: Preset) -> type | None:
    """A msgspec struct of the observation document: the preset's fields in order, then the derived ones.

    Decoding a value into it accepts exactly the records already in the wire format (core fields present
    and valid, other fields of their type or null, missing ones null, unknown keys dropped), as
    :func:`geoiot.schema.typed_record` would keep them; encoding it gives the document :func:`build` gives
    (the same JSON values). The core fields are the attributes ``c_track``, ``c_time``, ``c_lon``,
    ``c_lat``; None when a preset field has a derived field's name, or a quote, backslash or control
    character in its name (the dict path serves that preset).
    """
    if set(preset.names) & set(_DERIVED_ORDER) or any(
            '"' in name or "\\" in name or any(ord(c) < 0x20 for c in name) for name in preset.names):
        return None  # msgspec takes no such field name either
    roles = {preset.track: "track", preset.time: "time", preset.lon: "lon", preset.lat: "lat"}
    fields: list[Any] = []
    rename: dict[str, str] = {}
    for i, (name, kind) in enumerate(preset.fields):
        role = roles.get(name)
        attr = f"c_{role}" if role else f"f{i}"
        rename[attr] = name
        fields.append((attr, _CORE_TYPES[role]) if role else (attr, _STRUCT_TYPES[kind] | None, None))
    for name in _DERIVED_ORDER:
        rename[f"d_{name}"] = name
        fields.append((f"d_{name}", Any, None))  # whatever a value holds under this name, build() replaces it
    return msgspec.defstruct(f"Document_{preset.name}", fields, kw_only=True, rename=rename, gc=False)


@lru_cache(maxsize=16)
def document_decoder(preset: Preset) -> msgspec.json.Decoder:
    return msgspec.json.Decoder(document_type(preset))


ENCODER = msgspec.json.Encoder()


class Geometry(msgspec.Struct, gc=False):
    """``{"lat": .., "lon": ..}`` as :func:`build` writes it, without a dict for the cyclic GC to track."""

    lat: float
    lon: float


def fill(doc: Any, lon: float, lat: float, fences: Sequence[str], distance_m: float | None,
         speed_mps: float | None, heading_deg: float | None, ingested_at: int, cell: str) -> Any:
    """:func:`build_into` for a :func:`document_type` struct (the same JSON; ``fences`` is encoded as the array
    it is, the shared tuples of :meth:`agents.core.geofence.Geofences.containing` are not copied; ``cell``: the
    point's geohash, from :func:`geohashes`)."""
    doc.d_geometry = Geometry(lat, lon)
    doc.d_geofences = fences
    doc.d_speed_mps = speed_mps
    doc.d_heading_deg = heading_deg
    doc.d_distance_m = distance_m
    doc.d_geohash = cell
    doc.d_ingested_at = ingested_at
    return doc
