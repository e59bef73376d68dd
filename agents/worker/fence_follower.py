"""The worker's live geofences: the fence topic followed, the geofence index rebuilt off the event loop, and
the new index put in force between two batches.

:meth:`LiveFences.start` reads the whole fence topic and builds the first index before the worker consumes an
event (a restarted worker so uses the fences in force). After that every change read from the topic starts a
rebuild in a thread (:func:`asyncio.to_thread`): the event loop goes on preparing batches with the index in force,
and the new one replaces it with one assignment on the loop, so a batch is computed with one set of fences from
its start to its end, and a change applies from the next batch on, in the topic's order. Changes that arrive
while a rebuild runs are coalesced into the next one. Shapes of unchanged fences are kept between rebuilds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from agents.core.fence_shapes import Shapes
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
        self._task: asyncio.Task[None] | None = None

    def _snapshot(self) -> tuple[dict[str, Fence], dict[str, int], int]:
        fs: FenceSet = self.follower.fences
        return dict(fs.fences), dict(fs.removed), fs.version

    async def _build(self) -> None:
        fences, removed, version = self._snapshot()
        began = time.perf_counter()
        index = await asyncio.to_thread(self.shapes.index, fences, removed)
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
