"""Bounded concurrency towards Elasticsearch with a short, bounded queue: the server's load shedding.

At most ``limit`` searches run, at most ``queue`` requests wait (each at most ``wait`` seconds), and every
other request is refused at once with :class:`Busy`, answered ``503`` with ``Retry-After``: a client learns
early that the server is busy, rather than its search queuing inside the Elasticsearch client until a
timeout, and the requests admitted stay fast.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class Busy(Exception):
    """The server refused the request to protect the searches in flight; ``reason`` is a metric label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class Limiter:
    """At most ``limit`` holders of a slot, at most ``queue`` waiting for one, none waiting over ``wait`` s."""

    def __init__(self, limit: int, queue: int, wait: float) -> None:
        if limit < 1 or queue < 0 or wait < 0:
            raise ValueError(f"limiter needs limit >= 1, queue >= 0, wait >= 0 (got {limit}, {queue}, {wait})")
        self.limit, self.queue, self.wait = limit, queue, wait
        self._free = asyncio.Semaphore(limit)
        self.in_flight = 0
        self.queued = 0

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one slot for the body of the ``async with``; raises :class:`Busy` instead of waiting long."""
        if self._free.locked():  # no free slot now (or others already wait for one)
            if self.queued >= self.queue:
                raise Busy("queue_full", f"server busy: {self.limit} searches running and {self.queued} "
                                         "waiting; retry later")
            self.queued += 1
            try:
                await asyncio.wait_for(self._free.acquire(), self.wait)
            except TimeoutError:
                raise Busy("queue_timeout", f"server busy: no search slot free within {self.wait:g} s; "
                                            "retry later") from None
            finally:
                self.queued -= 1
        else:
            await self._free.acquire()
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1
            self._free.release()
