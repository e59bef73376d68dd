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
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from shapely.geometry import box, mapping

from geoiot import fence_topic, fences
from geoiot.config import Settings
from geoiot.schema import load_preset
from testkit.worker import Worker, all_docs, cleanup_topics, produce_raw, read_topic, wait_count

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


@dataclasses.dataclass
class Runtime:
    """How a scenario starts and stops the runtime under test and tells that a fence version is in force."""

    start: Callable[[], Any]
    stop: Callable[[], Any]
    applied: Callable[[int], Awaitable[None]]


async def scenario(stack, es, kafka_admin, topic: str, index: str, runtime: Runtime) -> None:
    """Fences created, changed and deleted between the reports of one track, some while the runtime is down;
    the alerts and the stored geofences must be the documented ones (README, "Live geofences")."""
    settings = dataclasses.replace(stack, iot_topic=topic, iot_fences_topic="")
    sent = 0

    async def report(n: int) -> None:
        nonlocal sent
        value = orjson.dumps({"taxiId": "cab-1", "observationTime": T0 + n * 1000, "longitude": P[0],
                              "latitude": P[1]})
        await produce_raw(stack.kafka_bootstrap, topic, [(b"cab-1", value)])
        sent += 1
        assert await wait_count(es, index, sent, timeout=300, settle=0.5) == sent

    runtime.start()
    try:
        await runtime.applied(0)  # the seeded file fence
        await report(1)  # no fence around it
        v_created = await write(settings, "zone", AROUND)
        await runtime.applied(v_created)
        await report(2)  # created around the track: enter
        v_moved = await write(settings, "zone", AWAY)
        await runtime.applied(v_moved)
        await report(3)  # changed away: exit
        v_back = await write(settings, "zone", AROUND)
        await runtime.applied(v_back)
        await report(4)  # changed back: enter

        runtime.stop()  # changes while the runtime is down: once restarted it must use them
        v_deleted = await write(settings, "zone", None)
        v_other = await write(settings, "zone2", AROUND)
        runtime.start()
        await runtime.applied(v_other)
        await report(5)  # zone deleted while inside: exit, removed; zone2 created around it: enter
        v_gone = await write(settings, "zone2", None)
        await runtime.applied(v_gone)
        await report(6)  # zone2 deleted while inside: exit, removed
    finally:
        runtime.stop()

    try:
        alerts = [orjson.loads(v) for v in await read_topic(stack.kafka_bootstrap, f"{topic}-alerts", 6, settle=2)]
        got = sorted({((a["time"] - T0) // 1000, a["event"], a["fence"], a["version"], a["removed"])
                      for a in alerts})  # a runtime stopped mid-batch may repeat that batch's alerts
        assert got == [(2, "enter", "zone", v_created, False), (3, "exit", "zone", v_moved, False),
                       (4, "enter", "zone", v_back, False), (5, "enter", "zone2", v_other, False),
                       (5, "exit", "zone", v_deleted, True), (6, "exit", "zone2", v_gone, True)]
        docs = sorted((d["_source"][PRESET.time], d["_source"]["geofences"]) for d in await all_docs(es, index))
        assert [g for _, g in docs] == [[], ["zone"], [], ["zone"], ["zone2"], []]
    finally:
        await cleanup_topics(kafka_admin, [f"{topic}-"])


def far_fences(tmp_path: Path) -> Path:
    far = tmp_path / "far.geojson"
    far.write_text(json.dumps({"type": "FeatureCollection", "features": [{**fence(box(10, 10, 11, 11)), "id": "far"}]}))
    return far


async def test_create_change_delete_and_restart_give_the_documented_alerts(stack, es, kafka_admin, new_topic,
                                                                            agent_env, tmp_path):
    topic = await new_topic("live", partitions=2)
    env = agent_env(topic, IOT_GEOFENCES=str(far_fences(tmp_path)))
    log = tmp_path / "worker.log"
    worker: list[Worker] = []

    def start() -> None:
        worker.append(Worker(env, log).start())

    def stop() -> None:
        while worker:
            worker.pop().stop()

    await scenario(stack, es, kafka_admin, topic, env["IOT_INDEX"], Runtime(start, stop, lambda v: applied(log, v)))
