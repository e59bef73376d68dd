"""IOT_TRACK_IDLE_TIMEOUT in the worker (agents.core.idle through agents.worker.track_table.TrackTable), in-process.

The same rule on Spark is tested in tests/unit/test_spark_units.py (the boundary, on both paths at once).
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from agents.core import idle
from agents.core.geofence import Geofences
from agents.core.pipeline import Pipeline
from agents.worker.stream import SourceStream
from agents.worker.track_table import TrackTable
from geoiot import config
from geoiot.config import DEFAULT_GEOFENCES
from test_agents_delivery import (PRESET, TOPICS, FakeConsumer, FakeProducer, FakeReader, FakeSink, Record, batch,
                                  run_until)


@pytest.mark.parametrize(("updated", "now", "timeout", "ended"), [
    (0, 30_000, 30.0, False), (0, 30_001, 30.0, True), (0, 10**12, 0.0, False), (None, 10**12, 1.0, False),
    (5, 5, 0.001, False), (5, 7, 0.001, True)])
def test_expired_is_strictly_after_the_timeout_and_never_when_zero(updated: Any, now: int, timeout: float,
                                                                    ended: bool) -> None:
    assert idle.expired(updated, now, timeout) is ended


def test_the_setting_is_in_seconds_with_zero_for_never() -> None:
    assert config.load({}).iot_track_idle_timeout == 86400.0
    assert config.load({"IOT_TRACK_IDLE_TIMEOUT": "0"}).iot_track_idle_timeout == 0.0
    with pytest.raises(config.ConfigError, match="IOT_TRACK_IDLE_TIMEOUT"):
        config.load({"IOT_TRACK_IDLE_TIMEOUT": "-1"})
    assert "IOT_TRACK_IDLE_TIMEOUT" in config.markdown_table()


async def test_recovered_states_are_as_old_as_their_changelog_records() -> None:
    state = {"t": 1, "lon": 0.0, "lat": 0.0, "fences": [], "hist": [[1, 0.0, 0.0]]}

    old, new = Record(orjson.dumps("a"), orjson.dumps(state), 0), Record(orjson.dumps("b"), orjson.dumps(state), 1)
    old.timestamp, new.timestamp = 1_000, 50_000  # type: ignore[attr-defined]  # aiokafka's ConsumerRecord has it
    table = TrackTable(TOPICS.changelog, lambda: FakeReader({0: [old, new]}), idle_timeout=30.0, clock=lambda: 60.0)
    assert await table.recover([0]) == 2
    assert table.get("a") is None and table.get("b")[:4] == (1, 0.0, 0.0, ())  # a JSON state (the old format)
    assert table.evict_idle() == [(0, "a")] and len(table) == 1


async def test_the_worker_writes_tombstones_for_idle_tracks_and_starts_them_afresh() -> None:
    log: list[Any] = []
    now = [1000.0]
    table = TrackTable(TOPICS.changelog, lambda: FakeReader({}), idle_timeout=1.0, clock=lambda: now[0])
    producer, sink = FakeProducer(log), FakeSink(log)

    def worker(batches: list[Any]) -> SourceStream:
        return SourceStream(consumer=FakeConsumer(log, batches), producer=producer, table=table, topics=TOPICS,
                            pipeline=Pipeline(PRESET, Geofences.load(DEFAULT_GEOFENCES), "obs"), sinks=[sink],
                            bulk_size=100, bulk_within=0.01)

    commits = lambda: sum(1 for e in log if e[0] == "commit")  # noqa: E731
    await run_until(worker([batch(0, "a", "b")]), lambda: commits() == 1)
    now[0] = 1002.0  # a and b idle for two seconds; the same table goes on with the next batches
    await run_until(worker([batch(2, "c"), batch(3, "a")]), lambda: commits() == 3)
    changelog = [(orjson.loads(k), v, p) for k, v, p in producer.sent[TOPICS.changelog]]
    assert ("b", None, 0) in changelog  # a tombstone, in the source partition
    assert changelog[-1][0] == "a" and changelog[-1][1] is not None  # a (in flight, not evicted) moved again
    assert table.get("b") is None and table.get("a") is not None and table.get("c") is not None and len(table) == 2
    docs = {a["_id"]: a["_source"] for a in sink.stored}
    assert docs["a:1357000003000"]["distance_m"] is None, "an idle track starts afresh"
    assert docs["a:1357000000000"]["distance_m"] is None and docs["b:1357000001000"]["distance_m"] is None
