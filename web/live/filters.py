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

from geoiot.documents import GEOFENCES, GEOHASH, GEOHASH_PRECISION
from geoiot.geohash_batch import encode_many
from web.params import WORLD, AllOf, AnyOf, BBox, Filter, InBox, InShape, IsNull, Like, Negation, OneOf, Range
from web.live.table import NULL, PRESENT, LiveTable


class Unsupported(ValueError):
    """A filter the mirror does not evaluate (a CQL2 spatial shape): the caller answers from elsewhere."""


def bbox_mask(table: LiveTable, bbox: BBox, rows: np.ndarray) -> np.ndarray:
    """Inclusive box on the position; a box whose left > right crosses the antimeridian."""
    if bbox == WORLD:
        return np.ones(len(rows), dtype=bool)
    lon, lat = table.lon[rows], table.lat[rows]
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
        raise Unsupported("spatial shapes are evaluated by Elasticsearch only")
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


__all__ = ["Unsupported", "bbox_mask", "mask", "select", "NULL"]
