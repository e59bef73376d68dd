"""The fence topic on the real Kafka (geoiot.fence_topic): seeding from a file is idempotent and never deletes,
and a follower reads the whole topic before it returns, then follows puts and tombstones."""

from __future__ import annotations

import dataclasses
import json

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from geoiot import fence_topic, fences, topics
from geoiot.config import DEFAULT_GEOFENCES
from conftest import unique_name

pytestmark = pytest.mark.integration

SQUARE = {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]]]}


@pytest.fixture
async def fence_settings(stack, kafka_admin):
    s = dataclasses.replace(stack, iot_topic=unique_name("fsrc"))
    [made] = await topics.ensure(kafka_admin, [topics.fence_spec(s)])
    assert made.status == "created"
    yield s
    await topics.delete(kafka_admin, [s.fences_topic])


async def end_offset(settings, topic: str) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap)
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        return (await consumer.end_offsets([tp]))[tp]
    finally:
        await consumer.stop()


async def test_seeding_twice_changes_nothing_and_keeps_api_fences(fence_settings, tmp_path):
    s = fence_settings
    file_ids = [f["id"] for f in json.loads(DEFAULT_GEOFENCES.read_text())["features"]]
    assert await fence_topic.seed(s, DEFAULT_GEOFENCES) == len(file_ids)
    after_first = await end_offset(s, s.fences_topic)
    assert after_first == len(file_ids) + 1  # the fences and the seed marker
    assert await fence_topic.seed(s, DEFAULT_GEOFENCES) == 0
    assert await end_offset(s, s.fences_topic) == after_first

    # fences changed through the API (written like the API writes them) survive seeding the same file again
    producer = fence_topic.make_producer(s.kafka_bootstrap)
    await producer.start()
    try:
        key, value = fences.encode(fences.check_feature("api-zone", {"type": "Feature", "geometry": SQUARE}))
        version, _ = await fence_topic.write(producer, s.fences_topic, key, value)
        await fence_topic.write(producer, s.fences_topic, file_ids[0].encode(), None)
    finally:
        await producer.stop()
    assert version == after_first
    assert await fence_topic.seed(s, DEFAULT_GEOFENCES) == 0

    follower = fence_topic.FenceFollower(s.kafka_bootstrap, s.fences_topic)
    await follower.start()
    try:
        assert sorted(follower.fences) == sorted(["api-zone", *file_ids[1:]])
        assert follower.fences.fences["api-zone"].version == version
        assert follower.fences.removed == {file_ids[0]: version + 1}
    finally:
        await follower.stop()

    bad = tmp_path / "bad.geojson"
    bad.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "id": "p", "geometry": {"type": "Point", "coordinates": [0, 0]}}]}))
    with pytest.raises(fences.FenceError, match="Point"):
        await fence_topic.seed(s, bad)
    assert await end_offset(s, s.fences_topic) == version + 2


async def test_the_follower_reads_everything_first_then_follows_and_skips_bad_records(fence_settings):
    s = fence_settings
    producer = fence_topic.make_producer(s.kafka_bootstrap)
    await producer.start()
    seen: list[list[str]] = []
    follower = fence_topic.FenceFollower(s.kafka_bootstrap, s.fences_topic, lambda fs, ids: seen.append(ids))
    try:
        for n in range(50):
            key, value = fences.encode(fences.check_feature(f"f{n}", {"type": "Feature", "geometry": SQUARE}))
            await fence_topic.write(producer, s.fences_topic, key, value)
        await fence_topic.write(producer, s.fences_topic, b"broken", b"{not json")
        await follower.start()
        assert len(follower.fences) == 50 and follower.skipped == 1 and seen == []  # loaded, not "changed"
        offset, _ = await fence_topic.write(producer, s.fences_topic, b"f3", None)
        assert await follower.wait_for(offset, 30)
        assert "f3" not in follower.fences and follower.fences.removed["f3"] == offset
        assert [i for ids in seen for i in ids] == ["f3"]
    finally:
        await follower.stop()
        await producer.stop()
