"""The fast paths of agents.core.geofence give shapely's answers: the numpy test of boundary cells (Segments) and the
index updated in place of one built anew (Geofences.updated)."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
from hypothesis import given, settings, strategies as st
from shapely.geometry import MultiPolygon, Polygon, box

from agents.core import geofence
from agents.core.geofence import Geofences

discs = st.tuples(st.floats(-5, 5), st.floats(-5, 5), st.floats(0.05, 3), st.integers(1, 8))


def shape_of(x: float, y: float, r: float, quad: int, kind: int):
    """A disc, a box, a disc with a hole or two discs as a multipolygon (all valid)."""
    disc = shapely.buffer(shapely.Point(x, y), r, quad_segs=quad)
    if kind == 1:
        return box(x, y, x + r, y + r / 2)
    if kind == 2:
        return Polygon(disc.exterior.coords, [shapely.buffer(shapely.Point(x, y), r / 3, quad_segs=2).exterior.coords[::-1]])
    if kind == 3:
        return MultiPolygon([disc, shapely.buffer(shapely.Point(x + 3 * r, y), r, quad_segs=quad)])
    return disc


def probes(geoms, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random points, every vertex, every segment's midpoint and points a hair off the boundary."""
    xy = np.concatenate([shapely.get_coordinates(g) for g in geoms])
    mid = (xy[1:] + xy[:-1]) / 2
    hair = mid + rng.normal(0, 1e-12, mid.shape)
    pts = np.concatenate([rng.uniform(-9, 12, (1500, 2)), xy, mid, hair])
    return pts[:, 0], pts[:, 1]


@pytest.fixture(autouse=True)
def _restore_threshold():
    kept = geofence.NUMPY_TEST_FENCES
    yield
    geofence.NUMPY_TEST_FENCES = kept


def brute(ids, geoms, lon, lat) -> list[tuple[str, ...]]:
    tree = shapely.STRtree(geoms)
    pi, gi = tree.query(shapely.points(lon, lat), predicate="intersects")
    out: list[list[str]] = [[] for _ in lon]
    for p, g in zip(pi.tolist(), gi.tolist()):
        out[p].append(ids[g])
    return [tuple(sorted(o)) for o in out]


def boundary_pairs(index: Geofences, lon: np.ndarray, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The numpy test on every (point, fence) pair of a boundary cell (1 in, 0 out, negative: undecided, left to
    shapely) and shapely's answer for the same pairs."""
    grid = index._grid
    f = grid.frame
    near = np.arange(lon.size)
    rows = f.rows(lat)
    cells = np.clip(((lon - f.minx) / f.dx).astype(np.int64), 0, f.nx - 1) * f.ny + rows
    start, stop = grid.edge_ptr[cells], grid.edge_ptr[cells + 1]
    pe = np.repeat(near, stop - start)
    fe = np.concatenate([grid.edge_idx[a:b] for a, b in zip(start.tolist(), stop.tolist())] + [np.empty(0, np.intp)])
    return grid.segments.intersects(lon[pe], lat[pe], fe, rows[pe]), shapely.intersects_xy(index.geometries[fe], lon[pe], lat[pe])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(discs, st.integers(0, 3)), min_size=1, max_size=15), st.integers(0, 2**32 - 1))
def test_boundary_cells_tested_in_numpy_give_shapelys_answer(specs, seed):
    geofence.NUMPY_TEST_FENCES = 0  # the numpy test for any number of fences (the default keeps it for many)
    geoms = [shape_of(*d, kind) for d, kind in specs]
    geoms = [g for g in geoms if g.is_valid] or [box(0, 0, 1, 1)]
    ids = [f"f{k:02d}" for k in range(len(geoms))]
    index = Geofences.from_geometries(ids, geoms)
    lon, lat = probes(geoms, np.random.default_rng(seed))
    assert index.containing(lon, lat) == brute(ids, geoms, lon, lat)
    # and the numpy test itself, on every (point, fence) pair of a boundary cell: decided pairs agree with shapely
    # (the probes are mostly vertices and points on edges, chosen hard: many are left to shapely)
    got, want = boundary_pairs(index, lon, lat)
    decided = got >= 0
    assert np.array_equal(got[decided].astype(bool), want[decided])


