"""The reference shape of one /api/aggregate cell, built as a dict: what web.geojson.aggregate_payload's
byte fragments must equal (tests) and the baseline it is measured against (bench.web_shaping)."""

from __future__ import annotations

from typing import Any

from web.geo import cell_ring


def cell_feature(cell: str, count: int, centroid: tuple[float, float] | None) -> dict[str, Any]:
    """One aggregation bucket as a GeoJSON Feature (properties: geohash, count, centroid [lon, lat])."""
    return {
        "type": "Feature",
        "id": cell,
        "geometry": {"type": "Polygon", "coordinates": [cell_ring(cell)]},
        "properties": {"geohash": cell, "count": count,
                       "centroid": list(centroid) if centroid is not None else None},
    }
