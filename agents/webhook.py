"""The optional webhook of geofence alerts, shared by the worker and the Spark driver.

The webhook never stalls the stream, and a dead target never makes alerts wait behind each of its hangs:
alerts go into a bounded queue drained by ``concurrency`` tasks (that many POSTs in flight), each POST
with a timeout and a few retries with back-off, all behind one circuit breaker (:class:`Breaker`): after
``breaker_failures`` failed attempts in a row the target gets no request for ``cooldown`` seconds, then
one probe; alerts meanwhile wait in the queue. Drop rule: an alert older than ``max_age`` seconds is not
sent (outcome ``expired``), and a full queue drops its oldest alert (``dropped``), so what reaches a
recovered target is the recent alerts, at once. Outcomes are counted (``sent``, ``failed``, ``dropped``,
``expired``). The Kafka alerts topic, not the webhook, is the at-least-once record of alerts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson

from geoiot.logs import QuietLog

log = logging.getLogger("agents.webhook")


class Breaker:
    """A consecutive-failure circuit breaker (pure; the clock is passed in).

    Closed: every attempt may go. ``failures`` failed attempts in a row open it: no attempt for
    ``cooldown`` seconds, then one probe at a time (half-open); the probe's success closes it, its
    failure opens it for another ``cooldown``.
    """

    def __init__(self, failures: int = 5, cooldown: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.threshold, self.cooldown, self.clock = failures, cooldown, clock
        self.failures = 0
        self.opened_at: float | None = None
        self.probing = False

    @property
    def is_open(self) -> bool:
        return self.opened_at is not None

    def acquire(self) -> bool:
        """Whether an attempt may go now (in half-open state, the one probe takes it)."""
        if self.opened_at is None:
            return True
        if self.probing or self.clock() < self.opened_at + self.cooldown:
            return False
        self.probing = True
        return True

    def wait(self) -> float:
        """Seconds until an attempt may go (the probe window; a cooldown while a probe is out)."""
        if self.opened_at is None:
            return 0.0
        if self.probing:
            return self.cooldown
        return max(0.0, self.opened_at + self.cooldown - self.clock())

    def success(self) -> bool:
        """Record a good answer; True when it closed the circuit."""
        was_open = self.opened_at is not None
        self.failures, self.opened_at, self.probing = 0, None, False
        return was_open

    def failure(self) -> bool:
        """Record a failed attempt; True when it opened the circuit."""
        self.failures += 1
        if self.probing:
            self.opened_at, self.probing = self.clock(), False
            return False
        if self.opened_at is None and self.failures >= self.threshold:
            self.opened_at = self.clock()
            return True
        return False


class Expired(Exception):
    """An alert older than the webhook's ``max_age``: not sent."""


class Webhook:
    """POST alerts to a URL from ``concurrency`` background tasks; ``submit`` never blocks."""

    def __init__(self, url: str, *, timeout: float = 5.0, retries: int = 3, backoff: float = 0.5,
                 maxsize: int = 10_000, on_result: Callable[[str], None] | None = None, concurrency: int = 8,
                 max_age: float = 60.0, cooldown: float = 5.0, breaker_failures: int = 5,
                 on_circuit: Callable[[bool], None] | None = None) -> None:
        self.url = url
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.concurrency = concurrency
        self.max_age = max_age
        self.queue: asyncio.Queue[tuple[float, dict[str, Any]]] = asyncio.Queue(maxsize)
        self.on_result = on_result or (lambda outcome: None)  # "sent", "failed", "dropped", "expired"
        self.on_circuit = on_circuit or (lambda is_open: None)
        self.breaker = Breaker(breaker_failures, cooldown)
        self._closed = asyncio.Event()  # set while the circuit is closed: waiting alerts go at once
        self._closed.set()
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None
        self._quiet = QuietLog(log, 30.0)

    @classmethod
    def from_settings(cls, settings: Any, **kwargs: Any) -> "Webhook":
        """The webhook of ``IOT_WEBHOOK_URL`` with the IOT_WEBHOOK_* settings."""
        return cls(settings.iot_webhook_url, concurrency=settings.iot_webhook_concurrency,
                   max_age=settings.iot_webhook_max_age, cooldown=settings.iot_webhook_cooldown, **kwargs)

    async def start(self) -> None:
        if not self._tasks:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout),
                                                  connector=aiohttp.TCPConnector(limit=self.concurrency))
            self._tasks = [asyncio.create_task(self._run(), name=f"webhook-{i}") for i in range(self.concurrency)]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._session is not None:
            await self._session.close()
            self._session = None
        self._quiet.flush()

    def submit(self, alert: dict[str, Any]) -> bool:
        """Queue an alert; a full queue drops its oldest one (counted) to make room. True when none was dropped."""
        dropped = False
        if self.queue.full():
            _, old = self.queue.get_nowait()
            self.queue.task_done()
            self.on_result("dropped")
            self._quiet.warning("dropped", "webhook queue full, oldest alert dropped (it is in the alerts topic): %s",
                                old)
            dropped = True
        self.queue.put_nowait((time.monotonic(), alert))
        return not dropped

    async def _run(self) -> None:
        while True:
            queued_at, alert = await self.queue.get()
            try:
                await self._post(queued_at, alert)
            except Expired:
                self.on_result("expired")
                self._quiet.warning("expired", "webhook alert older than %gs not sent (it is in the alerts topic): %s",
                                    self.max_age, alert)
            finally:
                self.queue.task_done()

    async def _gate(self, deadline: float) -> None:
        """Wait until the breaker lets an attempt go; :class:`Expired` once the alert is past its age."""
        while not self.breaker.acquire():
            left = deadline - time.monotonic()
            if left <= 0:
                raise Expired
            self._closed.clear()
            try:
                await asyncio.wait_for(self._closed.wait(), min(left, max(self.breaker.wait(), 0.01)))
            except TimeoutError:
                pass
        if time.monotonic() >= deadline:
            if self.breaker.probing:
                self.breaker.probing = False  # the probe was not used: the next attempt takes it
            raise Expired

    def _failed_attempt(self) -> None:
        if self.breaker.failure():
            self._closed.clear()
            self.on_circuit(True)
            log.warning("webhook circuit open: %d failed attempts in a row to %s; no request for %gs, then one probe",
                        self.breaker.failures, self.url, self.breaker.cooldown)

    def _good_answer(self) -> None:
        if self.breaker.success():
            self._closed.set()
            self.on_circuit(False)
            log.info("webhook circuit closed: %s answers again", self.url)

    async def _post(self, queued_at: float, alert: dict[str, Any]) -> None:
        assert self._session is not None
        body = orjson.dumps(alert)
        deadline = queued_at + self.max_age
        error = ""
        for attempt in range(self.retries + 1):
            await self._gate(deadline)
            try:
                async with self._session.post(self.url, data=body, headers={"Content-Type": "application/json"}) as resp:
                    if resp.status < 400:
                        self._good_answer()
                        self.on_result("sent")
                        return
                    error = f"HTTP {resp.status}"
                    if 400 <= resp.status < 500 and resp.status not in (408, 429):
                        self._good_answer()  # the target is up; it refuses this alert, retrying will not help
                        break
                    self._failed_attempt()
            except Exception as exc:  # connection errors, timeouts, and anything else: a failed attempt
                error = f"{type(exc).__name__}: {exc}"
                self._failed_attempt()
            if attempt < self.retries:
                await asyncio.sleep(self.backoff * 2 ** attempt)
        self.on_result("failed")
        self._quiet.warning("failed", "webhook POST to %s failed after %d attempt(s): %s", self.url, attempt + 1, error)
