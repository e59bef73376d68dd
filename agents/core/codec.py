"""The observation document's codec for the batch core: documents completed in place, geohashes by columns,
and the document as a compiled msgspec struct (the validator's fast path). The model it fills (field names,
``_id``, index names) is :mod:`geoiot.documents`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from functools import lru_cache
from typing import Annotated, Any

import geohash
import msgspec

from geoiot.documents import (DISTANCE, GEOFENCES, GEOHASH, GEOHASH_PRECISION, GEOMETRY, HEADING, INGESTED_AT,
                              SPEED)
from geoiot.geohash_batch import encode_many
from geoiot.schema import _INT64, Preset
from geoiot.timeparse import _MAX_MS, _MS_THRESHOLD


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
