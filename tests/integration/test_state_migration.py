"""Issue 23, "upgrading a running worker": a changelog written in the JSON format of before (states with their
history) recovers on the real Kafka to the same states as one written in the compact format, also when both
formats are mixed in one log (old records, then the upgraded worker's updates and tombstones)."""

from __future__ import annotations

import zlib

import orjson
import pytest

from agents.core import state_codec
from agents.core.motion import State
from agents.worker.stream import make_producer
from agents.worker.track_table import TrackTable, changelog_reader

pytestmark = pytest.mark.integration

PARTITIONS = 3
TRACKS = 300
UPDATES = 4
T0 = 1_357_000_000_000


def old_value(track: int, n: int) -> bytes:
    """The JSON state the worker wrote before issue 23 after ``n + 1`` reports (history growing to 32)."""
    points = [[T0 + k * 1000, -73.97 + track * 1e-4 + k * 1e-5, 40.76 + k * 1e-5] for k in range(n + 1)][-32:]
    t, lon, lat = points[-1]
    return orjson.dumps({"t": t, "lon": lon, "lat": lat, "fences": ["jfk"] if n % 2 else [], "hist": points})


def state_of(track: int, n: int) -> State:
    return State(T0 + n * 1000, -73.97 + track * 1e-4 + n * 1e-5, 40.76 + n * 1e-5, ("jfk",) if n % 2 else ())


async def write(bootstrap: str, topic: str, records: list[tuple[bytes, bytes | None, int]]) -> None:
    producer = make_producer(bootstrap)
    await producer.start()
    try:
        futures = [await producer.send(topic, value, key=key, partition=p) for key, value, p in records]
        for future in futures:
            await future
    finally:
        await producer.stop()


async def recovered(bootstrap: str, topic: str) -> dict[str, State]:
    table = TrackTable(topic, lambda: changelog_reader(bootstrap))
    assert await table.recover(range(PARTITIONS)) > 0
    return {track: State(*table.get(track)[:4]) for track in (f"taxi-{i}" for i in range(TRACKS)) if table.get(track)}


def partition(track: str) -> int:
    return zlib.crc32(track.encode()) % PARTITIONS


async def test_a_changelog_in_the_old_json_format_recovers_to_the_same_states(stack, new_topic):
    old, new, mixed = [await new_topic(f"changelog-{name}", partitions=PARTITIONS) for name in ("old", "new", "mixed")]
    keys = [state_codec.key(f"taxi-{i}") for i in range(TRACKS)]
    parts = [partition(f"taxi-{i}") for i in range(TRACKS)]
    await write(stack.kafka_bootstrap, old, [(keys[i], old_value(i, n), parts[i])
                                             for n in range(UPDATES) for i in range(TRACKS)])
    await write(stack.kafka_bootstrap, new, [(keys[i], state_codec.value(state_of(i, n)), parts[i])
                                             for n in range(UPDATES) for i in range(TRACKS)])
    want = {f"taxi-{i}": state_of(i, UPDATES - 1) for i in range(TRACKS)}
    from_old, from_new = await recovered(stack.kafka_bootstrap, old), await recovered(stack.kafka_bootstrap, new)
    assert from_old == want == from_new

    # Upgraded mid-log: old records, then the new worker's updates of every third track and tombstones of a few.
    later = [(keys[i], state_codec.value(state_of(i, UPDATES)), parts[i]) for i in range(0, TRACKS, 3)]
    gone = [(keys[i], None, parts[i]) for i in range(1, TRACKS, 50)]
    await write(stack.kafka_bootstrap, mixed, [(keys[i], old_value(i, n), parts[i])
                                               for n in range(UPDATES) for i in range(TRACKS)] + later + gone)
    want_mixed = {track: state for track, state in want.items()}
    for i in range(0, TRACKS, 3):
        want_mixed[f"taxi-{i}"] = state_of(i, UPDATES)
    for i in range(1, TRACKS, 50):
        del want_mixed[f"taxi-{i}"]
    assert await recovered(stack.kafka_bootstrap, mixed) == want_mixed
