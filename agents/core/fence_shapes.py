"""What a rebuild of the geofence index can keep of the previous one, shared by the worker and the Spark job."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import replace

import numpy as np
import shapely

from agents.core.geofence import FenceCells, Frame, Geofences
from geoiot.fences import Fence


class Shapes:
    """What a rebuild can keep of the previous index: each fence's shape as WKB and its grid cells, by (id, version),
    and the grid's frame. A rebuild then parses and places only the fences that changed (the frame is kept while
    it covers every fence, see :meth:`agents.core.geofence.Frame.suits`).

    Each index gets geometries of its own (from the WKB, in one vectorised call): the index in force is being
    queried on the event loop while the next one is prepared in a thread, and GEOS prepared geometries build
    their lookup structures lazily, so the two must not share a geometry."""

    def __init__(self) -> None:
        self._by_id: dict[str, tuple[int, bytes]] = {}
        self._cells: dict[str, tuple[int, FenceCells]] = {}
        self._frame: Frame | None = None

    def index(self, fences: dict[str, Fence], removed: dict[str, int]) -> Geofences:
        """The geofence index of ``fences`` (a snapshot), with their versions and the removed fences' versions."""
        ids = sorted(fences)
        wkbs = []
        known: list[FenceCells | None] = []
        for fid in ids:
            fence = fences[fid]
            cached = self._by_id.get(fid)
            if cached is None or cached[0] != fence.version:
                cached = self._by_id[fid] = (fence.version, shapely.to_wkb(fence.geometry()))
            wkbs.append(cached[1])
            cells = self._cells.get(fid)
            known.append(cells[1] if cells is not None and cells[0] == fence.version else None)
        for gone in self._by_id.keys() - fences.keys():
            del self._by_id[gone]
            self._cells.pop(gone, None)
        geoms = list(shapely.from_wkb(np.asarray(wkbs, dtype=object))) if ids else []
        index = Geofences.from_geometries(ids, geoms, self._frame, known)
        if index.frame is not self._frame:  # a new frame: every fence's cells were placed again
            self._frame = index.frame
        self._cells = {fid: (fences[fid].version, cells) for fid, cells in zip(ids, index.cells)}
        return replace(index, versions={fid: fences[fid].version for fid in ids}, removed=removed)


MAX_IN_PLACE = 16  # at most this many changed fences are merged in place; more: a rebuild


def updated(current: Geofences | None, fences: dict[str, Fence], removed: dict[str, int],
            touched: Collection[str]) -> Geofences | None:
    """``current`` (an index of :meth:`Shapes.index` or of this function) updated to ``fences`` (a snapshot) in
    place of a rebuild, or None when a rebuild is needed (too many changes, a new frame, no index yet).
    ``touched``: the ids that may have changed since ``current`` (the follower names them)."""
    if current is None or len(touched) > MAX_IN_PLACE:
        return None
    old = current.versions
    changed = [fid for fid in touched if fid in fences and old.get(fid) != fences[fid].version]
    gone = [fid for fid in touched if fid not in fences and fid in old]
    index = current.updated({fid: fences[fid].geometry() for fid in changed}, gone) if changed or gone else current
    if index is None:
        return None
    versions = dict(old)
    for fid in changed:
        versions[fid] = fences[fid].version
    for fid in gone:
        del versions[fid]
    return replace(index, versions=versions, removed=removed)
