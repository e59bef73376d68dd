"""Live geofences for the Spark job: the driver follows the fence topic and hands each micro-batch its fences.

The driver runs a :class:`geoiot.fence_topic.FenceFollower` on an event loop of its own thread (read to the end
before the query starts) and writes the fences in force (:meth:`geoiot.fences.FenceSet.snapshot`) to one file,
replaced atomically, whenever they change, except while a micro-batch runs (the state function runs inside
``foreachBatch``, when the batch's rows are first computed): then at the batch's end. The executors' state
function reads the file again when it was replaced (:meth:`agents.spark.worker.Worker.refresh_fences`). So a
change applies from a batch boundary on, in the topic's order, as in the worker, and a whole batch is
computed with one set of fences. The file lies beside the checkpoint directory: on a cluster the executors must
see the same path (a shared file system); where they cannot, they keep the fences of IOT_GEOFENCES.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from pathlib import Path

from geoiot import fence_topic
from geoiot.config import Settings
from geoiot.fences import FenceSet

log = logging.getLogger("agents.spark.job")

def snapshot_path(checkpoint: str) -> str:
    """Where the driver writes the fences of the next micro-batch: beside the checkpoint directory, not in it
    (Spark owns that one); a local path only (a URI checkpoint: the executors keep IOT_GEOFENCES)."""
    return "" if "://" in checkpoint else str(Path(checkpoint).with_name(Path(checkpoint).name + ".fences.json"))


class DriverFences:
    """The driver's follower of the fence topic and the snapshot file it publishes between micro-batches.

    A change read while no batch runs is published at once (the next batch uses it, as a worker's next batch
    does); one read while a batch runs (:meth:`hold` .. :meth:`release`, around ``foreachBatch``, where the state
    function runs) is published when the batch ends."""

    def __init__(self, settings: Settings, path: str) -> None:
        self.settings, self.path = settings, path
        self.published = -2
        self.running = False
        self.lock = threading.Lock()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fences", daemon=True)
        self.follower = fence_topic.FenceFollower(settings.kafka_bootstrap, settings.fences_topic, self._changed)

    def start(self) -> None:
        """Create and seed the topic, read it to its end, publish the first snapshot."""
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(120)
        self.release()

    async def _start(self) -> None:
        for problem in await fence_topic.prepare(self.settings):
            log.warning("%s", problem)
        await self.follower.start()

    def _changed(self, fences: FenceSet, ids: list[str]) -> None:  # on the follower's loop
        with self.lock:
            if not self.running:
                self._write(fences.snapshot(), fences.version, len(fences))

    def _write(self, data: bytes, version: int, count: int) -> None:
        if version == self.published or not self.path:
            return
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        tmp = f"{self.path}.tmp"
        Path(tmp).write_bytes(data)
        os.replace(tmp, self.path)  # atomic: an executor reads the old snapshot or the new one
        self.published = version
        log.info("fences published fences=%d version=%d", count, version)

    def hold(self) -> None:
        """A batch starts: no snapshot is replaced until :meth:`release`."""
        with self.lock:
            self.running = True

    def release(self) -> None:
        """The batch ended: publish what changed meanwhile."""
        async def snapshot() -> tuple[bytes, int, int]:  # on the follower's loop: not while it applies a record
            fs = self.follower.fences
            return fs.snapshot(), fs.version, len(fs)

        data = asyncio.run_coroutine_threadsafe(snapshot(), self.loop).result(60)
        with self.lock:
            self.running = False
            self._write(*data)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.follower.stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
