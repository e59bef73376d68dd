"""The web server's mirror of the live layer: the table, its follower, and the answers with retention applied."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from geoiot.config import Settings
from geoiot.schema import Preset
from geoiot.timeparse import retention_cutoff
from web.limiter import Busy
from web.live import answers
from web.live.follower import LiveFollower
from web.live.table import LiveTable
from web.params import AggregateParams, LatestParams


class Mirror:
    """Each track's newest document, read from IOT_LATEST_TOPIC; answers refuse (503) until it is loaded."""

    def __init__(self, settings: Settings, preset: Preset) -> None:
        self.table = LiveTable(preset)
        self.follower = LiveFollower(settings.kafka_bootstrap, settings.latest_topic, self.table)
        self.retention_days = settings.iot_retention_days

    @property
    def synced(self) -> bool:
        return self.follower.synced

    def cutoff(self) -> int | None:
        """Tracks older than this are not answered: the rule of the Elasticsearch latest trim (IOT_RETENTION_DAYS)."""
        if self.retention_days <= 0:
            return None
        return retention_cutoff(self.retention_days, int(time.time() * 1000))

    def _ready(self) -> None:
        if not self.follower.synced:
            raise Busy("live_loading", "the live layer is still loading (see /healthz)")

    def latest(self, p: LatestParams) -> tuple[int, list[dict[str, Any]]]:
        self._ready()
        return answers.latest(self.table, p, self.cutoff())

    def latest_payload(self, p: LatestParams) -> bytes:
        """:meth:`latest` as /api/latest's JSON."""
        self._ready()
        return answers.latest_payload(self.table, p, self.cutoff())

    async def fetch(self, p: LatestParams) -> tuple[int, list[dict[str, Any]]]:
        """:meth:`latest` as the event streams' views fetch it (web.events.Fetch)."""
        await asyncio.sleep(0)
        return self.latest(p)

    def aggregate(self, p: AggregateParams) -> bytes:
        self._ready()
        return answers.aggregate(self.table, p, self.cutoff())

    def start(self) -> None:
        self.follower.start()

    async def stop(self) -> None:
        await self.follower.stop()
