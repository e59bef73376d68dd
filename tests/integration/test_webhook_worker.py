"""The worker's webhook against a real hanging target (issue 22, item 8), on the real stack: the stream is
not held up, the circuit opens after a few hung requests (not one hang per alert), and every alert has its
outcome in /metrics (here ``expired``: older than IOT_WEBHOOK_MAX_AGE while the target hung)."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiohttp import web

from testkit.hook_target import serve_hook
from testkit.kafka_events import produce_keyed
from testkit.worker import Worker, cleanup_topics, wait_count

pytestmark = pytest.mark.integration

T0 = 1_357_000_000_000
INSIDE = (-73.78357, 40.64239)  # inside the shipped JFK fence
OUTSIDE = (-73.9, 40.7)
TRACKS = 20


async def test_a_hanging_target_neither_stalls_the_worker_nor_costs_a_hang_per_alert(
        stack, es, kafka_admin, new_topic, agent_env, output_dir):
    hung = []

    async def hang(request: web.Request) -> web.Response:
        hung.append(await request.read())
        await asyncio.sleep(3600)
        return web.Response(status=204)

    topic = await new_topic("hook", partitions=1)
    async with serve_hook(hang) as url:
        env = agent_env(topic, IOT_WEBHOOK_URL=url, IOT_WEBHOOK_MAX_AGE="2", IOT_WEBHOOK_COOLDOWN="3600")
        events = []
        for i in range(TRACKS):  # outside, inside (enter), outside (exit): two alerts a track
            for k, (lon, lat) in enumerate((OUTSIDE, INSIDE, OUTSIDE)):
                events.append({"taxiId": f"cab{i}", "observationTime": T0 + k * 1000, "longitude": lon,
                               "latitude": lat})
        await produce_keyed(stack.kafka_bootstrap, topic, events)
        worker = Worker(env, output_dir / f"{topic}.log").start()
        try:
            assert await wait_count(es, env["IOT_INDEX"], 3 * TRACKS, timeout=90, settle=1) == 3 * TRACKS
            deadline = time.monotonic() + 60
            outcomes: dict[str, float] = {}
            while time.monotonic() < deadline:
                metrics = worker.metrics()
                outcomes = {k.split('"')[1]: v for k, v in metrics.items()
                            if k.startswith("geoiot_agent_webhook_total{")}
                if sum(outcomes.values()) >= 2 * TRACKS:
                    break
                await asyncio.sleep(0.5)
            assert sum(metrics[k] for k in metrics if k.startswith("geoiot_agent_alerts_total{")) == 2 * TRACKS
            assert sum(outcomes.values()) == 2 * TRACKS and outcomes.get("sent", 0) == 0
            assert outcomes.get("expired", 0) >= 2 * TRACKS - 8  # at most the 8 first in flight end as failed
            assert metrics["geoiot_agent_webhook_circuit_open"] == 1
            assert len(hung) <= 5 + 8  # the breaker's 5 failed attempts, plus those already in flight
        finally:
            worker.stop()
            await cleanup_topics(kafka_admin, [f"{topic}-"])
