"""Geohash cells (their rings, sizes and counts over a box) and the one table mapping a map zoom to a
geohash precision.

The table keeps a cell between about 32 and 128 screen pixels wide at every Leaflet zoom (256-px tiles):
a cell of precision p is 360 / 2**ceil(5p/2) degrees wide, a zoom-z map shows 256 * 2**z / 360 px per
degree, so each step of the table is where the cell would fall under ~32 px.
"""

from __future__ import annotations

from functools import lru_cache

import geohash

# (highest zoom, precision): zoom 0-1 -> 1, 2-4 -> 2, ... 22 -> 10.
ZOOM_PRECISION: tuple[tuple[int, int], ...] = (
    (1, 1), (4, 2), (6, 3), (9, 4), (11, 5), (14, 6), (16, 7), (19, 8), (21, 9), (22, 10),
)
MAX_ZOOM = 22


def precision_for_zoom(zoom: int) -> int:
    """The geohash precision the map aggregates at for a Leaflet zoom level 0..22."""
    if not 0 <= zoom <= MAX_ZOOM:
        raise ValueError(f"zoom {zoom} is outside 0..{MAX_ZOOM}")
    for highest, precision in ZOOM_PRECISION:
        if zoom <= highest:
            return precision
    raise AssertionError("unreachable: the table covers every zoom")


def zoom_table() -> list[dict[str, int]]:
    """The table as rows for /api/config and the OpenAPI description."""
    rows, low = [], 0
    for highest, precision in ZOOM_PRECISION:
        rows.append({"minZoom": low, "maxZoom": highest, "precision": precision})
        low = highest + 1
    return rows


@lru_cache(maxsize=65_536)
def _ring(cell: str) -> tuple[tuple[float, float], ...]:
    b = geohash.bbox(cell)
    w, s, e, n = b["w"], b["s"], b["e"], b["n"]
    return ((w, s), (e, s), (e, n), (w, n), (w, s))


def cell_ring(cell: str) -> list[list[float]]:
    """The exact bounds of a geohash cell as a closed, counter-clockwise GeoJSON ring (cached: a map asks
    for the same cells on every refresh, and python-geohash's bbox is pure Python)."""
    return [list(p) for p in _ring(cell)]


def cell_size(precision: int) -> tuple[float, float]:
    """(width, height) in degrees of a geohash cell: 5 bits per character, longitude taking the odd one."""
    bits = 5 * precision
    return 360 / 2 ** ((bits + 1) // 2), 180 / 2 ** (bits // 2)


def _span(low: float, high: float, origin: float, size: float, count: int) -> int:
    # cell indices of both ends; the box's edge at +180 / +90 belongs to the last cell, not one past it
    last = min(count - 1, int((high - origin) // size))
    return min(count, last - min(count - 1, int((low - origin) // size)) + 1)


def grid_cells(min_lon: float, min_lat: float, max_lon: float, max_lat: float, precision: int) -> int:
    """How many geohash cells of ``precision`` a box touches (``min_lon > max_lon`` crosses the antimeridian):
    what an aggregation over it may have to build, whatever the data."""
    width, height = cell_size(precision)
    columns, rows = round(360 / width), round(180 / height)
    if min_lon <= max_lon:
        across = _span(min_lon, max_lon, -180, width, columns)
    else:
        across = min(columns, _span(min_lon, 180, -180, width, columns) + _span(-180, max_lon, -180, width, columns))
    return across * _span(min_lat, max_lat, -90, height, rows)
