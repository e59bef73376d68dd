"""A tiny time-to-live cache that also coalesces identical requests in flight.

Many open maps refresh every few seconds over the same view; within ``ttl`` seconds an identical
aggregation is answered once, from one Elasticsearch query, however many clients asked.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any


class TTLCache:
    def __init__(self, ttl: float = 1.0, max_entries: int = 256) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: OrderedDict[str, tuple[float, asyncio.Future[Any]]] = OrderedDict()

    async def get_or_compute(self, key: str, compute: Callable[[], Awaitable[Any]]) -> tuple[Any, bool]:
        """The value for ``key`` and whether it came from the cache (or a request already in flight)."""
        if self.ttl <= 0:
            return await compute(), False
        now = time.monotonic()
        entry = self._entries.get(key)
        if entry is not None and (not entry[1].done() or entry[0] > now):
            return await asyncio.shield(entry[1]), True
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._entries[key] = (float("inf"), future)
        self._entries.move_to_end(key)
        try:
            value = await compute()
        except asyncio.CancelledError:
            self._entries.pop(key, None)
            future.cancel()
            raise
        except Exception as exc:
            self._entries.pop(key, None)  # failures are not cached
            future.set_exception(exc)
            future.exception()  # mark retrieved: nobody else may be waiting
            raise
        future.set_result(value)
        self._entries[key] = (time.monotonic() + self.ttl, future)
        self._evict(time.monotonic())
        return value, False

    def _evict(self, now: float) -> None:
        # entries are in the order their computations began, so expired ones gather at the front: drop them
        # from there (O(1) per request, not a scan of the whole cache); an older one still in flight stops it
        # early, and the size bound below still holds.
        entries = self._entries
        while entries:
            expiry, future = next(iter(entries.values()))
            if not (future.done() and expiry <= now):
                break
            entries.popitem(last=False)
        while len(entries) > self.max_entries:
            entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
