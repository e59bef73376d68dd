"""geoiot.logs: repeated records pass once per period, with the count of those dropped in between."""

from __future__ import annotations

import logging

from geoiot.logs import MAX_KINDS, RepeatFilter, quiet_repeats


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def capture(name: str, period: float, clock: Clock) -> tuple[logging.Logger, list[str]]:
    logger = logging.getLogger(name)
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    out: list[str] = []

    class ListHandler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            out.append(record.getMessage())

    logger.handlers[:] = [ListHandler()]
    logger.filters[:] = [RepeatFilter(period, clock, level=logging.INFO)]
    return logger, out


def test_a_repeated_record_passes_once_per_period_with_the_count_dropped() -> None:
    clock = Clock()
    logger, out = capture("test.logs.repeat", 30.0, clock)
    for attempt in range(1000):  # a reconnect loop: same template, changing arguments
        clock.now = attempt * 0.05
        logger.error("Unable connect to node with id %s: %s", 1, f"attempt {attempt}")
    # 50 s of attempts: the first one, then one 30 s later carrying the count of those dropped.
    assert out == ["Unable connect to node with id 1: attempt 0",
                   "Unable connect to node with id 1: attempt 600 [599 more like this in the last 30 s]"]


def test_kinds_are_counted_apart_and_levels_too() -> None:
    clock = Clock()
    logger, out = capture("test.logs.kinds", 10.0, clock)
    for _ in range(3):
        logger.error("metadata %s", "x")
        logger.error("fetch %s", "y")
        logger.warning("metadata %s", "x")
    assert out == ["metadata x", "fetch y", "metadata x"]
    clock.now = 10.0
    logger.error("fetch %s", "y")
    assert out[-1] == "fetch y [2 more like this in the last 10 s]"


def test_memory_is_bounded_by_the_number_of_kinds() -> None:
    clock = Clock()
    f = RepeatFilter(30.0, clock)
    for i in range(MAX_KINDS * 2):
        f.filter(logging.LogRecord("x", logging.ERROR, __file__, 1, f"message {i}", None, None))
    assert len(f._kinds) == MAX_KINDS


def test_quiet_repeats_covers_the_existing_library_loggers_once() -> None:
    import aiokafka.consumer.fetcher  # noqa: F401 - creates its module loggers

    names = quiet_repeats(("aiokafka",))
    assert {"aiokafka", "aiokafka.conn", "aiokafka.consumer.fetcher"} <= set(names)
    assert quiet_repeats(("aiokafka",)) == names
    assert len(logging.getLogger("aiokafka.conn").filters) == 1


def test_records_below_the_level_always_pass() -> None:
    f = RepeatFilter(30.0, Clock())
    record = logging.LogRecord("agents", logging.INFO, __file__, 1, "batch events=%d", (5,), None)
    assert all(f.filter(record) for _ in range(100))
    warning = logging.LogRecord("agents", logging.WARNING, __file__, 1, "retrying %d", (1,), None)
    assert [f.filter(warning) for _ in range(3)] == [True, False, False]
