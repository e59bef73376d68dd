"""CPU of the web server serving /api/events from its live mirror: ``--clients`` streams on ``--views`` views
while the live topic moves tracks, against the same server with no stream open (its mirror following the
same writes), in the same run.

    .venv/bin/python -m bench.web_events_cpu [--clients 1000] [--views 100] [--seconds 20]

Publishes 10,000 latest documents (testkit.large_views, as bench.web_latest_latency) into a live topic of its
own, starts ``python -m web`` on it (WEB_SSE_REFRESH 1 s, WEB_SSE_MAX_CLIENTS above --clients), then in two
phases of ``--seconds`` each, while a writer publishes 50 newer documents per second: idle (no client), then
``--clients`` SSE streams spread over ``--views`` street-sized views over New York. Reports the server's cores
(CPU seconds / wall seconds, /proc) in each phase and the events the clients read.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from geoiot import config, topics
from geoiot.schema import load_preset
from testkit import live
from testkit.health import wait_healthy
from testkit.large_views import latest_documents, publish_latest
from testkit.observations import NYC, on_grid
from testkit.processes import proc_stat

ROOT = Path(__file__).resolve().parent.parent
T0 = 1_356_998_400_000
TRACKS = 10_000


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--views", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    settings = config.load(iot_index="bench-events-cpu", iot_latest_topic=f"bench-events-cpu-{os.getpid()}-latest")
    preset = load_preset(settings.iot_schema)
    await publish_latest(settings, preset, TRACKS, t0=T0, seed=14, partitions=3)
    docs = {d[preset.track]: d for d in latest_documents(preset, TRACKS, t0=T0, seed=14)}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, IOT_INDEX=settings.iot_index, IOT_LATEST_TOPIC=settings.latest_topic, WEB_PORT=str(port),
               PYTHONPATH=str(ROOT), WEB_SSE_REFRESH="1", WEB_SSE_MAX_CLIENTS=str(args.clients + 10),
               WEB_SSE_MAX_VIEWS=str(args.views + 10), IOT_ALERTS_TOPIC="bench-events-cpu-alerts")
    server = subprocess.Popen([sys.executable, "-m", "web", "--log-level", "WARNING"], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    rng = random.Random(3)
    w, s_, e, n = NYC
    views = []
    for _ in range(args.views):
        lon, lat = rng.uniform(w, e - 0.02), rng.uniform(s_, n - 0.02)
        views.append(f"{lon:.5f},{lat:.5f},{lon + 0.02:.5f},{lat + 0.015:.5f}")
    stop = asyncio.Event()
    producer = live.transactional_producer(settings.kafka_bootstrap)
    await producer.start()

    async def writer() -> None:
        tracks = list(docs)
        k = 0
        while not stop.is_set():
            batch = []
            for _ in range(50):
                track = tracks[rng.randrange(len(tracks))]
                d = docs[track]
                k += 1
                lon, lat = on_grid(rng.uniform(w, e), rng.uniform(s_, n))
                d = docs[track] = dict(d, **{preset.time: d[preset.time] + 1000 + k, "geometry": {"lon": lon, "lat": lat},
                                             preset.lon: lon, preset.lat: lat})
                batch.append((track, d))
            await live.publish(producer, settings.latest_topic, batch, 3)
            await asyncio.sleep(1.0)

    events = 0

    async def client(session: aiohttp.ClientSession, i: int) -> None:
        nonlocal events
        async with session.get(f"{base}/api/events", params={"bbox": views[i % len(views)], "limit": "100"}) as r:
            assert r.status == 200, await r.text()
            async for line in r.content:
                if line.startswith(b"event:"):
                    events += 1
                if stop.is_set():
                    return

    results = {}
    try:
        timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
        async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as http:
            await wait_healthy(http, base, timeout=120)
            write_task = asyncio.create_task(writer())
            await asyncio.sleep(2.0)
            for phase in ("idle", "streams"):
                tasks = ([asyncio.create_task(client(http, i)) for i in range(args.clients)]
                         if phase == "streams" else [])
                await asyncio.sleep(3.0 if tasks else 0.0)  # the streams open and get their first view
                events = 0
                cpu0, t0 = proc_stat(server.pid)[1], time.monotonic()
                await asyncio.sleep(args.seconds)
                cpu1, t1 = proc_stat(server.pid)[1], time.monotonic()
                results[phase] = {"cores": round((cpu1 - cpu0) / (t1 - t0), 3), "events": events}
                for t in tasks:
                    t.cancel()
            stop.set()
            write_task.cancel()
    finally:
        await producer.stop()
        server.terminate()
        server.wait(30)
        async with topics.admin_client(settings.kafka_bootstrap) as admin:
            await topics.delete(admin, [settings.latest_topic])
    print(json.dumps({"clients": args.clients, "views": args.views, "seconds": args.seconds,
                      "load_avg": os.getloadavg()[0], **results,
                      "streams_minus_idle_cores": round(results["streams"]["cores"] - results["idle"]["cores"], 3)}))


if __name__ == "__main__":
    asyncio.run(main())
