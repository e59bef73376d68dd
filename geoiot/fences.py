"""The geofence record contract: what a fence is on the fence topic, how it is checked, and the fence set it builds.

One home for the rules every runtime shares (the web API that writes fences, the seeding from
``IOT_GEOFENCES``, the workers and the web server that follow the topic):

* The topic (``IOT_FENCES_TOPIC``, default ``<IOT_TOPIC>-fences``) is compacted and has one partition, so
  every reader sees every change in one order. The key is the fence id (UTF-8); the value is a GeoJSON
  Feature (Polygon or MultiPolygon, ``properties`` an object) as JSON; a tombstone (no value) deletes.
* A fence's version is the offset of the record that wrote it and its time of change that record's
  timestamp: both assigned by Kafka, so two writers never hand out the same version.
* The key :data:`SEED_KEY` (not a valid fence id) holds the digest of the last file seeded, which makes
  seeding idempotent: the same file again writes nothing, whatever the API did meanwhile (see :func:`seed_plan`).

Pure: no I/O; :mod:`geoiot.fence_topic` reads and writes the topic.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
import shapely
from shapely.geometry import shape

FENCE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}$"
_FENCE_ID = re.compile(FENCE_ID_PATTERN)
MAX_VERTICES = 10_000  # per fence: a bigger one slows every point tested near it
MAX_BODY_BYTES = 2 << 20  # a fence's JSON at most (MAX_VERTICES positions need well under this)
MAX_PROPERTIES_BYTES = 16 << 10
SEED_KEY = b"__seed__"
GEOMETRY_TYPES = ("Polygon", "MultiPolygon")


class FenceError(ValueError):
    """A fence is refused; the message names the problem (the API answers it as a 400)."""


def check_id(fid: str) -> str:
    """``fid`` when it follows the id rules, else a :class:`FenceError` saying them."""
    if not isinstance(fid, str) or not _FENCE_ID.match(fid):
        raise FenceError(f"fence id {str(fid)[:80]!r} is invalid: 1 to 128 characters, letters, digits and . _ : - "
                         "only, starting with a letter or digit")
    return fid


def _position(p: Any, where: str) -> tuple[float, float]:
    if not isinstance(p, list) or len(p) not in (2, 3) or not all(
            isinstance(c, (int, float)) and not isinstance(c, bool) for c in p):
        raise FenceError(f"{where}: a position is [longitude, latitude] (numbers), got {orjson.dumps(p)[:80].decode()}")
    lon, lat = float(p[0]), float(p[1])
    if not (math.isfinite(lon) and -180.0 <= lon <= 180.0):
        raise FenceError(f"{where}: longitude {p[0]} is outside -180..180 (WGS84)")
    if not (math.isfinite(lat) and -90.0 <= lat <= 90.0):
        raise FenceError(f"{where}: latitude {p[1]} is outside -90..90 (WGS84)")
    return lon, lat


def _polygon(rings: Any, where: str, budget: list[int]) -> None:
    if not isinstance(rings, list) or not rings:
        raise FenceError(f"{where}: a polygon is a non-empty list of linear rings")
    for r, ring in enumerate(rings):
        here = f"{where} ring {r}"
        if not isinstance(ring, list):
            raise FenceError(f"{here}: a linear ring is a list of positions")
        budget[0] -= len(ring)
        if budget[0] < 0:
            raise FenceError(f"the fence has more than {MAX_VERTICES} vertices (the limit)")
        if len(ring) < 4:
            raise FenceError(f"{here}: a linear ring needs at least 4 positions (the last repeating the first), "
                             f"got {len(ring)}")
        first = _position(ring[0], here)
        for p in ring[1:]:
            last = _position(p, here)
        if first != last:
            raise FenceError(f"{here} is not closed: its last position {list(last)} differs from its first "
                             f"{list(first)}")


def check_feature(fid: str, data: Any) -> dict[str, Any]:
    """The fence ``fid`` as stored (a GeoJSON Feature with this id) from a client's JSON, or why not.

    Checked in order: a Feature object, the id (and any id in the body matching it), a Polygon or
    MultiPolygon, positions in WGS84 ranges, closed rings, at most :data:`MAX_VERTICES` vertices,
    shapely's ``is_valid`` (the reason from ``is_valid_reason``), not empty, properties an object.
    """
    check_id(fid)
    if not isinstance(data, dict):
        raise FenceError("a fence is a GeoJSON Feature object")
    kind = data.get("type")
    if kind != "Feature":
        raise FenceError(f"a fence is a GeoJSON Feature, not a {str(kind)[:40]}"
                         + (" (send one fence per request)" if kind == "FeatureCollection" else ""))
    if "id" in data and data["id"] is not None and str(data["id"]) != fid:
        raise FenceError(f"the Feature's id {str(data['id'])[:80]!r} differs from the fence id {fid!r}")
    props = data.get("properties")
    if props is None:
        props = {}
    if not isinstance(props, dict):
        raise FenceError("the Feature's properties must be an object or null")
    if len(orjson.dumps(props)) > MAX_PROPERTIES_BYTES:
        raise FenceError(f"the Feature's properties exceed {MAX_PROPERTIES_BYTES} bytes")
    geometry = data.get("geometry")
    gtype = geometry.get("type") if isinstance(geometry, dict) else None
    if gtype not in GEOMETRY_TYPES:
        raise FenceError(f"the fence geometry is a {gtype if geometry is not None else 'null'}, "
                         "not a Polygon or MultiPolygon")
    coords = geometry.get("coordinates")
    budget = [MAX_VERTICES]
    if gtype == "Polygon":
        _polygon(coords, "polygon", budget)
    else:
        if not isinstance(coords, list) or not coords:
            raise FenceError("a MultiPolygon is a non-empty list of polygons")
        for k, polygon in enumerate(coords):
            _polygon(polygon, f"polygon {k}", budget)
    try:
        geom = shape(geometry)
    except Exception as exc:  # shapely raises several types for malformed coordinates
        raise FenceError(f"the fence geometry is malformed: {exc}") from None
    if geom.is_empty:
        raise FenceError("the fence geometry is empty")
    if not geom.is_valid:
        raise FenceError(f"the fence geometry is not valid: {shapely.is_valid_reason(geom)}")
    return {"type": "Feature", "id": fid, "geometry": {"type": gtype, "coordinates": coords}, "properties": props}


def encode(feature: Mapping[str, Any]) -> tuple[bytes, bytes]:
    """(key, value) of a checked fence's record."""
    return str(feature["id"]).encode(), orjson.dumps(feature)


