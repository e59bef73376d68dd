"""Geofences: which fences contain each point of a batch, vectorised with shapely 2.

A point on a fence's boundary counts as inside (``intersects`` semantics). Fences are indexed in an
STRtree and queried with the whole batch of points at once (the tree prepares the candidate
geometries), after a numpy bounding-box test that drops the points far from every fence; no Python
loop runs over fences or over points that miss them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from shapely.geometry import shape

NO_FENCES: tuple[str, ...] = ()


class GeofenceError(ValueError):
    """The geofence file is unusable; the message names the file and the feature."""


@dataclass(frozen=True)
class Geofences:
    ids: tuple[str, ...]
    geometries: np.ndarray  # shapely geometries, parallel to ids
    tree: shapely.STRtree = field(repr=False)
    bounds: tuple[float, float, float, float]  # union bbox (minx, miny, maxx, maxy)
    _rank: np.ndarray = field(repr=False)  # position of each fence id in sorted order

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def from_geojson(cls, data: Mapping[str, Any], origin: str = "<geojson>") -> "Geofences":
        """Fences of a FeatureCollection of Polygons/MultiPolygons identified by ``id`` or ``properties.id``."""
        if not isinstance(data, Mapping) or data.get("type") != "FeatureCollection":
            raise GeofenceError(f"{origin}: not a GeoJSON FeatureCollection")
        features = data.get("features")
        if not isinstance(features, list):
            raise GeofenceError(f"{origin}: 'features' is not a list")
        ids: list[str] = []
        geoms: list[Any] = []
        for n, feature in enumerate(features):
            if not isinstance(feature, Mapping):
                raise GeofenceError(f"{origin}: feature #{n} is not an object")
            props = feature.get("properties") or {}
            fid = feature.get("id", props.get("id") if isinstance(props, Mapping) else None)
            if fid is None or fid == "":
                raise GeofenceError(f"{origin}: feature #{n} has no id (set the feature's id or properties.id)")
            fid = str(fid)
            geometry = feature.get("geometry")
            kind = geometry.get("type") if isinstance(geometry, Mapping) else None
            if kind not in ("Polygon", "MultiPolygon"):
                raise GeofenceError(f"{origin}: feature {fid!r} is a {kind}, not a Polygon or MultiPolygon")
            try:
                geom = shape(geometry)
            except Exception as exc:  # shapely raises several types for malformed coordinates
                raise GeofenceError(f"{origin}: feature {fid!r} has malformed coordinates: {exc}") from None
            if geom.is_empty or not geom.is_valid:
                raise GeofenceError(f"{origin}: feature {fid!r} is not a valid polygon: {shapely.is_valid_reason(geom)}")
            if fid in ids:
                raise GeofenceError(f"{origin}: fence id {fid!r} is used by more than one feature")
            ids.append(fid)
            geoms.append(geom)
        return cls.from_geometries(ids, geoms)

    @classmethod
    def from_geometries(cls, ids: Sequence[str], geometries: Sequence[Any]) -> "Geofences":
        array = np.asarray(geometries, dtype=object) if geometries else np.empty(0, dtype=object)
        shapely.prepare(array)
        order = np.argsort(np.asarray(ids, dtype=object), kind="stable") if ids else np.empty(0, dtype=np.intp)
        rank = np.empty(len(ids), dtype=np.intp)
        rank[order] = np.arange(len(ids))
        if len(array):
            b = shapely.bounds(array)
            bounds = (float(b[:, 0].min()), float(b[:, 1].min()), float(b[:, 2].max()), float(b[:, 3].max()))
        else:
            bounds = (np.inf, np.inf, -np.inf, -np.inf)
        return cls(tuple(ids), array, shapely.STRtree(array), bounds, rank)

    @classmethod
    def load(cls, path: str | Path) -> "Geofences":
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise GeofenceError(f"cannot read geofences {path}: {exc.strerror}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise GeofenceError(f"{path}: not valid JSON: {exc}") from None
        return cls.from_geojson(data, str(path))

    def pairs(self, lon: np.ndarray, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(point index, fence index) of every point inside (or on the boundary of) a fence."""
        lon = np.asarray(lon, dtype=np.float64)
        lat = np.asarray(lat, dtype=np.float64)
        minx, miny, maxx, maxy = self.bounds
        near = np.flatnonzero((lon >= minx) & (lon <= maxx) & (lat >= miny) & (lat <= maxy))
        if near.size == 0:
            return near, near
        points = shapely.points(lon[near], lat[near])
        pi, fi = self.tree.query(points, predicate="intersects")
        return near[pi], fi

    def containing(self, lon: Sequence[float] | np.ndarray, lat: Sequence[float] | np.ndarray) -> list[tuple[str, ...]]:
        """For each point, the sorted ids of the fences containing it (boundary included)."""
        n = len(lon)
        out: list[tuple[str, ...]] = [NO_FENCES] * n
        if not len(self.ids) or n == 0:
            return out
        pi, fi = self.pairs(np.asarray(lon), np.asarray(lat))
        if pi.size == 0:
            return out
        order = np.lexsort((self._rank[fi], pi))
        pi, fi = pi[order], fi[order]
        starts = np.flatnonzero(np.r_[True, pi[1:] != pi[:-1]])
        ends = np.r_[starts[1:], pi.size]
        ids = self.ids
        for s, e in zip(starts.tolist(), ends.tolist()):
            out[int(pi[s])] = tuple(ids[j] for j in fi[s:e].tolist())
        return out

    def count_inside(self, lon: np.ndarray, lat: np.ndarray) -> int:
        """Number of (point, fence) hits; what the benchmark times (no per-point Python objects)."""
        return int(self.pairs(lon, lat)[0].size)
