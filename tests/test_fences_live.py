"""Live geofences with a real worker on the real Kafka and Elasticsearch: fences created, changed and deleted
during a stream (and while the worker is down) give the documented alerts at the track's next report, each
stored observation's geofences are those in force when its batch ran, and a restarted worker uses the
current fences (README, "Live geofences")."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import time
from pathlib import Path

import orjson
import pytest
from shapely.geometry import box, mapping

from geoiot import fence_topic, fences
from geoiot.config import Settings
from geoiot.schema import load_preset
from test_agents_integration import (Worker, agent_env, all_docs, cleanup_topics, produce_raw,  # noqa: F401
                                    read_topic, wait_count)

pytestmark = pytest.mark.integration

PRESET = load_preset("taxi")
T0 = 1_700_000_000_000
P = (-73.95, 40.75)  # where the track reports, every time
AROUND = box(-74.0, 40.7, -73.9, 40.8)  # a fence around P
AWAY = box(-73.0, 41.0, -72.9, 41.1)  # the same fence moved away from P


def fence(geom) -> dict:
    return {"type": "Feature", "properties": {"name": "test"}, "geometry": json.loads(json.dumps(mapping(geom)))}


async def write(settings: Settings, fid: str, geom) -> int:
    """A fence change as the API makes it (geoiot.fence_topic.write of a checked fence); its version."""
    producer = fence_topic.make_producer(settings.kafka_bootstrap)
    await producer.start()
    try:
        value = None if geom is None else fences.encode(fences.check_feature(fid, fence(geom)))[1]
        version, _ = await fence_topic.write(producer, settings.fences_topic, fid.encode(), value)
        return version
    finally:
        await producer.stop()


async def applied(log: Path, version: int, timeout: float = 60) -> None:
    """Until the worker logged that the fences of ``version`` (or newer) are in force."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen = [int(v) for v in re.findall(r"fences applied fences=\d+ version=(-?\d+)", log.read_text())]
        if seen and max(seen) >= version:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"version {version} not applied:\n{log.read_text()[-3000:]}")


async def test_create_change_delete_and_restart_give_the_documented_alerts(stack, es, kafka_admin, new_topic,
                                                                            agent_env, tmp_path):
    topic = await new_topic("live", partitions=2)
    far = tmp_path / "far.geojson"
    far.write_text(json.dumps({"type": "FeatureCollection", "features": [{**fence(box(10, 10, 11, 11)), "id": "far"}]}))
    env = agent_env(topic, IOT_GEOFENCES=str(far))
    settings = dataclasses.replace(stack, iot_topic=topic, iot_fences_topic="")
    index = env["IOT_INDEX"]
    log = tmp_path / "worker.log"
    worker = Worker(env, log).start()
    sent = 0

    async def report(n: int) -> None:
        nonlocal sent
        value = orjson.dumps({"taxiId": "cab-1", "observationTime": T0 + n * 1000, "longitude": P[0],
                              "latitude": P[1]})
        await produce_raw(stack.kafka_bootstrap, topic, [(b"cab-1", value)])
        sent += 1
        assert await wait_count(es, index, sent, timeout=120, settle=0.5) == sent

    try:
        await applied(log, 0)  # the seeded file fence
        await report(1)  # no fence around it
        v_created = await write(settings, "zone", AROUND)
        await applied(log, v_created)
        await report(2)  # created around the track: enter
        v_moved = await write(settings, "zone", AWAY)
        await applied(log, v_moved)
        await report(3)  # changed away: exit
        v_back = await write(settings, "zone", AROUND)
        await applied(log, v_back)
        await report(4)  # changed back: enter

        worker.stop()  # changes while the worker is down: the restarted worker must use them
        v_deleted = await write(settings, "zone", None)
        v_other = await write(settings, "zone2", AROUND)
        worker = Worker(env, log).start()
        await report(5)  # zone deleted while inside: exit, removed; zone2 created around it: enter
        v_gone = await write(settings, "zone2", None)
        await applied(log, v_gone)
        await report(6)  # zone2 deleted while inside: exit, removed
    finally:
        worker.stop()

    try:
        alerts = [orjson.loads(v) for v in await read_topic(stack.kafka_bootstrap, f"{topic}-alerts", 6, settle=2)]
        got = [(a["time"] - T0) // 1000 for a in alerts], [(a["event"], a["fence"], a["version"], a["removed"])
                                                          for a in alerts]
        assert got == ([2, 3, 4, 5, 5, 6], [("enter", "zone", v_created, False), ("exit", "zone", v_moved, False),
                                           ("enter", "zone", v_back, False), ("exit", "zone", v_deleted, True),
                                           ("enter", "zone2", v_other, False), ("exit", "zone2", v_gone, True)])
        docs = sorted((d["_source"][PRESET.time], d["_source"]["geofences"]) for d in await all_docs(es, index))
        assert [g for _, g in docs] == [[], ["zone"], [], ["zone"], ["zone2"], []]
    finally:
        await cleanup_topics(kafka_admin, [f"{topic}-"])