def decode(key: bytes | None, value: bytes | None) -> tuple[str, dict[str, Any] | None]:
    """(fence id, stored fence or None for a tombstone) of a record; a :class:`FenceError` when it is not a fence."""
    if key is None:
        raise FenceError("a fence record has no key")
    try:
        fid = key.decode()
    except UnicodeDecodeError:
        raise FenceError("a fence record's key is not UTF-8") from None
    check_id(fid)
    if value is None:
        return fid, None
    try:
        data = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise FenceError(f"fence {fid!r}: the value is not JSON: {exc}") from None
    return fid, check_feature(fid, data)


@dataclass(frozen=True)
class Fence:
    """One fence in force: the Feature as stored, its version (record offset) and time of change (ms)."""

    feature: dict[str, Any]
    version: int
    updated: int

    def geometry(self) -> Any:
        return shape(self.feature["geometry"])

    def as_feature(self) -> dict[str, Any]:
        """The Feature as the API shows it: with its ``version`` and ``updated`` (foreign members)."""
        return {**self.feature, "version": self.version, "updated": self.updated}


@dataclass
class FenceSet:
    """The fences a reader of the topic has seen so far, and the versions of the fences deleted."""

    fences: dict[str, Fence] = field(default_factory=dict)
    removed: dict[str, int] = field(default_factory=dict)  # fence id -> version (offset) of its tombstone
    seeded: str = ""  # digest of the last file seeded
    version: int = -1  # offset of the newest record applied

    def apply(self, key: bytes | None, value: bytes | None, offset: int, timestamp: int) -> str | None:
        """Apply one record; returns the id of the fence it changed (None for the seed marker or a refused
        record, which a writer other than ours may have put there: a :class:`FenceError` says why)."""
        self.version = max(self.version, offset)
        if key == SEED_KEY:
            self.seeded = (value or b"").decode(errors="replace")
            return None
        fid, feature = decode(key, value)
        if feature is None:
            self.fences.pop(fid, None)
            self.removed[fid] = offset
        else:
            self.fences[fid] = Fence(feature, offset, timestamp)
            self.removed.pop(fid, None)
        return fid

    def __len__(self) -> int:
        return len(self.fences)

    def __iter__(self) -> Iterator[str]:
        return iter(self.fences)

    def snapshot(self) -> bytes:
        """The fences in force and those removed, as JSON (what the Spark driver hands its executors)."""
        return orjson.dumps({"version": self.version, "removed": self.removed,
                             "fences": [self.fences[f].as_feature() for f in sorted(self.fences)]})

    @classmethod
    def from_snapshot(cls, data: bytes) -> "FenceSet":
        """The fence set of a :meth:`snapshot` (its fences were checked when they were read from the topic)."""
        raw = orjson.loads(data)
        fences = {}
        for f in raw["fences"]:
            version, updated = f.pop("version"), f.pop("updated")
            fences[f["id"]] = Fence(f, version, updated)
        return cls(fences, {k: int(v) for k, v in raw["removed"].items()}, version=int(raw["version"]))

    def collection(self) -> dict[str, Any]:
        """The fences as a GeoJSON FeatureCollection, ids sorted; ``version``: the newest change applied."""
        return {"type": "FeatureCollection", "version": self.version,
                "features": [self.fences[f].as_feature() for f in sorted(self.fences)]}


