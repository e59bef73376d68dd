"""Live geofences end to end: from a ``PUT /api/geofences/{id}`` to the first alert it causes, with N fences loaded.

A real worker (``python -m faust -A agents.app worker``) and the web application (in this process, on a free
port) on the running Kafka and Elasticsearch. The fence topic holds ``--fences`` fences (those of
``bench.geofence_throughput``) before both start. One track reports from the same point every
``--every`` seconds. Each round PUTs a new fence around that point and waits for its ``enter`` alert on the alerts
topic; measured: the PUT's answer (Kafka acknowledged, the server's mirror shows it) and PUT -> alert.

Baseline, same run: report -> alert for a fence already in force (a second track alternates between a point
inside and one outside a fixed fence): what the pipeline alone takes from an event to its alert, which every
PUT -> alert includes (plus the wait for the track's next report, up to ``--every``).

    .venv/bin/python -m bench.fence_put_to_alert [--fences 10000] [--rounds 10] [--every 0.2]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp
import numpy as np
import orjson
import shapely
from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from elasticsearch import AsyncElasticsearch

from agents.store.index import drop_index
from bench.agents_end_to_end import start_workers, stop_workers
from bench.geofence_throughput import fences as make_fences
from geoiot import config, fence_topic, fences, topics
from testkit.processes import free_port
from web.app import init_app

P = (-73.70, 40.60)  # outside the benchmark's fences (they cover New York City west of -73.75)
Q_IN, Q_OUT = (-73.60, 40.55), (-73.50, 40.55)  # the baseline track: inside and outside its fixed fence
TOKEN = "bench-fence-token-0123456789"


def square(x: float, y: float, r: float) -> dict:
    return {"type": "Feature", "properties": {},
            "geometry": {"type": "Polygon", "coordinates": [[[x - r, y - r], [x + r, y - r], [x + r, y + r],
                                                             [x - r, y + r], [x - r, y - r]]]}}


async def load_fences(settings: config.Settings, n: int) -> None:
    producer = fence_topic.make_producer(settings.kafka_bootstrap)
    await producer.start()
    try:
        index = make_fences(n, np.random.default_rng(1))
        for fid, geom in zip(index.ids, index.geometries):
            feature = fences.check_feature(fid, {"type": "Feature", "geometry": orjson.loads(shapely.to_geojson(geom))})
            await producer.send(settings.fences_topic, fences.encode(feature)[1], key=fid.encode(), partition=0)
        key, value = fences.encode(fences.check_feature("fixed", square(Q_IN[0], Q_IN[1], 0.01)))
        await producer.send_and_wait(settings.fences_topic, value, key=key, partition=0)
    finally:
        await producer.stop()


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fences", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--every", type=float, default=0.2, help="seconds between two reports of a track")
    args = ap.parse_args()
    base = f"bench-fput-{uuid.uuid4().hex[:8]}"
    tmp = Path(tempfile.mkdtemp(prefix=base))
    (tmp / "tokens").write_text(f"{TOKEN} fences\n")
    (tmp / "none.geojson").write_text('{"type": "FeatureCollection", "features": []}')
    settings = dataclasses.replace(config.load(), iot_topic=base, iot_alerts_topic=f"{base}-alerts",
                                   iot_dlq_topic=f"{base}-dlq", iot_index=base, iot_app_id=base,
                                   iot_tokens_file=str(tmp / "tokens"), iot_geofences=str(tmp / "none.geojson"))
    await topics.ensure_topic(settings.kafka_bootstrap, topics.TopicSpec(base, 1))
    await fence_topic.ensure(settings)
    t = time.perf_counter()
    await load_fences(settings, args.fences)
    print(f"{args.fences + 1} fences written in {time.perf_counter() - t:.1f} s")
    env = {**os.environ, "IOT_TOPIC": base, "IOT_APP_ID": base,
           "IOT_INDEX": base, "IOT_DLQ_TOPIC": settings.iot_dlq_topic, "IOT_ALERTS_TOPIC": settings.iot_alerts_topic,
           "IOT_GEOFENCES": settings.iot_geofences, "IOT_BULK_WITHIN": "0.05"}
    workers = start_workers(1, env, tmp)
    runner = web.AppRunner(init_app(settings, consume_alerts=False))
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, linger_ms=0)
    await producer.start()
    alerts = AIOKafkaConsumer(settings.iot_alerts_topic, bootstrap_servers=settings.kafka_bootstrap,
                              auto_offset_reset="latest", group_id=None)
    await alerts.start()
    sent_at: dict[int, float] = {}  # baseline report time (ms) -> when it was sent
    stop = asyncio.Event()

    async def feed() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            now_ms = int(time.time() * 1000)
            where = Q_IN if n % 2 else Q_OUT
            for track, (lon, lat) in (("probe", P), ("baseline", where)):
                value = orjson.dumps({"taxiId": track, "observationTime": now_ms, "longitude": lon, "latitude": lat})
                await producer.send(base, value, key=track.encode())
            sent_at[now_ms] = time.perf_counter()
            await asyncio.sleep(args.every)

    feeder = asyncio.create_task(feed())
    puts, put_to_alert, baseline = [], [], []
    try:
        async with aiohttp.ClientSession() as http:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:  # the web server read the fence topic
                async with http.get(f"http://127.0.0.1:{port}/api/geofences") as resp:
                    if (await resp.json())["synced"]:
                        break
                await asyncio.sleep(1)
            while time.monotonic() < deadline:  # the worker is up once the baseline track's alerts come
                batch = await alerts.getmany(timeout_ms=1000)
                if any(m for ms in batch.values() for m in ms):
                    break
            for k in range(args.rounds):
                fid = f"probe-{k}"
                t0 = time.perf_counter()
                async with http.put(f"http://127.0.0.1:{port}/api/geofences/{fid}", json=square(P[0], P[1], 0.001 * (k + 1)),
                                    headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
                    assert resp.status == 200, await resp.text()
                puts.append(time.perf_counter() - t0)
                found = False
                while not found and time.perf_counter() - t0 < 60:
                    for ms in (await alerts.getmany(timeout_ms=200)).values():
                        for m in ms:
                            a = orjson.loads(m.value)
                            now = time.perf_counter()
                            if a["track"] == "probe" and a["fence"] == fid and a["event"] == "enter":
                                put_to_alert.append(now - t0)
                                found = True
                            elif a["track"] == "baseline" and a["time"] in sent_at:
                                baseline.append(now - sent_at[a["time"]])
                assert found, f"no enter alert for {fid} within 60 s"
    finally:
        stop.set()
        await feeder
        await alerts.stop()
        await producer.stop()
        await runner.cleanup()
        stop_workers(workers)
        await topics.delete_topics(settings.kafka_bootstrap, prefix=base)
        es = AsyncElasticsearch(settings.es_hosts)
        await drop_index(es, base)
        await es.close()

    med = statistics.median
    print(f"fences={args.fences + 1} rounds={args.rounds} report every {args.every} s")
    print(f"{'measure':<40} {'median s':>9} {'max s':>8} {'n':>4}")
    for name, xs in (("PUT answered (Kafka acked, mirror shows it)", puts), ("PUT -> first alert", put_to_alert),
                     ("report -> alert, fixed fence (baseline)", baseline)):
        print(f"{name:<40} {med(xs):>9.3f} {max(xs):>8.3f} {len(xs):>4}")


if __name__ == "__main__":
    asyncio.run(main())
