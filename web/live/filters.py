"""The ``where`` language (and CQL2's tree) evaluated on the mirror's columns, vectorised: the same parsed
filters (web.params dataclasses, made by web.where.parse_where / web.ogc.cql) that web.where turns into
Elasticsearch queries, with the same meaning as those queries (one home for the language; this is its second
backend). Each function returns a boolean mask over the ``rows`` it is given.

The semantics followed, as Elasticsearch applies them to the documents' mapping (geoiot.documents):
a missing or null attribute matches no OneOf/Range/Like (so a negation matches it); a list attribute (the fence
set) matches a OneOf when one of its elements does; time fields compare as epoch ms; bounds are inclusive
unless said otherwise.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import orjson
import shapely

from geoiot.documents import GEOFENCES, GEOHASH, GEOHASH_PRECISION
from geoiot.geohash_batch import encode_many
from web.params import WORLD, AllOf, AnyOf, BBox, Filter, InBox, InShape, IsNull, Like, Negation, OneOf, Range
from web.live.table import NOT_BUILT, NULL, PRESENT, LiveTable


# newest_in_view reads the newest-first order (about limit * rows / in_view rows, a few operations each) unless
# the view's cells (in_view rows, about twice as many operations each, and a sort) are SCAN_COST times cheaper.
SCAN_COST = 2.0


class Unsupported(ValueError):
    """A filter the mirror does not evaluate (a CQL2 spatial shape): the caller answers from elsewhere."""


def bbox_mask(table: LiveTable, bbox: BBox, rows: np.ndarray) -> np.ndarray:
    """Inclusive box on the position; a box whose left > right crosses the antimeridian."""
    if bbox == WORLD:
        return np.ones(len(rows), dtype=bool)
    return in_box(bbox, table.lon[rows], table.lat[rows])


def in_box(bbox: BBox, lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """:func:`bbox_mask` of positions given as columns."""
    out = (lat >= bbox.min_lat) & (lat <= bbox.max_lat)
    if bbox.crosses_antimeridian:
        return out & ((lon >= bbox.min_lon) | (lon <= bbox.max_lon))
    return out & (lon >= bbox.min_lon) & (lon <= bbox.max_lon)


def _matches(value: Any, wanted: set[Any], kind: str) -> bool:
    if isinstance(value, tuple):
        return any(_matches(v, wanted, kind) for v in value)
    if kind == "bool":
        return type(value) is bool and value in wanted
    if kind == "string":
        return type(value) is str and value in wanted
    return type(value) is not bool and value in wanted


def _column(table: LiveTable, name: str, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(values, present) of a numeric attribute at ``rows``; None when it is not a numeric column."""
    if name == table.preset.time:
        return table.time[rows], np.ones(len(rows), dtype=bool)
    if name in table.values:
        return table.values[name][rows], table.present[name][rows] == PRESENT
    return None


def _geohashes(table: LiveTable, rows: np.ndarray) -> list[str | None]:
    cells = encode_many(table.lat[rows], table.lon[rows], GEOHASH_PRECISION) if len(rows) else []
    has = table.has_geohash[rows].tolist()
    out: list[str | None] = []
    for i, row in enumerate(rows.tolist()):
        extra = table.extras.get(row)
        out.append(extra[GEOHASH] if extra and GEOHASH in extra else cells[i] if has[i] else None)
    return out


def _per_value(table: LiveTable, name: str, rows: np.ndarray, predicate: Any) -> np.ndarray:
    """A predicate on the values of a non-numeric attribute at ``rows`` (None: missing or null, never passes)."""
    if name in table.codes:
        lut = table.dictionaries[name].lookup(lambda v: v is not None and predicate(v))
        return lut[table.codes[name][rows]]
    if name == table.preset.track:
        values: list[Any] = [table.tracks[r] for r in rows.tolist()]
    elif name == GEOHASH:
        values = _geohashes(table, rows)
    else:
        return np.zeros(len(rows), dtype=bool)
    return np.fromiter((v is not None and predicate(v) for v in values), dtype=bool, count=len(values))