def file_digest(text: bytes) -> str:
    return hashlib.sha256(text).hexdigest()


def features_of_file(data: Any, origin: str) -> list[dict[str, Any]]:
    """The checked fences of a geofences file (a FeatureCollection; ids from ``id`` or ``properties.id``)."""
    if not isinstance(data, dict) or data.get("type") != "FeatureCollection" or not isinstance(
            data.get("features"), list):
        raise FenceError(f"{origin}: not a GeoJSON FeatureCollection")
    out: dict[str, dict[str, Any]] = {}
    for n, feature in enumerate(data["features"]):
        props = feature.get("properties") if isinstance(feature, dict) else None
        fid = feature.get("id", props.get("id") if isinstance(props, dict) else None) if isinstance(
            feature, dict) else None
        if fid is None or fid == "":
            raise FenceError(f"{origin}: feature #{n} has no id (set the feature's id or properties.id)")
        fid = str(fid)
        try:
            out_feature = check_feature(fid, {**feature, "id": fid})
        except FenceError as exc:
            raise FenceError(f"{origin}: feature {fid!r}: {exc}") from None
        if fid in out:
            raise FenceError(f"{origin}: fence id {fid!r} is used by more than one feature")
        out[fid] = out_feature
    return list(out.values())


def seed_plan(current: FenceSet, features: Iterable[Mapping[str, Any]], digest: str) -> list[tuple[bytes, bytes]]:
    """The records that seed the topic with a file's fences (its marker last), or none.

    Nothing when this file (by digest) was the last seeded: the same file twice changes nothing, even after
    fences were changed or deleted through the API. A new file writes those of its fences that differ from
    the fence in force (absent or another shape or properties). Seeding never deletes a fence.
    """
    if current.seeded == digest:
        return []
    records = []
    for feature in features:
        fid = str(feature["id"])
        existing = current.fences.get(fid)
        if existing is None or existing.feature != feature:
            records.append(encode(feature))
    records.append((SEED_KEY, digest.encode()))
    return records
