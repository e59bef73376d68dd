"""Each track's newest document as columns: the mirror's store, pure (numpy, no I/O).

Why columns: a million documents as dicts cost several KB each; here a track is one row of numpy arrays (time,
position, every numeric attribute with a presence byte) and of dictionary codes (strings, booleans and lists
such as the fence set: each distinct value is stored once, a row holds its int32 code). The track id is the one
Python object per row (the dict ``track -> row``); deleted rows are reused. The geohash the documents carry is
not stored: it is the position's (geoiot.documents.GEOHASH_PRECISION), recomputed when answered; a document
whose geohash is not (or any value a column cannot hold, or a field outside the preset) keeps it in a small
per-row ``extras`` dict, which filters read as missing.

A spatial grid (:class:`Grid`) keeps the rows sorted by a coarse cell and newest first, rebuilt at most every
:data:`GRID_REFRESH` changes-seconds, plus the rows changed since; a view reads only the cells it overlaps,
counts the cells wholly inside it from the sort, and finds its newest rows by reading the newest-first order
until enough lie in it (web.live.filters.newest_in_view).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Hashable, Iterable, Sequence
from typing import Any

import numpy as np

from geoiot import live
from geoiot.documents import GEOHASH, GEOHASH_PRECISION, GEOMETRY, field_types
from geoiot.geohash_batch import encode_many
from geoiot.schema import Preset

INITIAL_ROWS = 1024
# Grid cells are GRID_DEG degrees square (about 250 m: a city view's cells are mostly wholly inside it, so its
# count needs exact checks only in its border cells, a few percent of its rows); a view more than
# GRID_MAX_RANGES cell rows tall (5 degrees) is checked row by row.
GRID_DEG = 0.0025
GRID_COLS = int(round(360 / GRID_DEG))
GRID_ROWS = int(round(180 / GRID_DEG))
GRID_MAX_RANGES = 2_000
CELL = np.int64  # a cell's code (GRID_COLS * GRID_ROWS of them)
NO_CELL = -1  # a row whose position is not a number (no box holds it but the world's)
NOT_BUILT = -2  # a row not in the last sort
# The grid is re-sorted when rows changed and the last sort is this many seconds old (or the changed rows
# outnumber a tenth of the table); meanwhile changed rows are read besides the sorted ones.
GRID_REFRESH = 1.0
NUMERIC = ("int", "float", "time")
FEATURE_CACHE = 50_000
ANSWER_MEMO_BYTES = 32 * 1024 * 1024
_MISSING = object()
ABSENT, PRESENT, NULL = 0, 1, 2


class Dictionary:
    """Distinct values of a column (strings, booleans, lists as tuples), each stored once, coded by position."""

    __slots__ = ("values", "plain", "codes")

    def __init__(self) -> None:
        self.values: list[Any] = []
        self.plain: list[Any] = []  # each value as JSON has it (lists as lists)
        self.codes: dict[Any, int] = {}

    def code(self, value: Any) -> int:
        key = (type(value), value)  # True and 1 are different values
        code = self.codes.get(key)
        if code is None:
            code = self.codes[key] = len(self.values)
            self.values.append(value)
            self.plain.append(_plain(value))
        return code

    def lookup(self, predicate: Any) -> np.ndarray:
        """A table of ``len(values) + 1`` booleans (the last, read by code -1 = missing, False): which values
        pass ``predicate``; index it with a code column to filter."""
        out = np.zeros(len(self.values) + 1, dtype=bool)
        for i, v in enumerate(self.values):
            if predicate(v):
                out[i] = True
        return out


def _hashable(value: Any) -> Any:
    return tuple(_hashable(v) for v in value) if isinstance(value, list) else value


def _plain(value: Any) -> Any:
    return [_plain(v) for v in value] if isinstance(value, tuple) else value


class Grid:
    """Two orders of the rows as of the last :meth:`rebuild`: by coarse cell (``cells``: the cell codes in
    that order, ``order``: the rows) and newest first (``newest``: the rows by time descending, then row
    descending; ``newest_time``: their times). Rows changed or removed since are ``stale`` (and in ``dirty``):
    their places in both orders are out of date, so readers take them from the table instead; ``row_cell``
    is each row's cell as sorted (NOT_BUILT: not in the sort)."""

    def __init__(self) -> None:
        self.cells = np.zeros(0, dtype=CELL)
        self.order = np.zeros(0, dtype=np.int32)
        self.newest = np.zeros(0, dtype=np.int32)
        self.newest_time = np.zeros(0, dtype=np.int64)
        self.row_cell = np.zeros(0, dtype=CELL)
        self.stale = np.zeros(0, dtype=bool)
        self.dirty: set[int] = set()
        self.built = 0.0

    def grow(self, capacity: int) -> None:
        old = len(self.stale)
        self.stale = np.concatenate([self.stale, np.zeros(capacity - old, dtype=bool)])
        self.row_cell = np.concatenate([self.row_cell, np.full(capacity - old, NOT_BUILT, dtype=CELL)])

    def mark(self, rows: Sequence[int]) -> None:
        """``rows`` changed (or were removed): read them from the table until the next rebuild."""
        self.dirty.update(rows)
        self.stale[list(rows)] = True

    @staticmethod
    def cell_of(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
        """Each position's cell code (row-major, so a cell row's cells are one range); NO_CELL for NaN."""
        with np.errstate(invalid="ignore"):
            ix = np.clip(np.floor((lon + 180.0) / GRID_DEG), 0, GRID_COLS - 1)
            iy = np.clip(np.floor((lat + 90.0) / GRID_DEG), 0, GRID_ROWS - 1)
            code = iy * GRID_COLS + ix
            return np.where(np.isnan(code), NO_CELL, code).astype(CELL)

    def rebuild(self, lon: np.ndarray, lat: np.ndarray, time_: np.ndarray, live_rows: np.ndarray) -> None:
        """Both orders as of now: the rows changed since the last sort merged into it (sorted themselves, then
        placed by binary search: linear in the rows), else (the first sort, or most rows changed) sorted anew."""
        changed = np.fromiter(self.dirty, dtype=np.int64, count=len(self.dirty))
        if len(self.order) and len(changed) <= len(self.order) // 4:
            self._merge(lon, lat, time_, live_rows, changed)
        else:
            rows = np.flatnonzero(live_rows).astype(np.int32)
            cells = self.cell_of(lon[rows], lat[rows])
            order = np.argsort(cells, kind="stable")
            self.cells, self.order = cells[order], rows[order]
            t = time_[rows]
            by_time = np.argsort(t, kind="stable")[::-1]  # rows ascending: equal times end up row descending
            self.newest, self.newest_time = rows[by_time], t[by_time]
            self.row_cell.fill(NOT_BUILT)
            self.row_cell[rows] = cells
        self.stale.fill(False)
        self.dirty.clear()
        self.built = time.monotonic()

    def _merge(self, lon: np.ndarray, lat: np.ndarray, time_: np.ndarray, live_rows: np.ndarray,
               changed: np.ndarray) -> None:
        added = np.sort(changed[live_rows[changed]]).astype(np.int32)  # ascending rows, as a full sort sees them
        cells = self.cell_of(lon[added], lat[added])
        keep = ~self.stale[self.order]
        by_cell = np.argsort(cells, kind="stable")
        at = np.searchsorted(self.cells[keep], cells[by_cell], "right")
        self.cells = np.insert(self.cells[keep], at, cells[by_cell])
        self.order = np.insert(self.order[keep], at, added[by_cell])
        # newest first is time descending, then row descending: merge in the reversed (ascending) order
        keep = ~self.stale[self.newest]
        old_rows, old_t = self.newest[keep][::-1], self.newest_time[keep][::-1]
        t = time_[added]
        by_time = np.lexsort((added, t))
        new_rows, new_t = added[by_time], t[by_time]
        # an added row goes after the kept rows older than it or as old and of a lower row
        at = np.searchsorted(old_t, new_t, "left")
        hi = np.searchsorted(old_t, new_t, "right")
        for k in np.flatnonzero(hi > at).tolist():  # equal times: place by row among them
            at[k] += int(np.searchsorted(old_rows[at[k]:hi[k]], new_rows[k]))
        self.newest = np.insert(old_rows, at, new_rows)[::-1].copy()
        self.newest_time = np.insert(old_t, at, new_t)[::-1].copy()
        self.row_cell[changed] = NOT_BUILT
        self.row_cell[added] = cells

    @staticmethod
    def _extent(min_lon: float, min_lat: float, max_lon: float, max_lat: float
                ) -> tuple[np.ndarray, list[tuple[int, int]]] | None:
        """The box's cell rows and its column spans (two across the antimeridian); None: too tall."""
        if any(math.isnan(v) for v in (min_lon, min_lat, max_lon, max_lat)):
            return None
        iy0, iy1 = (int(np.clip(math.floor((v + 90.0) / GRID_DEG), 0, GRID_ROWS - 1)) for v in (min_lat, max_lat))
        bounds = ([(min_lon, max_lon)] if min_lon <= max_lon else [(min_lon, 180.0), (-180.0, max_lon)])
        spans = []
        for lo, hi in bounds:
            ix0, ix1 = (int(np.clip(math.floor((v + 180.0) / GRID_DEG), 0, GRID_COLS - 1)) for v in (lo, hi))
            spans.append((ix0, ix1))
        if (iy1 - iy0 + 1) * len(spans) > GRID_MAX_RANGES:
            return None
        return np.arange(iy0, iy1 + 1, dtype=np.int64), spans

    def _rows_of(self, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
        lo = np.searchsorted(self.cells, starts, "left")
        hi = np.searchsorted(self.cells, ends, "left")
        parts = [self.order[a:b] for a, b in zip(lo.tolist(), hi.tolist()) if b > a]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)

    def candidates(self, min_lon: float, min_lat: float, max_lon: float, max_lat: float) -> np.ndarray | None:
        """Rows that may lie in the box (the caller checks them exactly); None: the box is too large, scan all."""
        extent = self._extent(min_lon, min_lat, max_lon, max_lat)
        if extent is None:
            return None
        iys, spans = extent
        base = iys * GRID_COLS
        starts = np.concatenate([base + ix0 for ix0, _ in spans])
        ends = np.concatenate([base + ix1 + 1 for _, ix1 in spans])
        found = self._rows_of(starts, ends)
        if self.dirty:
            dirty = np.fromiter(self.dirty, dtype=np.int32, count=len(self.dirty))
            return np.unique(np.concatenate([found, dirty]))
        return found

    def split(self, min_lon: float, min_lat: float, max_lon: float, max_lat: float
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """The box's cells as sorted: (inner, edge_rows) where ``inner`` are the code ranges ``[start, end)``
        (sorted, as two arrays) of the cells wholly inside the box, so every row sorted into them lies in it,
        and ``edge_rows`` the sorted rows of its border cells (to check exactly); None: the box is too large.

        Wholly inside holds because a cell code is a monotone function of the position: a position outside
        the box has a cell at or beyond the box's border cells."""
        extent = self._extent(min_lon, min_lat, max_lon, max_lat)
        if extent is None:
            return None
        iys, spans = extent
        base = iys * GRID_COLS
        middle = base[1:-1]  # cell rows strictly between the box's bottom and top rows
        ends_rows = base[[0, -1]] if len(base) > 1 else base
        in_starts, in_ends, e_starts, e_ends = [], [], [], []
        for ix0, ix1 in spans:
            e_starts.append(ends_rows + ix0)
            e_ends.append(ends_rows + ix1 + 1)
            if ix1 - ix0 >= 2:
                in_starts.append(middle + ix0 + 1)
                in_ends.append(middle + ix1)
                e_starts += [middle + ix0, middle + ix1]
                e_ends += [middle + ix0 + 1, middle + ix1 + 1]
            else:
                e_starts.append(middle + ix0)
                e_ends.append(middle + ix1 + 1)
        empty = np.zeros(0, dtype=np.int64)
        starts = np.concatenate(in_starts) if in_starts else empty
        ends = np.concatenate(in_ends) if in_ends else empty
        by_start = np.argsort(starts, kind="stable")
        edge = self._rows_of(np.concatenate(e_starts), np.concatenate(e_ends))
        return starts[by_start], ends[by_start], edge

    def count(self, starts: np.ndarray, ends: np.ndarray) -> int:
        """Sorted rows in the cell ranges ``[starts, ends)``."""
        return int((np.searchsorted(self.cells, ends, "left") - np.searchsorted(self.cells, starts, "left")).sum())

    @staticmethod
    def within(cells: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
        """Which ``cells`` lie in one of the sorted, disjoint ranges ``[starts, ends)``."""
        at = np.searchsorted(starts, cells, "right") - 1
        return (at >= 0) & (cells < ends[np.maximum(at, 0)]) if len(starts) else np.zeros(len(cells), dtype=bool)


class AnswerMemo:
    """Answers (bytes) by a key, valid for one version of the table: a new version empties it. At most
    ``max_bytes`` held, oldest dropped first."""

    def __init__(self, max_bytes: int = ANSWER_MEMO_BYTES) -> None:
        self.max_bytes, self.held, self.version = max_bytes, 0, -1
        self._entries: OrderedDict[Hashable, bytes] = OrderedDict()

    def get(self, version: int, key: Hashable) -> bytes | None:
        if version != self.version:
            return None
        return self._entries.get(key)

    def put(self, version: int, key: Hashable, answer: bytes) -> None:
        if version != self.version:
            self._entries.clear()
            self.held, self.version = 0, version
        if len(answer) > self.max_bytes or key in self._entries:
            return
        self._entries[key] = answer
        self.held += len(answer)
        while self.held > self.max_bytes:
            self.held -= len(self._entries.popitem(last=False)[1])


class LiveTable:
    """Each track's newest document (geoiot.live's rule: :func:`geoiot.live.newer`), as columns."""

    def __init__(self, preset: Preset, capacity: int = INITIAL_ROWS) -> None:
        self.preset = preset
        self.types = dict(field_types(preset))
        self.rows: dict[str, int] = {}
        self.tracks: list[str | None] = []
        self.free: list[int] = []
        self.capacity = 0
        self.time = np.zeros(0, dtype=np.int64)
        self.lon = np.zeros(0, dtype=np.float64)
        self.lat = np.zeros(0, dtype=np.float64)
        self.alive = np.zeros(0, dtype=bool)
        # numeric fields: values and a presence byte (ABSENT, PRESENT, NULL); the rest: dictionary codes
        skip = {preset.track, preset.time, GEOHASH, GEOMETRY}
        self.numeric = [n for n, k in self.types.items() if k in NUMERIC and n not in skip]
        self.coded = [n for n, k in self.types.items() if k not in NUMERIC and n not in skip]
        self.values: dict[str, np.ndarray] = {}
        self.present: dict[str, np.ndarray] = {}
        self.codes: dict[str, np.ndarray] = {}
        self.dictionaries: dict[str, Dictionary] = {n: Dictionary() for n in self.coded}
        self.has_geohash = np.zeros(0, dtype=bool)
        self.extras: dict[int, dict[str, Any]] = {}
        self._known = frozenset((*self.types, preset.track, preset.time, GEOHASH, GEOMETRY))
        self.grid = Grid()
        # each row's /api/latest feature as JSON with a trailing comma (web.live.answers joins them), made when
        # first answered, dropped when the row changes;
        # bounded (cleared when full), so it costs at most FEATURE_CACHE features
        self.feature_json: dict[int, bytes] = {}
        self.version = 0  # bumped by every change (answer caches may key on it)
        self.answers = AnswerMemo()  # /api/latest answers of this version, by the rows they hold
        self._grow(capacity)

    def _grow(self, capacity: int) -> None:
        old = self.capacity

        def grow(a: np.ndarray, fill: Any) -> np.ndarray:
            out = np.full(capacity, fill, dtype=a.dtype)
            out[:old] = a[:old]
            return out

        self.time = grow(self.time, 0)
        self.lon, self.lat = grow(self.lon, 0.0), grow(self.lat, 0.0)
        self.alive = grow(self.alive, False)
        self.has_geohash = grow(self.has_geohash, False)
        for n in self.numeric:
            kind = self.types[n]
            self.values[n] = grow(self.values.get(n, np.zeros(0, np.float64 if kind == "float" else np.int64)), 0)
            self.present[n] = grow(self.present.get(n, np.zeros(0, np.int8)), ABSENT)
        for n in self.coded:
            self.codes[n] = grow(self.codes.get(n, np.zeros(0, np.int32)), -1)
        self.grid.grow(capacity)
        self.tracks.extend([None] * (capacity - old))
        self.free.extend(range(capacity - 1, old - 1, -1))
        self.capacity = capacity

    def __len__(self) -> int:
        return len(self.rows)

    def apply_batch(self, tracks: Sequence[str], docs: Sequence[dict[str, Any] | None]) -> int:
        """Records in the order read, as applying them one by one would take them, filled column by column
        (a fetch at a time: the start reads a million records). Returns how many changed the table."""
        time_field = self.preset.time
        last: dict[str, int] = {}  # track -> its record in the batch that wins (newest, equal: the later one)
        tombs: set[str] = set()  # tracks with a tombstone in the batch (a document after one starts afresh)
        for i, (track, doc) in enumerate(zip(tracks, docs)):
            if doc is None:
                tombs.add(track)
            j = last.get(track)
            if j is None or doc is None or docs[j] is None or live.newer(doc[time_field], docs[j][time_field]):
                last[track] = i
        changed = 0
        put_tracks: list[str] = []
        put_docs: list[dict[str, Any]] = []
        put_pos: list[tuple[float, float]] = []
        rows_get, held = self.rows.get, self.time
        for track, i in last.items():
            doc = docs[i]
            row = rows_get(track)
            if doc is None:
                if row is not None:
                    self._remove(track, row)
                    changed += 1
                continue
            if row is not None and track in tombs:  # removed, then this document: held as a new track
                self._remove(track, row)
                changed += 1
                row = None
            if row is not None and not live.newer(doc[time_field], int(held[row])):
                continue
            position = _position(self.preset, doc)
            if position is None:  # newer, but not mappable: no longer answered, as Elasticsearch would not
                if row is not None:
                    self._remove(track, row)
                    changed += 1
                continue
            put_tracks.append(track)
            put_docs.append(doc)
            put_pos.append(position)
        if put_docs:
            self._fill_many(put_tracks, put_docs, put_pos)
            changed += len(put_docs)
        return changed

    def _remove(self, track: str, row: int) -> None:
        del self.rows[track]
        self.tracks[row] = None
        self.alive[row] = False
        self.extras.pop(row, None)
        self.feature_json.pop(row, None)
        self.free.append(row)
        self.grid.mark((row,))
        self.version += 1

    def _rows_for(self, tracks: list[str]) -> np.ndarray:
        out = np.empty(len(tracks), dtype=np.int64)
        rows = self.rows
        for k, track in enumerate(tracks):
            row = rows.get(track)
            if row is None:
                if not self.free:
                    self._grow(self.capacity * 2)
                row = self.free.pop()
                rows[track] = row
                self.tracks[row] = track
            out[k] = row
        return out

    def _fill_many(self, tracks: list[str], docs: list[dict[str, Any]], positions: list[tuple[float, float]]) -> None:
        rows = self._rows_for(tracks)
        n = len(docs)
        self.alive[rows] = True
        self.time[rows] = [d[self.preset.time] for d in docs]
        lons = np.fromiter((p[0] for p in positions), dtype=np.float64, count=n)
        lats = np.fromiter((p[1] for p in positions), dtype=np.float64, count=n)
        self.lon[rows], self.lat[rows] = lons, lats
        extras: list[dict[str, Any] | None] = [None] * n
        for name in self.numeric:
            kind = self.types[name]
            vals = [d.get(name, _MISSING) for d in docs]
            kinds = set(map(type, vals))
            if kinds <= ({int} if kind != "float" else {int, float}):
                try:
                    self.values[name][rows] = np.asarray(vals, dtype=self.values[name].dtype)
                    self.present[name][rows] = PRESENT
                    continue
                except OverflowError:
                    pass
            if kinds == {type(None)}:
                self.present[name][rows] = NULL
                continue
            col, pres = self.values[name], self.present[name]
            for k, v in enumerate(vals):
                row = rows[k]
                if v is _MISSING:
                    pres[row] = ABSENT
                elif v is None:
                    pres[row] = NULL
                elif (type(v) is int and -(2**63) <= v < 2**63) or (kind == "float" and type(v) is float):
                    col[row] = v
                    pres[row] = PRESENT
                else:
                    pres[row] = ABSENT
                    extra = extras[k] = extras[k] or {}
                    extra[name] = v
        for name in self.coded:
            code = self.dictionaries[name].code
            self.codes[name][rows] = [-1 if v is _MISSING else code(v if type(v) is not list else _hashable(v))
                                      for v in (d.get(name, _MISSING) for d in docs)]
        known = self._known
        cells = [d.get(GEOHASH) for d in docs]
        self.has_geohash[rows] = [c is not None for c in cells]
        computed = encode_many(lats, lons, GEOHASH_PRECISION)
        for k, d in enumerate(docs):
            if not d.keys() <= known:
                extra = extras[k] = extras[k] or {}
                extra.update((key, v) for key, v in d.items() if key not in known)
            if cells[k] is not None and cells[k] != computed[k]:
                extra = extras[k] = extras[k] or {}
                extra[GEOHASH] = cells[k]
        pop, keep = self.feature_json.pop, self.extras
        changed = rows.tolist()
        self.grid.mark(changed)
        for k, row in enumerate(changed):
            pop(row, None)
            if extras[k]:
                keep[row] = extras[k]
            else:
                keep.pop(row, None)
        self.version += 1

    def refresh_grid(self, now: float | None = None) -> None:
        """Re-sort the grid when rows changed and it is due (see :data:`GRID_REFRESH`)."""
        grid = self.grid
        if not grid.dirty:
            return
        now = time.monotonic() if now is None else now
        if now - grid.built >= GRID_REFRESH or len(grid.dirty) > max(1024, len(self.rows) // 10):
            grid.rebuild(self.lon, self.lat, self.time, self.alive)

    def documents(self, rows: Sequence[int] | np.ndarray) -> list[dict[str, Any]]:
        """The documents of ``rows`` as the live topic carried them (fields in the preset's order)."""
        rows = np.asarray(rows, dtype=np.int64)
        preset = self.preset
        cols: list[tuple[str, list[Any], list[int]]] = []
        for n in self.numeric:
            cols.append((n, self.values[n][rows].tolist(), self.present[n][rows].tolist()))
        for n in self.coded:
            vals, codes = self.dictionaries[n].plain, self.codes[n][rows].tolist()
            cols.append((n, [None if c < 0 else vals[c] for c in codes],
                         [ABSENT if c < 0 else PRESENT for c in codes]))
        lons, lats, times = self.lon[rows].tolist(), self.lat[rows].tolist(), self.time[rows].tolist()
        with_hash = self.has_geohash[rows]
        cells = encode_many(self.lat[rows], self.lon[rows], GEOHASH_PRECISION) if with_hash.any() else None
        out = []
        for i, row in enumerate(rows.tolist()):
            doc: dict[str, Any] = {preset.track: self.tracks[row], preset.time: times[i],
                                   GEOMETRY: {"lon": lons[i], "lat": lats[i]}}
            for name, values, present in cols:
                if present[i] == PRESENT:
                    doc[name] = values[i]
                elif present[i] == NULL:
                    doc[name] = None
            if cells is not None and with_hash[i]:
                doc[GEOHASH] = cells[i]
            extra = self.extras.get(row)
            if extra:
                doc.update(extra)
            out.append(doc)
        return out

    def all_rows(self) -> np.ndarray:
        return np.flatnonzero(self.alive[:self.capacity])

    def rows_in(self, bbox: Any) -> np.ndarray:
        """Live rows that may lie in ``bbox`` (a web.params.BBox): the grid's candidates, else every row."""
        self.refresh_grid()
        found = self.grid.candidates(bbox.min_lon, bbox.min_lat, bbox.max_lon, bbox.max_lat)
        if found is None:
            return self.all_rows()
        return found[self.alive[found]]


def _position(preset: Preset, doc: dict[str, Any]) -> tuple[float, float] | None:
    """The document's (lon, lat), as web.geojson.position reads it: its geo_point, else the preset's fields."""
    g = doc.get(GEOMETRY)
    if isinstance(g, dict) and "lon" in g and "lat" in g:
        lon, lat = g["lon"], g["lat"]
    else:
        lon, lat = doc.get(preset.lon), doc.get(preset.lat)
    if type(lon) in (int, float) and type(lat) in (int, float):
        return float(lon), float(lat)
    return None


def apply_records(table: LiveTable, records: Iterable[tuple[bytes | None, bytes | None]], time_field: str
                  ) -> tuple[int, int]:
    """Apply live records (key, value) in order; (applied, skipped: a key or value not of geoiot.live's
    contract)."""
    tracks: list[str] = []
    docs: list[dict[str, Any] | None] = []
    skipped = 0
    for key, value in records:
        if key is None:
            skipped += 1
            continue
        try:
            track = live.track_of(key)
            doc = None if value is None else live.document(value, time_field)
        except ValueError:
            skipped += 1
            continue
        tracks.append(track)
        docs.append(doc)
    return table.apply_batch(tracks, docs), skipped
