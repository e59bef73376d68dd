"""Geofences: which fences contain each point of a batch, vectorised with shapely 2.

A point on a fence's boundary counts as inside (``intersects`` semantics). At load time the fences'
area is cut into a uniform grid; each cell lists the fences that cover it entirely and those whose
boundary crosses it (decided with shapely on slightly enlarged cell boxes, so float rounding of a
point's cell cannot give a wrong answer). A batch is then answered with numpy only: cell of every
point, covering fences by lookup, and for the (point, fence) pairs in boundary cells an exact crossing
test on the few boundary segments of the point's grid row (:class:`Segments`), with one vectorised
prepared ``shapely.intersects_xy`` call for the pairs it leaves open (points on or next to a boundary).
No Python loop runs over fences or points at query time. A change of a few fences is merged into an
index (:meth:`Geofences.updated`) rather than building it anew.

Why not an STRtree query per batch: it needs a shapely Point per position and evaluates the predicate
for every bounding-box candidate, which measured several times slower than the grid
(``python -m bench.geofence_throughput`` keeps the STRtree as a baseline; figures in docs/BENCHMARKS.md).
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
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
    geometries: np.ndarray  # shapely geometries (prepared), parallel to ids
    bounds: tuple[float, float, float, float]  # grid extent: union bbox (minx, miny, maxx, maxy)
    _rank: np.ndarray = field(repr=False)  # position of each fence id in sorted order
    _grid: "_Grid | None" = field(repr=False, default=None)
    _singles: np.ndarray = field(repr=False, default_factory=lambda: _singles(()))  # (id,) of each fence
    # Live fences (agents.worker.fence_follower): each fence's version, and the version of the tombstone of each fence
    # deleted; empty for fences from a file. Alerts carry them (:meth:`describe`).
    versions: Mapping[str, int] = field(repr=False, default_factory=dict)
    removed: Mapping[str, int] = field(repr=False, default_factory=dict)

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
    def from_geometries(cls, ids: Sequence[str], geometries: Sequence[Any], frame: "Frame | None" = None,
                        cells: Sequence["FenceCells | None"] = ()) -> "Geofences":
        """The index of these fences. ``frame``: a grid frame to keep when it covers every fence (else one is
        fitted); ``cells``: the cells of fences already computed in that frame (None where not), parallel to
        ``ids``, so that a rebuild after a change computes only the changed fences' cells."""
        array = np.empty(len(geometries), dtype=object)
        array[:] = list(geometries)
        shapely.prepare(array)
        order = np.argsort(np.asarray(ids, dtype=object), kind="stable") if ids else np.empty(0, dtype=np.intp)
        rank = np.empty(len(ids), dtype=np.intp)
        rank[order] = np.arange(len(ids))
        if len(array):
            b = shapely.bounds(array)
            bounds = (float(b[:, 0].min()), float(b[:, 1].min()), float(b[:, 2].max()), float(b[:, 3].max()))
            if frame is None or not frame.suits(len(array), bounds):
                frame, cells = Frame.fit(b, bounds), ()
            grid = _Grid.build(array, frame, cells)
        else:
            bounds, grid = (np.inf, np.inf, -np.inf, -np.inf), None
        return cls(tuple(ids), array, bounds, rank, grid, _singles(ids))

    def updated(self, changed: Mapping[str, Any], gone: Collection[str]) -> "Geofences | None":
        """This index with the fences of ``changed`` (id -> shapely geometry) added or replaced and those of ``gone``
        removed, in the same frame: only those fences are placed, the rest is renumbered and merged with numpy
        (little Python work, so it can run in a thread beside the batches: the numpy calls let the GIL go); the
        unchanged fences' geometries are shared with this index, and only the new ones are touched by shapely.
        None when the frame no longer suits the fences (then build them anew with :meth:`from_geometries`)."""
        if self._grid is None:
            return None
        position = self._position
        if not gone and all(fid in position for fid in changed):  # same fences, same numbering: a shape changed
            ids, rank, singles = self.ids, self._rank, self._singles
            remap = np.arange(len(ids))
            remap[[position[fid] for fid in changed]] = -1
        else:
            ids = tuple(sorted((set(self.ids) - set(gone)) | set(changed)))
            if not ids:
                return None
            position = {fid: k for k, fid in enumerate(ids)}
            remap = np.array([-1 if fid in changed else position.get(fid, -1) for fid in self.ids], dtype=np.intp)
            kept = np.flatnonzero(remap >= 0)
            if np.any(np.diff(remap[kept]) <= 0):  # ids not in sorted order (a file's): the tables cannot be merged
                return None
            rank, singles = np.arange(len(ids)), _singles(ids)
        fresh = np.array([position[fid] for fid in changed], dtype=np.intp)
        new = np.empty(len(changed), dtype=object)
        new[:] = list(changed.values())
        shapely.prepare(new)
        kept = np.flatnonzero(remap >= 0)
        geoms = np.empty(len(ids), dtype=object)
        geoms[remap[kept]] = self.geometries[kept]
        geoms[fresh] = new
        b = np.empty((len(ids), 4))
        b[remap[kept]] = self._grid.boxes[kept]
        b[fresh] = shapely.bounds(new)
        bounds = (float(b[:, 0].min()), float(b[:, 1].min()), float(b[:, 2].max()), float(b[:, 3].max()))
        if not self._grid.frame.suits(len(ids), bounds):
            return None
        grid = self._grid.updated(remap, fresh, new, b)
        return Geofences(ids, geoms, bounds, rank, grid, singles, self.versions, self.removed)

    @cached_property
    def _position(self) -> dict[str, int]:
        return {fid: k for k, fid in enumerate(self.ids)}

    @property
    def frame(self) -> "Frame | None":
        return None if self._grid is None else self._grid.frame

    @property
    def cells(self) -> tuple["FenceCells", ...]:
        """Each fence's cells in :attr:`frame` (to pass to the next :meth:`from_geometries`)."""
        return () if self._grid is None else self._grid.cells

    @classmethod
    def load(cls, path: str | Path) -> "Geofences":
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise GeofenceError(f"cannot read geofences {path}: {exc.strerror}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise GeofenceError(f"{path}: not valid JSON: {exc}") from None
        return cls.from_geojson(data, str(path))

    def describe(self, alert: dict[str, Any]) -> dict[str, Any]:
        """An enter/exit alert with the fence's ``version`` (None for a file's fences) and ``removed``: True on
        the exit from a fence that was deleted (the track's first report after the deletion)."""
        fence = alert["fence"]
        version = self.versions.get(fence)
        removed = version is None and fence in self.removed
        alert["version"] = self.removed[fence] if removed else version
        alert["removed"] = removed
        return alert

    def pairs(self, lon: np.ndarray, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(point index, fence index) of every point inside (or on the boundary of) a fence."""
        if self._grid is None:
            empty = np.empty(0, dtype=np.intp)
            return empty, empty
        lon = np.asarray(lon, dtype=np.float64)
        lat = np.asarray(lat, dtype=np.float64)
        return self._grid.pairs(self.geometries, lon, lat)

    def containing(self, lon: Sequence[float] | np.ndarray, lat: Sequence[float] | np.ndarray) -> list[tuple[str, ...]]:
        """For each point, the sorted ids of the fences containing it (boundary included)."""
        n = len(lon)
        if not len(self.ids) or n == 0:
            return [NO_FENCES] * n
        pi, fi = self.pairs(np.asarray(lon), np.asarray(lat))
        if pi.size == 0:
            return [NO_FENCES] * n
        order = np.argsort(pi * len(self.ids) + self._rank[fi])  # by point, then fence id (pairs are unique)
        pi, fi = pi[order], fi[order]
        starts = np.flatnonzero(np.r_[True, pi[1:] != pi[:-1]])
        ends = np.r_[starts[1:], pi.size]
        single = (ends - starts) == 1
        out = np.empty(n, dtype=object)
        out.fill(NO_FENCES)
        # most points are in at most one fence: shared tuples, no allocation, placed by one numpy assignment
        out[pi[starts[single]]] = self._singles[fi[starts[single]]]
        ids = self.ids
        for s, e in zip(starts[~single].tolist(), ends[~single].tolist()):
            out[int(pi[s])] = tuple(ids[j] for j in fi[s:e].tolist())
        return out.tolist()


def _singles(ids: Sequence[str]) -> np.ndarray:
    """(id,) of each fence, as an object array (gathered with numpy by :meth:`Geofences.containing`)."""
    return np.fromiter(((i,) for i in ids), dtype=object, count=len(ids))


MAX_CELLS = 1 << 20
CELLS_PER_FENCE_EXTENT = 8  # cell edge = median fence extent / this


def _csr(cells: np.ndarray, fences: np.ndarray, ncells: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fences by cell (pointers, cell and fence of each entry); ``fences`` is in ascending order (cells listed
    fence by fence), so a stable sort of the cells keeps each cell's fences ascending (cheaper than sorting on
    both keys)."""
    order = np.argsort(cells, kind="stable")
    cells = cells[order]
    return _pointers(cells, ncells), cells, fences[order].astype(np.intp)


def _pointers(keys: np.ndarray, n: int) -> np.ndarray:
    """CSR pointers of sorted ``keys`` in [0, n): the entries of key j are ptr[j]:ptr[j + 1] (32-bit where they
    fit: half the memory the per-point lookups go through)."""
    ptr = np.zeros(n + 1, dtype=np.int32 if keys.size < 2**31 else np.int64)
    np.cumsum(np.bincount(keys, minlength=n), out=ptr[1:])
    return ptr


def _expand(ptr: np.ndarray, idx: np.ndarray, cells: np.ndarray, points: np.ndarray,
            rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """All (point, fence, point's row if ``rows``) listed for the points' cells (CSR gather, no Python loop)."""
    start = ptr[cells]
    counts = ptr[cells + 1] - start
    keep = counts > 0
    if not keep.any():
        empty = np.empty(0, dtype=np.intp)
        return empty, empty, empty
    start, counts, points = start[keep].astype(np.int64), counts[keep].astype(np.int64), points[keep]
    return np.repeat(points, counts), idx[_ranges(start, counts)], None if rows is None else np.repeat(rows[keep], counts)


FenceCells = tuple[np.ndarray, np.ndarray]  # (cells the fence covers entirely, cells its boundary crosses)


@dataclass(frozen=True)
class Frame:
    """Where the grid lies and how it is cut: the extent, the cell size and count, the box enlargement."""

    minx: float
    miny: float
    dx: float
    dy: float
    nx: int
    ny: int
    eps: float
    fences: int  # fitted for this many (kept while the count stays within a factor 2)

    @classmethod
    def fit(cls, b: np.ndarray, bounds: tuple[float, float, float, float]) -> "Frame":
        """The frame for fences of bounds ``b`` (one row each) whose union bbox is ``bounds``."""
        minx, miny, maxx, maxy = bounds
        extent = float(np.median(np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1])))
        w, h = max(maxx - minx, 1e-9), max(maxy - miny, 1e-9)
        cell = max(extent / CELLS_PER_FENCE_EXTENT, 1e-9)
        nx, ny = max(1, math.ceil(w / cell)), max(1, math.ceil(h / cell))
        if nx * ny > MAX_CELLS:
            scale = math.sqrt(nx * ny / MAX_CELLS)
            nx, ny = max(1, int(nx / scale)), max(1, int(ny / scale))
        dx, dy = w / nx, h / ny
        eps = 1e-9 * max(1.0, abs(minx), abs(maxx), abs(miny), abs(maxy)) + 1e-6 * min(dx, dy)
        return cls(minx, miny, dx, dy, nx, ny, eps, len(b))

    def suits(self, n: int, bounds: tuple[float, float, float, float]) -> bool:
        """Whether ``n`` fences of union bbox ``bounds`` may keep this frame (it covers them, sized for about n)."""
        minx, miny, maxx, maxy = bounds
        tol = self.eps  # nx * dx may round below the width the frame was fitted to
        return (self.fences / 2 <= n <= self.fences * 2 and minx >= self.minx - tol and miny >= self.miny - tol
                and maxx <= self.minx + self.nx * self.dx + tol and maxy <= self.miny + self.ny * self.dy + tol)

    def rows(self, y: np.ndarray) -> np.ndarray:
        """The grid row of each latitude (clipped to the grid): one monotonic formula for points and segments."""
        return np.clip(((y - self.miny) / self.dy).astype(np.int64), 0, self.ny - 1)

    def cells_of(self, geom: Any, gb: np.ndarray) -> FenceCells:
        """The cells ``geom`` (of bounds ``gb``) covers entirely and those its boundary crosses, decided on cell
        boxes enlarged by ``eps``."""
        minx, miny, dx, dy, nx, ny, eps = self.minx, self.miny, self.dx, self.dy, self.nx, self.ny, self.eps
        gx0, gy0, gx1, gy1 = gb
        ix0, ix1 = max(0, int((gx0 - minx) / dx) - 1), min(nx - 1, int((gx1 - minx) / dx) + 1)
        iy0, iy1 = max(0, int((gy0 - miny) / dy) - 1), min(ny - 1, int((gy1 - miny) / dy) + 1)
        ix, iy = np.meshgrid(np.arange(ix0, ix1 + 1), np.arange(iy0, iy1 + 1), indexing="ij")
        ix, iy = ix.ravel(), iy.ravel()
        boxes = shapely.box(minx + ix * dx - eps, miny + iy * dy - eps,
                            minx + (ix + 1) * dx + eps, miny + (iy + 1) * dy + eps)
        touch = shapely.intersects(geom, boxes)
        full = touch & shapely.contains(geom, boxes)
        cells = ix * ny + iy
        return cells[full], cells[touch & ~full]


@dataclass(frozen=True)
class _Grid:
    frame: Frame
    cells: tuple[FenceCells, ...]  # per fence, in the frame
    full_ptr: np.ndarray
    full_cell: np.ndarray
    full_idx: np.ndarray
    edge_ptr: np.ndarray
    edge_cell: np.ndarray
    edge_idx: np.ndarray
    segments: "Segments"
    boxes: np.ndarray  # each fence's bounds (minx, miny, maxx, maxy)

    @classmethod
    def build(cls, geoms: np.ndarray, frame: Frame, known: Sequence[FenceCells | None] = ()) -> "_Grid":
        b = shapely.bounds(geoms)
        cells = tuple(known[k] if k < len(known) and known[k] is not None else frame.cells_of(geom, b[k])
                      for k, geom in enumerate(geoms))
        full_c = np.concatenate([c[0] for c in cells])
        edge_c = np.concatenate([c[1] for c in cells])
        full_f = np.repeat(np.arange(len(cells)), [c[0].size for c in cells])
        edge_f = np.repeat(np.arange(len(cells)), [c[1].size for c in cells])
        ncells = frame.nx * frame.ny
        return cls(frame, cells, *_csr(full_c, full_f, ncells), *_csr(edge_c, edge_f, ncells), Segments.of(geoms, frame),
                   b)

    def updated(self, remap: np.ndarray, fresh: np.ndarray, geoms: np.ndarray, boxes: np.ndarray) -> "_Grid":
        """This grid with fence k renumbered ``remap[k]`` (dropped where -1) and the fences ``geoms`` placed as
        fences ``fresh`` (``boxes``: the bounds of every fence, new numbering): only the new fences are placed; the tables are merged with numpy
        in time linear in their size (renumbering keeps their order, see :func:`_merge`)."""
        frame, n = self.frame, len(remap) - int(np.count_nonzero(remap < 0)) + len(fresh)
        placed = [frame.cells_of(g, b) for g, b in zip(geoms, boxes[fresh])]
        if n == len(self.cells) and np.array_equal(remap[remap >= 0], np.flatnonzero(remap >= 0)):
            cells: list[FenceCells | None] = list(self.cells)  # the same numbering: only the fresh fences' cells
        else:
            cells = [None] * n
            for k, c in zip(remap.tolist(), self.cells):
                if k >= 0:
                    cells[k] = c
        for k, c in zip(fresh.tolist(), placed):
            cells[k] = c
        tables = []
        ncells = frame.nx * frame.ny
        for side, cell, idx in ((0, self.full_cell, self.full_idx), (1, self.edge_cell, self.edge_idx)):
            old_f = remap[idx]
            new_c = np.concatenate([np.empty(0, dtype=np.int64)] + [c[side] for c in placed]).astype(np.int64)
            new_f = np.repeat(fresh, [c[side].size for c in placed]).astype(np.intp)
            cell, idx = _merge(cell * n + old_f, old_f >= 0, new_c * n + new_f, [(cell, new_c), (old_f, new_f)])
            tables += [_pointers(cell, ncells), cell, idx]
        segments = self.segments.updated(remap, n, fresh, Segments.of(geoms, frame), frame.ny)
        return _Grid(frame, tuple(cells), *tables, segments, boxes)  # type: ignore[arg-type]

    def pairs(self, geoms: np.ndarray, lon: np.ndarray, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        f = self.frame
        fx = (lon - f.minx) / f.dx
        fy = (lat - f.miny) / f.dy
        # A point up to one cell outside the extent may still touch an enlarged edge cell.
        near = np.flatnonzero((fx >= -1e-6) & (fx <= f.nx + 1e-6) & (fy >= -1e-6) & (fy <= f.ny + 1e-6))
        if near.size == 0:
            return near, near
        ix = np.clip(fx[near].astype(np.int64), 0, f.nx - 1)
        iy = f.rows(lat[near])
        cells = ix * f.ny + iy
        numpy_test = len(geoms) >= NUMPY_TEST_FENCES  # few fences: shapely's structures stay in the caches
        pf, ff, _ = _expand(self.full_ptr, self.full_idx, cells, near)
        pe, fe, re = _expand(self.edge_ptr, self.edge_idx, cells, near, iy if numpy_test else None)
        if pe.size and not numpy_test:
            ok = shapely.intersects_xy(geoms[fe], lon[pe], lat[pe])
            pe, fe = pe[ok], fe[ok]
        elif pe.size:
            ok = self.segments.intersects(lon[pe], lat[pe], fe, re)
            slow = np.flatnonzero(ok < 0)
            if slow.size:
                ok[slow] = shapely.intersects_xy(geoms[fe[slow]], lon[pe[slow]], lat[pe[slow]])
            ok = ok.astype(bool)
            pe, fe = pe[ok], fe[ok]
        return np.concatenate([pf, pe]), np.concatenate([ff, fe])


NUMPY_TEST_FENCES = 3000  # from this many fences on, boundary cells are tested in numpy (bench.geofence_throughput)
MAX_SEGMENTS = 256  # fences with more boundary segments are tested with shapely only
ORIENT_ERROR = 1e-15  # relative error bound of the float orientation test (Shewchuk's ccwerrboundA is 3.3e-16)


def _merge(old_key: np.ndarray, keep: np.ndarray, new_key: np.ndarray,
           columns: Sequence[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
    """The columns of a table sorted by key, its rows where ``keep`` and the new rows merged in order: inserted
    at their searchsorted positions (linear time, no sort of the whole table). ``old_key`` is computed with the
    new numbering, and keeps the kept rows in order."""
    order = np.argsort(new_key, kind="stable")
    pos = np.searchsorted(old_key[keep], new_key[order], side="right")
    return [np.insert(old[keep], pos, new[order]) for old, new in columns]


def _ranges(lo: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """lo[0], lo[0] + 1, .. (counts[0] values), then lo[1], ..: consecutive runs, no Python loop."""
    total = int(counts.sum())
    return np.repeat(lo - (np.cumsum(counts) - counts), counts) + np.arange(total)


@dataclass(frozen=True)
class Segments:
    """The boundary segments (every ring) of each fence with at most :data:`MAX_SEGMENTS` of them, listed by fence
    and grid row (a segment in every row its y-range meets): an exact point-in-fence test in numpy for the
    (point, fence) pairs of boundary cells, which reads only the few segments of the point's row.

    Shapely's prepared test touches each fence's GEOS structures, scattered in memory, and its cost per pair grows
    with the number of fences; these arrays are compact. The test counts crossings of a ray to the east (even-odd
    over all rings: the interior of a valid polygon or multipolygon), a segment's side taken from a float
    orientation determinant only where it exceeds its error bound; a pair with any doubtful segment (a point on
    or very near the boundary) is left to shapely, so every answer is the one shapely gives. Rows are computed
    by one monotonic formula (:meth:`Frame.rows`), so a point's row lies within the rows of any segment whose
    y-range holds it."""

    small: np.ndarray  # per fence: tested here
    row0: np.ndarray  # per fence: its first row
    nrows: np.ndarray  # per fence: its number of rows (0 when not tested here)
    base: np.ndarray  # per fence: its first band (fence, row) in ptr
    ptr: np.ndarray  # entries of band j: ptr[j]:ptr[j + 1]
    fence: np.ndarray  # per entry (sorted by fence, then row): a segment in one row
    row: np.ndarray
    ax: np.ndarray
    ay: np.ndarray
    bx: np.ndarray
    by: np.ndarray

    @classmethod
    def of(cls, geoms: np.ndarray, frame: "Frame") -> "Segments":
        n = len(geoms)
        parts, part_fence = shapely.get_parts(geoms, return_index=True)
        rings, ring_part = shapely.get_rings(parts, return_index=True)
        xy, ring = shapely.get_coordinates(rings, return_index=True)
        same = ring[1:] == ring[:-1]  # a segment joins two consecutive vertices of one ring
        fence = part_fence[ring_part[ring[:-1][same]]]
        count = np.bincount(fence, minlength=n)
        small = (count > 0) & (count <= MAX_SEGMENTS)
        keep = small[fence]
        fence = fence[keep]
        a, b = xy[:-1][same][keep], xy[1:][same][keep]
        down = a[:, 1] > b[:, 1]  # each segment upward (a below b): the crossing test then needs one case
        a[down], b[down] = b[down], a[down].copy()
        lo = frame.rows(np.minimum(a[:, 1], b[:, 1]))
        hi = frame.rows(np.maximum(a[:, 1], b[:, 1]))
        row0 = np.full(n, frame.ny, dtype=np.int64)
        row1 = np.full(n, -1, dtype=np.int64)
        np.minimum.at(row0, fence, lo)
        np.maximum.at(row1, fence, hi)
        nrows = np.maximum(row1 - row0 + 1, 0)
        row0 = np.where(nrows > 0, row0, 0)
        span = hi - lo + 1
        seg = np.repeat(np.arange(len(fence)), span)
        row = _ranges(lo, span)
        order = np.lexsort((row, fence[seg]))
        seg, row = seg[order], row[order]
        return cls.assemble(small, row0, nrows, fence[seg], row, a[seg, 0], a[seg, 1], b[seg, 0], b[seg, 1])

    @classmethod
    def assemble(cls, small: np.ndarray, row0: np.ndarray, nrows: np.ndarray, fence: np.ndarray, *entries: np.ndarray
                 ) -> "Segments":
        """From the per-fence arrays and the entries (fence, row, ax, ay, bx, by) sorted by fence, then row."""
        base = np.zeros(len(small), dtype=np.int64)
        np.cumsum(nrows[:-1], out=base[1:])
        row = entries[0]
        band = base[fence] + row - row0[fence]
        ptr = np.zeros(int(nrows.sum()) + 1, dtype=np.int64)
        np.cumsum(np.bincount(band, minlength=ptr.size - 1), out=ptr[1:])
        return cls(small, row0, nrows, base, ptr, fence, *entries)

    def updated(self, remap: np.ndarray, n: int, fresh: np.ndarray, part: "Segments", ny: int) -> "Segments":
        """These segments with fence k renumbered ``remap[k]`` (dropped where -1) and those of ``part`` (fences
        numbered ``fresh``) added: merged in linear time, as :meth:`_Grid.updated`."""
        kept = np.flatnonzero(remap >= 0)
        per_fence = []
        for mine, theirs in ((self.small, part.small), (self.row0, part.row0), (self.nrows, part.nrows)):
            out = np.zeros(n, dtype=mine.dtype)
            out[remap[kept]] = mine[kept]
            out[fresh] = theirs
            per_fence.append(out)
        old_f = remap[self.fence]
        new_f = fresh[part.fence]
        cols = _merge(old_f * ny + self.row, old_f >= 0, new_f * ny + part.row,
                      [(old_f, new_f)] + [(getattr(self, c), getattr(part, c)) for c in ("row", "ax", "ay", "bx", "by")])
        return Segments.assemble(*per_fence, *cols)

    def intersects(self, x: np.ndarray, y: np.ndarray, fence: np.ndarray, row: np.ndarray) -> np.ndarray:
        """For each pair (point (x, y) in grid row ``row``, fence): 1 inside or on the boundary, 0 outside, -1 left
        to shapely."""
        out = self.small[fence].astype(np.int8) - 1  # a small fence outside its rows: the point is outside
        if self.ptr.size == 1:
            return out
        rel = row - self.row0[fence]
        inrows = (rel >= 0) & (rel < self.nrows[fence])
        band = np.where(inrows, self.base[fence] + rel, 0)
        start = self.ptr[band]
        counts = np.where(inrows, self.ptr[band + 1] - start, 0)
        total = int(counts.sum())
        if total == 0:
            return out
        pair = np.repeat(np.arange(fence.size), counts)
        seg = _ranges(start, counts)
        px, py = x[pair], y[pair]
        dly, dry = self.ay[seg] - py, self.by[seg] - py  # signs exact: ay <= py, by > py
        left = (self.ax[seg] - px) * dry
        right = dly * (self.bx[seg] - px)
        det = left - right  # > 0: the point lies left of the (upward) segment a -> b
        below = dly <= 0
        doubt = below & (dry >= 0) & (np.abs(det) <= ORIENT_ERROR * (np.abs(left) + np.abs(right)))
        cross = below & (dry > 0) & (det > 0)  # the ray to the east crosses it (half-open in y)
        odd = np.bincount(pair[cross], minlength=fence.size) & 1
        unsure = np.bincount(pair[doubt], minlength=fence.size) > 0
        decided = (counts > 0) & ~unsure
        out[decided] = odd[decided]
        out[unsure] = -1
        return out
