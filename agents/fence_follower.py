"""The worker's live geofences: the fence topic followed, the geofence index updated off the event loop, and
the new index put in force between two batches.

:meth:`LiveFences.start` reads the whole fence topic and builds the first index before the worker consumes an
event (a restarted worker so uses the fences in force). After that the changes read from the topic are merged into
a copy of the index in force (:func:`updated`, :meth:`agents.geofence.Geofences.updated`: only the changed fences
are placed, the rest is numpy work on whole arrays) in a thread (:func:`asyncio.to_thread`); the new index
replaces the old one with one assignment on the loop, so a batch is computed with one set of fences from its start
to its end, and a change applies from the next batch on, in the topic's order. Changes that arrive meanwhile are
coalesced into the next step.

Why an update and not a rebuild: the thread shares the GIL with the loop, and the loop's batches, which let it go
in their numpy and shapely calls, wait behind the thread's Python work each time; a rebuild has a lot of it (a
Python step per fence), an update little. A rebuild (:class:`Shapes`) stays for what an update cannot do: the
first index, more than :data:`MAX_IN_PLACE` fences changed at once, or fences outside the grid's frame.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection
from dataclasses import replace

import numpy as np
import shapely

from agents.geofence import FenceCells, Frame, Geofences
from geoiot import fence_topic
from geoiot.fences import Fence, FenceSet

log = logging.getLogger("agents.fences")

MAX_IN_PLACE = 16  # at most this many changed fences are merged on the event loop; more: a rebuild in a thread


class Shapes:
    """What a rebuild can keep of the previous index: each fence's shape as WKB and its grid cells, by (id, version),
    and the grid's frame. A rebuild then parses and places only the fences that changed (the frame is kept while
    it covers every fence, see :meth:`agents.geofence.Frame.suits`).

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


class LiveFences:
    """Follows the fence topic and calls ``apply`` with each new index (on the event loop)."""

    def __init__(self, bootstrap: str, topic: str, apply: Callable[[Geofences], None],
                 on_applied: Callable[[Geofences, float], None] | None = None) -> None:
        self.apply = apply
        self.on_applied = on_applied
        self.follower = fence_topic.FenceFollower(bootstrap, topic, self._changed)
        self.shapes = Shapes()
        self.current: Geofences | None = None
        self.applied_version = -1  # the newest change of the fence topic in force
        self._dirty = asyncio.Event()
        self._touched: set[str] = set()  # ids changed since the index in force was made
        self._task: asyncio.Task[None] | None = None

    def _snapshot(self) -> tuple[dict[str, Fence], dict[str, int], int, set[str]]:
        fs: FenceSet = self.follower.fences
        touched, self._touched = self._touched, set()
        return dict(fs.fences), dict(fs.removed), fs.version, touched

    async def _build(self) -> None:
        fences, removed, version, touched = self._snapshot()
        began = time.perf_counter()
        try:
            index = await asyncio.to_thread(updated, self.current, fences, removed, touched)
            if index is None:
                index = await asyncio.to_thread(self.shapes.index, fences, removed)
        except BaseException:
            self._touched |= touched  # not in force: the next step must still see these ids
            raise
        seconds = time.perf_counter() - began
        self.current = index
        self.applied_version = version
        self.apply(index)
        log.info("fences applied fences=%d version=%d build_seconds=%.3f", len(index), version, seconds)
        if self.on_applied is not None:
            self.on_applied(index, seconds)

    async def start(self) -> Geofences:
        """Read the whole topic, build and apply the first index, then follow; returns that index."""
        await self.follower.start()
        await self._build()
        self._task = asyncio.create_task(self._rebuild(), name="fence-rebuild")
        assert self.current is not None
        return self.current

    def _changed(self, fences: FenceSet, ids: list[str]) -> None:
        log.info("fences changed ids=%s version=%d", ",".join(ids[:20]), fences.version)
        self._touched.update(ids)
        self._dirty.set()

    async def _rebuild(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            try:
                await self._build()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a fence shapely cannot index: keep the fences in force, say why
                log.error("fences not applied, the previous ones stay in force: %s: %s", type(exc).__name__, exc)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        await self.follower.stop()
