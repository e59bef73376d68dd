"""Next pages fetched ahead of their request: while a client reads and parses one page, the server already
searches and shapes the next, so a paging client waits for the slower of the two instead of their sum.

At most ``size`` pages wait (oldest dropped and cancelled), each keyed by its signed cursor and page size, so
a client that stops paging costs at most one search; the searches hold scan slots like any other.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Coroutine
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Prefetched(Generic[T]):
    def __init__(self, size: int) -> None:
        self.size = size
        self._tasks: OrderedDict[Any, asyncio.Task[T]] = OrderedDict()

    def start(self, key: Any, work: Coroutine[Any, Any, T]) -> None:
        if key in self._tasks:
            work.close()
            return
        while len(self._tasks) >= self.size:
            _, old = self._tasks.popitem(last=False)
            old.cancel()
        task = asyncio.create_task(work)
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # a failure is retried by the request
        self._tasks[key] = task

    async def take(self, key: Any) -> T | None:
        """The page fetched for ``key``, or None when none was started, it was dropped, or it failed."""
        task = self._tasks.pop(key, None)
        if task is None:
            return None
        await asyncio.wait({task})
        if task.cancelled() or task.exception() is not None:
            return None
        return task.result()

    def close(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        self._tasks.clear()
