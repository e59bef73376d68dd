"""The worker's live geofences: the fence topic followed, the geofence index updated off the event loop, and
the new index put in force between two batches.

:meth:`LiveFences.start` reads the whole fence topic and builds the first index before the worker consumes an
event (a restarted worker so uses the fences in force). After that the changes read from the topic are merged into
a copy of the index in force (:func:`agents.core.fence_shapes.updated`, :meth:`agents.core.geofence.Geofences.updated`: only the changed fences
are placed, the rest is numpy work on whole arrays) in a thread (:func:`asyncio.to_thread`); the new index
replaces the old one with one assignment on the loop, so a batch is computed with one set of fences from its start
to its end, and a change applies from the next batch on, in the topic's order. Changes that arrive meanwhile are
coalesced into the next step.

Why an update and not a rebuild: the thread shares the GIL with the loop, and the loop's batches, which let it go
in their numpy and shapely calls, wait behind the thread's Python work each time; a rebuild has a lot of it (a
Python step per fence), an update little. A rebuild (:class:`Shapes`) stays for what an update cannot do: the
first index, more than :data:`agents.core.fence_shapes.MAX_IN_PLACE` fences changed at once, or fences outside the grid's frame.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from agents.core.fence_shapes import Shapes, updated
from agents.core.geofence import Geofences
from geoiot import fence_topic
from geoiot.fences import Fence, FenceSet

log = logging.getLogger("agents.fences")


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