def test_most_boundary_pairs_of_random_points_are_decided_in_numpy() -> None:
    """Points spread at random (not the hard probes above): most pairs in boundary cells never reach shapely."""
    geofence.NUMPY_TEST_FENCES = 0
    geoms = [shape_of(0, 0, 2, 8, 0), shape_of(3, 1, 1, 4, 1), shape_of(-2, -2, 1.5, 6, 2), shape_of(1, -3, 0.5, 8, 3)]
    index = Geofences.from_geometries([f"f{k}" for k in range(len(geoms))], geoms)
    pts = np.random.default_rng(7).uniform(-6, 6, (20_000, 2))
    got, want = boundary_pairs(index, pts[:, 0], pts[:, 1])
    decided = got >= 0
    assert got.size > 1000 and np.array_equal(got[decided].astype(bool), want[decided])
    assert decided.mean() > 0.5


@settings(max_examples=40, deadline=None)
@given(st.lists(discs, min_size=2, max_size=20), st.lists(st.tuples(st.integers(0, 40), discs | st.none()), max_size=6),
       st.integers(0, 2**32 - 1))
def test_an_updated_index_equals_one_built_anew(start, changes, seed):
    geofence.NUMPY_TEST_FENCES = 0
    fences = {f"f{k:02d}": shape_of(*d, 0) for k, d in enumerate(start)}
    index = Geofences.from_geometries(sorted(fences), [fences[k] for k in sorted(fences)])
    changed, gone = {}, set()
    for k, d in changes:  # a fence moved, added (k beyond the start) or removed (None)
        fid = f"f{k:02d}"
        if d is None:
            fences.pop(fid, None)
            changed.pop(fid, None)
            gone.add(fid)
        else:
            fences[fid] = changed[fid] = shape_of(*d, 0)
            gone.discard(fid)
    updated = index.updated(changed, gone)
    ids = sorted(fences)
    if updated is None:  # the frame no longer suits (or nothing is left): the caller builds anew
        assert not ids or not index.frame.suits(len(ids), Geofences.from_geometries(ids, [fences[i] for i in ids]).bounds)
        return
    anew = Geofences.from_geometries(ids, [fences[i] for i in ids], index.frame)
    assert updated.ids == anew.ids and updated.frame is index.frame and anew.frame is index.frame
    assert [(a.tolist(), b.tolist()) for a, b in updated.cells] == [(a.tolist(), b.tolist()) for a, b in anew.cells]
    for name in ("full_ptr", "full_cell", "full_idx", "edge_ptr", "edge_cell", "edge_idx"):
        assert np.array_equal(getattr(updated._grid, name), getattr(anew._grid, name)), name
    for name in ("small", "row0", "nrows", "base", "ptr", "fence", "row", "ax", "ay", "bx", "by"):
        assert np.array_equal(getattr(updated._grid.segments, name), getattr(anew._grid.segments, name)), name
    lon, lat = probes([fences[i] for i in ids], np.random.default_rng(seed))
    assert updated.containing(lon, lat) == anew.containing(lon, lat) == brute(ids, [fences[i] for i in ids], lon, lat)


def test_an_index_of_unsorted_ids_is_not_updated_in_place():
    index = Geofences.from_geometries(["b", "a"], [box(0, 0, 1, 1), box(2, 2, 3, 3)])
    assert index.updated({"c": box(1, 1, 2, 2)}, ()) is None
    assert Geofences.from_geometries(["a", "b"], [box(2, 2, 3, 3), box(0, 0, 1, 1)]).updated({"c": box(1, 1, 2, 2)}, ()).ids == ("a", "b", "c")
