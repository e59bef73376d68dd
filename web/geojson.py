"""Elasticsearch answers shaped as the API's GeoJSON: cells, observations, current positions, a track's line
and the data's extent. Pure: no I/O."""

from __future__ import annotations

from typing import Any

import orjson

from geoiot.documents import GEOFENCES, GEOMETRY, HEADING, SPEED
from geoiot.schema import Preset
from web.geo import cell_ring


def total(resp: dict[str, Any]) -> int:
    """The hit count of a search answer (0 when it was not counted)."""
    return int(resp.get("hits", {}).get("total", {}).get("value", 0))


def extent(resp: dict[str, Any]) -> dict[str, Any]:
    """/api/extent from the answer of web.where.extent_body: first and last time, count and bbox."""
    aggs = resp.get("aggregations", {})
    start, end = aggs.get("start", {}).get("value"), aggs.get("end", {}).get("value")
    return {"start": None if start is None else int(start), "end": None if end is None else int(end),
            "count": total(resp), "bbox": bounds_bbox(aggs)}


def bounds_bbox(aggs: dict[str, Any]) -> list[float] | None:
    """The ``bounds`` geo_bounds aggregation as [minLon, minLat, maxLon, maxLat] (None: no documents)."""
    bounds = aggs.get("bounds", {}).get("bounds")
    if not bounds:
        return None
    tl, br = bounds["top_left"], bounds["bottom_right"]
    return [tl["lon"], br["lat"], br["lon"], tl["lat"]]


# cell -> serialised Feature up to its count; bounded like the ring cache (a few MB at most)
CELL_PREFIXES: dict[str, bytes] = {}
_MAX_PREFIXES = 65_536


def cell_prefix(cell: str) -> bytes:
    """The serialised start of a cell's GeoJSON Feature (properties: geohash, then its count), up to the count:
    the polygon is serialised once per cell and reused on every refresh (the bulk of the per-request work)."""
    prefix = CELL_PREFIXES.get(cell)
    if prefix is None:
        head = orjson.dumps({"type": "Feature", "id": cell,
                             "geometry": {"type": "Polygon", "coordinates": [cell_ring(cell)]},
                             "properties": {"geohash": cell}})
        prefix = head[:-2] + b',"count":'  # drop the closing "}}" of properties and feature
        if len(CELL_PREFIXES) >= _MAX_PREFIXES:
            CELL_PREFIXES.clear()  # rare (a long-lived server panning the whole world): start afresh
        CELL_PREFIXES[cell] = prefix
    return prefix


def aggregate_payload(resp: dict[str, Any], precision: int) -> bytes:
    """The FeatureCollection of the cells, written as bytes from per-cell pre-serialised fragments
    (cell_prefix) rather than a dict per cell: this loop is the busiest endpoint's hot path, hence
    local names and no per-cell function call."""
    buckets = resp.get("aggregations", {}).get("cells", {}).get("buckets", [])
    parts: list[bytes] = []
    append, dumps, prefixes = parts.append, orjson.dumps, CELL_PREFIXES
    in_cells = 0
    for b in buckets:
        cell, count = b["key"], b["doc_count"]
        in_cells += count
        prefix = prefixes.get(cell) or cell_prefix(cell)
        location = b.get("centroid", {}).get("location")
        tail = dumps((location["lon"], location["lat"])) if location else b"null"
        append(b"%s%d,\"centroid\":%s}}" % (prefix, count, tail))
    count_all = total(resp)
    head = orjson.dumps({"type": "FeatureCollection", "precision": precision, "total": count_all,
                         "truncated": in_cells < count_all})
    return b"".join((head[:-1], b',"features":[', b",".join(parts), b"]}"))


def position(preset: Preset, source: dict[str, Any]) -> list[float] | None:
    """A document's [lon, lat]: its geo_point (removed from ``source``), else the preset's lon/lat fields."""
    geometry = source.pop(GEOMETRY, None)
    if isinstance(geometry, dict) and "lon" in geometry and "lat" in geometry:
        return [geometry["lon"], geometry["lat"]]
    lon, lat = source.get(preset.lon), source.get(preset.lat)
    return [lon, lat] if isinstance(lon, (int, float)) and isinstance(lat, (int, float)) else None


def observations(preset: Preset, resp: dict[str, Any]) -> dict[str, Any]:
    """/api/observations: each hit as a Point with its document as properties."""
    features = []
    for hit in resp.get("hits", {}).get("hits", []):
        source = dict(hit.get("_source", {}))
        at = position(preset, source)
        if at is None:
            continue
        features.append({"type": "Feature", "id": hit["_id"],
                         "geometry": {"type": "Point", "coordinates": at}, "properties": source})
    return {"type": "FeatureCollection", "total": total(resp), "features": features}


def latest_feature(preset: Preset, source: dict[str, Any]) -> dict[str, Any] | None:
    """A track's current position as a GeoJSON Point: track, time, speed, heading and fences named, every
    other attribute of its document under ``attributes``."""
    at = position(preset, source)
    if at is None:
        return None
    track = source.pop(preset.track, None)
    time_ms = source.pop(preset.time, None)
    for name in (preset.lon, preset.lat):
        source.pop(name, None)
    props = {"track": track, "time": time_ms, SPEED: source.pop(SPEED, None), HEADING: source.pop(HEADING, None),
             GEOFENCES: source.pop(GEOFENCES, None) or [], "attributes": source}
    return {"type": "Feature", "id": track, "geometry": {"type": "Point", "coordinates": at},
            "properties": props}


def track(track_id: str, coords: list[list[float]], times: list[int], total_count: int, pages: int,
          complete: bool) -> dict[str, Any]:
    """/api/tracks/{id}: the reports as a LineString (a Point when there is one)."""
    geometry = ({"type": "LineString", "coordinates": coords} if len(coords) > 1
                else {"type": "Point", "coordinates": coords[0]})
    return {"type": "Feature", "id": track_id, "geometry": geometry,
            "properties": {"track": track_id, "count": len(coords), "times": times, "points": len(coords),
                           "total": total_count, "pages": pages, "complete": complete, "truncated": not complete}}
