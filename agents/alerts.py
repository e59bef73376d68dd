"""Geofence enter/exit alerts and their optional webhook.

The webhook never stalls the stream: alerts go into a bounded queue drained by a background task that
POSTs each one with a timeout and a few retries with back-off; failures (and alerts dropped because
the queue is full) are counted and logged. The Kafka alerts topic, not the webhook, is the
at-least-once record of alerts.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson

log = logging.getLogger("agents.alerts")


def transitions(track: str, entered: tuple[str, ...], exited: tuple[str, ...], time_ms: int,
                lon: float, lat: float) -> list[dict[str, Any]]:
    """The alerts of one report: exits first (leaving one fence for another reads naturally), ids sorted."""
    return ([{"track": track, "fence": f, "event": "exit", "time": time_ms, "lon": lon, "lat": lat} for f in exited]
            + [{"track": track, "fence": f, "event": "enter", "time": time_ms, "lon": lon, "lat": lat} for f in entered])


class Webhook:
    """POST alerts to a URL from a background task; ``submit`` never blocks."""

    def __init__(self, url: str, *, timeout: float = 5.0, retries: int = 3, backoff: float = 0.5,
                 maxsize: int = 10_000, on_result: Callable[[str], None] | None = None) -> None:
        self.url = url
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize)
        self.on_result = on_result or (lambda outcome: None)  # "sent", "failed", "dropped"
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self._task is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
            self._task = asyncio.create_task(self._run(), name="webhook")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    def submit(self, alert: dict[str, Any]) -> bool:
        try:
            self.queue.put_nowait(alert)
            return True
        except asyncio.QueueFull:
            self.on_result("dropped")
            log.warning("webhook queue full, alert dropped (it is in the alerts topic): %s", alert)
            return False

    async def _run(self) -> None:
        while True:
            alert = await self.queue.get()
            try:
                await self._post(alert)
            finally:
                self.queue.task_done()

    async def _post(self, alert: dict[str, Any]) -> None:
        assert self._session is not None
        body = orjson.dumps(alert)
        error = ""
        for attempt in range(self.retries + 1):
            try:
                async with self._session.post(self.url, data=body, headers={"Content-Type": "application/json"}) as resp:
                    if resp.status < 400:
                        self.on_result("sent")
                        return
                    error = f"HTTP {resp.status}"
                    if 400 <= resp.status < 500 and resp.status not in (408, 429):
                        break  # the receiver refuses this alert; retrying will not help
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                error = f"{type(exc).__name__}: {exc}"
            if attempt < self.retries:
                await asyncio.sleep(self.backoff * 2 ** attempt)
        self.on_result("failed")
        log.warning("webhook POST to %s failed after %d attempt(s): %s", self.url, attempt + 1, error)