def shape_mask(table: LiveTable, f: InShape, rows: np.ndarray) -> np.ndarray:
    """Which of ``rows`` lie in or on ``f``'s geometry (only the points within its bounds are tested exactly)."""
    kind, coordinates = f.geometry
    geom = shapely.from_geojson(orjson.dumps({"type": kind, "coordinates": orjson.loads(coordinates)}))
    shapely.prepare(geom)
    x0, y0, x1, y1 = geom.bounds
    lon, lat = table.lon[rows], table.lat[rows]
    near = np.flatnonzero((lon >= x0) & (lon <= x1) & (lat >= y0) & (lat <= y1))
    out = np.zeros(len(rows), dtype=bool)
    if len(near):
        out[near] = shapely.intersects_xy(geom, lon[near], lat[near])
    return out


def mask(table: LiveTable, f: Filter, rows: np.ndarray) -> np.ndarray:
    """Which of ``rows`` pass ``f``."""
    if isinstance(f, AllOf):
        out = np.ones(len(rows), dtype=bool)
        for part in f.parts:
            out &= mask(table, part, rows)
        return out
    if isinstance(f, AnyOf):
        out = np.zeros(len(rows), dtype=bool)
        for part in f.parts:
            out |= mask(table, part, rows)
        return out
    if isinstance(f, Negation):
        return ~mask(table, f.part, rows)
    if isinstance(f, InBox):
        return bbox_mask(table, f.bbox, rows)
    if isinstance(f, InShape):
        return shape_mask(table, f, rows)
    if isinstance(f, IsNull):
        col = _column(table, f.field, rows)
        if col is not None:
            return ~col[1]
        if f.field in table.codes or f.field in (table.preset.track, GEOHASH):
            return ~_per_value(table, f.field, rows, lambda v: True)
        return np.ones(len(rows), dtype=bool)
    if isinstance(f, Like):
        pattern = _like_regex(f.pattern)
        return _per_value(table, f.field, rows,
                          lambda v: any(type(x) is str and len(x) <= 256 and pattern.fullmatch(x)
                                        for x in (v if isinstance(v, tuple) else (v,))))
    col = _column(table, f.field, rows)
    if isinstance(f, OneOf):
        if col is not None:
            values, present = col
            wanted = [v for v in f.values if type(v) is not bool and type(v) is not str]
            return present & np.isin(values, np.asarray(wanted, dtype=values.dtype)) if wanted else \
                np.zeros(len(rows), dtype=bool)
        wanted_set = set(f.values)
        return _per_value(table, f.field, rows, lambda v: _matches(v, wanted_set, f.kind))
    if isinstance(f, Range):
        if col is None:
            return np.zeros(len(rows), dtype=bool)
        values, out = col
        out = out.copy()
        if f.low is not None:
            out &= (values >= f.low) if f.include_low else (values > f.low)
        if f.high is not None:
            out &= (values <= f.high) if f.include_high else (values < f.high)
        return out
    raise Unsupported(f"filter {type(f).__name__}")


def _like_regex(pattern: str) -> re.Pattern[str]:
    """A CQL2 LIKE pattern (web.where._like's reading: % any run, _ one character, \\ escapes) as a regex."""
    out, escaped = [], False
    for c in pattern:
        if escaped:
            out.append(re.escape(c))
            escaped = False
        elif c == "\\":
            escaped = True
        elif c == "%":
            out.append(".*")
        elif c == "_":
            out.append(".")
        else:
            out.append(re.escape(c))
    return re.compile("".join(out), re.DOTALL)


def select(table: LiveTable, bbox: BBox, where: tuple[Filter, ...] = (), *, start: int | None = None,
           end: int | None = None, fence: str | None = None, cutoff: int | None = None) -> np.ndarray:
    """The rows in ``bbox`` passing every filter, in the window [start, end], in ``fence``, and not older than
    ``cutoff`` (the retention's: web.live answers no track Elasticsearch's trim would have removed)."""
    rows = table.rows_in(bbox)
    keep = bbox_mask(table, bbox, rows)
    t = table.time[rows]
    for bound, op in ((cutoff, np.greater_equal), (start, np.greater_equal), (end, np.less_equal)):
        if bound is not None:
            keep &= op(t, bound)
    rows = rows[keep]
    if fence is not None:
        rows = rows[mask(table, OneOf(GEOFENCES, "string", (fence,)), rows)]
    for f in where:
        if not len(rows):
            break
        rows = rows[mask(table, f, rows)]
    return rows


