"""The OGC API's ``latest`` collection from the mirror (web.live.table), with the answers the Elasticsearch
``_latest`` index gave through web.where.page_body: the tracks passing a query, a page of them in (time, track)
order resuming after a (time, track) pair as search_after did (so a next-page cursor means the same on either
path), one track by id, and the extent. CQL2's spatial shapes (web.params.InShape) are tested on the positions
with shapely's vectorised predicates, by web.live.filters.mask like every other filter. Pure: numpy, no I/O.

Semantics kept from the Elasticsearch path: a shape selects the points that intersect it, its boundary
included (a polygon is planar in lon/lat: web.ogc.cql orients it counter-clockwise, so Elasticsearch never read
it as crossing the antimeridian); the page order is ascending time, then track id by code point (the keyword
order of UTF-8 bytes).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from web.live.filters import mask, select
from web.live.table import LiveTable
from web.params import BBox, Filter, Window


def matching(table: LiveTable, bbox: BBox, window: Window, where: tuple[Filter, ...],
             cutoff: int | None = None) -> np.ndarray:
    """The rows in ``bbox`` and ``window`` (inclusive) passing every filter, none older than ``cutoff``."""
    rows = select(table, bbox, start=window.start, end=window.end, cutoff=cutoff)
    for f in where:
        if not len(rows):
            break
        rows = rows[mask(table, f, rows)]
    return rows


def page(table: LiveTable, rows: np.ndarray, limit: int, after: Sequence[Any] | None = None) -> np.ndarray:
    """The first ``limit`` of ``rows`` in (time, track) order that come after the pair ``after``."""
    times = table.time[rows]
    if after is not None:
        t_after, track_after = int(after[0]), str(after[1])
        keep = times > t_after
        same = np.flatnonzero(times == t_after)
        if len(same):
            tracks = table.tracks
            keep[same] = [tracks[r] > track_after for r in rows[same].tolist()]  # type: ignore[operator]
        rows, times = rows[keep], times[keep]
    if len(rows) > limit:
        kth = np.partition(times, limit - 1)[limit - 1]
        inside = times <= kth  # the first ``limit`` and whoever ties with the last of them
        rows, times = rows[inside], times[inside]
    tracks = table.tracks
    names = np.asarray([tracks[r] for r in rows.tolist()], dtype=str) if len(rows) else np.zeros(0, dtype=str)
    return rows[np.lexsort((names, times))][:limit]


def sort_values(table: LiveTable, row: int) -> list[Any]:
    """What a scan resumes after: the row's (time, track), as search_after's sort values."""
    return [int(table.time[row]), table.tracks[row]]


def row_of(table: LiveTable, track: str, cutoff: int | None = None) -> int | None:
    """The row of ``track`` when held and not older than ``cutoff``."""
    row = table.rows.get(track)
    if row is None or (cutoff is not None and int(table.time[row]) < cutoff):
        return None
    return row


def extent(table: LiveTable, cutoff: int | None = None) -> tuple[list[float] | None, tuple[int | None, int | None]]:
    """The positions' box [minLon, minLat, maxLon, maxLat] (not wrapped across the antimeridian, as the
    collection's extent always was) and the first and last time, of the tracks not older than ``cutoff``."""
    rows = table.all_rows()
    if cutoff is not None and len(rows):
        rows = rows[table.time[rows] >= cutoff]
    if not len(rows):
        return None, (None, None)
    lon, lat, t = table.lon[rows], table.lat[rows], table.time[rows]
    return ([float(lon.min()), float(lat.min()), float(lon.max()), float(lat.max())],
            (int(t.min()), int(t.max())))
