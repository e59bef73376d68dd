"""pyspark's GroupState as the Spark job's state function uses it, for running that function without Spark.

It keeps what the function reads and sets (the state row, the timeout duration) and times a group out as
Spark's ``ProcessingTimeTimeout`` does: when ``now + duration`` of the last call is below the batch time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pandas as pd


class FakeGroupState:
    def __init__(self, row: tuple[Any, ...] | None, now_ms: int, timed_out: bool = False) -> None:
        self.row = row
        self.now_ms = now_ms
        self.hasTimedOut = timed_out
        self.timeout_at: int | None = None
        self.removed = False

    @property
    def exists(self) -> bool:
        return self.row is not None

    @property
    def get(self) -> tuple[Any, ...]:
        assert self.row is not None
        return self.row

    def update(self, row: tuple[Any, ...]) -> None:
        self.row, self.removed = row, False

    def remove(self) -> None:
        self.row, self.removed = None, True

    def setTimeoutDuration(self, ms: int) -> None:
        assert ms > 0, "Spark refuses a duration that is not positive"
        self.timeout_at = self.now_ms + ms

    def getCurrentProcessingTimeMs(self) -> int:
        return self.now_ms


class FakeStateStore:
    """Group key -> (state row, timeout timestamp) across micro-batches, calling the function like Spark."""

    def __init__(self, function: Callable[[Any, Iterator[pd.DataFrame], Any], Iterator[pd.DataFrame]]) -> None:
        self.function = function
        self.rows: dict[Any, tuple[tuple[Any, ...], int | None]] = {}

    def batch(self, groups: dict[Any, list[pd.DataFrame]], now_ms: int) -> list[pd.DataFrame]:
        out: list[pd.DataFrame] = []
        timed_out = [k for k, (_, at) in self.rows.items() if k not in groups and at is not None and at < now_ms]
        for key in [*groups, *timed_out]:
            row, _ = self.rows.get(key, (None, None))
            state = FakeGroupState(row, now_ms, timed_out=key not in groups)
            out += list(self.function((key,), iter(groups.get(key, [])), state))
            if state.row is None:
                self.rows.pop(key, None)
            else:
                self.rows[key] = (state.row, state.timeout_at)
        return out