def newest_first(table: LiveTable, rows: np.ndarray, limit: int) -> np.ndarray:
    """The newest ``limit`` of ``rows``, newest first (equal times: the higher row first, one order for every
    path)."""
    t = table.time[rows]
    if len(rows) > limit:
        kth = np.partition(t, len(t) - limit)[len(t) - limit]
        keep = t >= kth
        rows, t = rows[keep], t[keep]
    return rows[np.lexsort((rows, t))[::-1][:limit]]


def newest_in_view(table: LiveTable, bbox: BBox, limit: int, cutoff: int | None = None
                   ) -> tuple[int, np.ndarray] | None:
    """``len(select(table, bbox, cutoff=cutoff))`` and its newest ``limit`` rows (:func:`newest_first`), without
    reading every row in view; None where that would not be cheaper (the caller then selects).

    The total: the grid's count of the cells wholly inside the box, exact checks of its border cells' rows,
    less the rows older than ``cutoff`` (the oldest of the newest-first order); the rows changed since the
    grid's sort are checked one by one. The newest: the newest-first order read from its start, in chunks
    sized by the share of rows in view, until ``limit`` of them lie in the box; merged with the changed rows."""
    table.refresh_grid()
    grid = table.grid
    n = len(grid.newest)
    if n == 0 or limit <= 0:
        return None
    world = bbox == WORLD
    split = None if world else grid.split(bbox.min_lon, bbox.min_lat, bbox.max_lon, bbox.max_lat)
    if split is not None and (grid.count(split[0], split[1]) + len(split[2])) ** 2 * SCAN_COST < limit * n:
        return None  # a small share of the rows in view: reading the view's cells is cheaper
    stale = grid.stale
    old = 0 if cutoff is None else int(np.searchsorted(grid.newest_time[::-1], cutoff, "left"))
    if old > n // 4:
        return None
    changed = np.fromiter(grid.dirty, dtype=np.int64, count=len(grid.dirty))
    built_cell = grid.row_cell[changed]
    current = changed[table.alive[changed]]
    keep = bbox_mask(table, bbox, current)
    if cutoff is not None:
        keep &= table.time[current] >= cutoff
    fresh = current[keep]
    tail = grid.newest[n - old:]
    tail = tail[~stale[tail]]
    if world:  # every row sorted but the changed ones
        clean = n - int((built_cell != NOT_BUILT).sum()) - len(tail)
    elif split is None:  # too tall for the grid: every row's position checked, in place (no gather)
        cap = table.capacity
        inside = in_box(bbox, table.lon[:cap], table.lat[:cap]) & table.alive[:cap] & ~stale[:cap]
        if cutoff is not None:
            inside &= table.time[:cap] >= cutoff
        clean = int(inside.sum())
    else:
        starts, ends, edge = split
        edge = edge[~stale[edge]]
        inside = bbox_mask(table, bbox, edge)
        if cutoff is not None:
            inside &= table.time[edge] >= cutoff
        clean = (grid.count(starts, ends) - int(grid.within(built_cell, starts, ends).sum())
                 + int(inside.sum()) - int(grid.within(grid.row_cell[tail], starts, ends).sum()))
    found: list[np.ndarray] = []
    got, at = 0, 0
    chunk = int(limit * n / max(clean, 1) * 1.25) + 256
    while got < limit and at < n - old:
        rows = grid.newest[at:min(at + chunk, n - old)]
        hit = rows[~stale[rows] & bbox_mask(table, bbox, rows)]
        found.append(hit)
        got += len(hit)
        at += chunk
        chunk *= 2
    top = (np.concatenate(found)[:limit] if found else np.zeros(0, dtype=np.int64)).astype(np.int64)
    if not len(fresh):  # the order read is the answer's order
        return clean, top
    return clean + len(fresh), newest_first(table, np.concatenate([top, fresh]), limit)


__all__ = ["Unsupported", "bbox_mask", "in_box", "mask", "newest_first", "newest_in_view", "select", "NULL"]
