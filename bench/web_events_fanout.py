"""Searches Elasticsearch sees for 200 map clients on 10 distinct views: /api/events (shared fan-out) against
the same clients polling /api/latest once per refresh period (the map's fallback), in the same run.

    .venv/bin/python -m bench.web_events_fanout [--clients 200] [--views 10] [--seconds 20]

Writes 10,000 latest positions (bench.web_latest_latency's data), starts `python -m web` with
WEB_SSE_REFRESH=--refresh, and while a writer moves 50 tracks per second (newer versions of their latest
documents), runs each phase for ``--seconds``:

- events: ``--clients`` SSE streams spread over ``--views`` views (street-sized boxes over New York);
- polling: the same clients, each GET /api/latest of its view once per refresh period.

Searches per second come from Elasticsearch's own statistics of the latest index (``_stats/search``,
primaries' query_total: one per search on its one shard), not from the server. The expected figure for
events is views / refresh; for polling, clients / refresh.
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
from typing import Any

import aiohttp
from elasticsearch import AsyncElasticsearch
from elasticsearch.helpers import async_bulk

from bench.web_latest_latency import prepare
from geoiot import config, documents
from geoiot.schema import load_preset
from testkit.health import wait_healthy
from testkit.observations import NYC, document, on_grid
from testkit.sse import Stream, parse
from testkit import actions as es_actions

ROOT = Path(__file__).resolve().parent.parent


def views(n: int) -> list[str]:
    rng = random.Random(10)
    w, s, e, nth = NYC
    out = []
    for _ in range(n):
        lon, lat = rng.uniform(w, e - 0.05), rng.uniform(s, nth - 0.04)
        out.append(f"{lon:.5f},{lat:.5f},{lon + 0.05:.5f},{lat + 0.04:.5f}")
    return out


async def query_total(es: AsyncElasticsearch, index: str) -> int:
    stats = await es.indices.stats(index=index, metric="search")
    return int(stats["indices"][index]["primaries"]["search"]["query_total"])


async def writer(es: AsyncElasticsearch, base: str, tracks: int, per_second: int, stop: asyncio.Event) -> int:
    preset = load_preset("taxi")
    rng = random.Random(5)
    w, s, e, n = NYC
    # now, in ms: after every prepared position and every earlier run's, so no report is refused as older
    t, written = int(time.time() * 1000), 0
    while not stop.is_set():
        began = time.perf_counter()
        actions = []
        for _ in range(per_second):
            t += 1
            track = f"cab-{rng.randrange(tracks):05d}"
            lon, lat = on_grid(rng.uniform(w, e), rng.uniform(s, n))
            doc = document(preset, track, t, lon, lat, [], speed=rng.uniform(0, 30))
            actions.append(es_actions.latest_action(base, track, t, doc))
        await async_bulk(es, actions, raise_on_error=False)
        written += len(actions)
        await asyncio.sleep(max(0.0, 1.0 - (time.perf_counter() - began)))
    return written


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--views", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--refresh", type=float, default=1.0, help="WEB_SSE_REFRESH and the polling period")
    parser.add_argument("--tracks", type=int, default=10_000)
    parser.add_argument("--index", default="bench-latest")
    args = parser.parse_args()

    settings = config.load(iot_index=args.index)
    es = AsyncElasticsearch(settings.es_hosts, request_timeout=60)
    await prepare(es, settings, args.tracks)
    latest = documents.latest_index(args.index)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, IOT_INDEX=args.index, WEB_PORT=str(port), PYTHONPATH=str(ROOT),
               IOT_ALERTS_TOPIC=f"{args.index}-alerts", WEB_SSE_REFRESH=str(args.refresh),
               WEB_ES_QUEUE="100000")
    server = subprocess.Popen([sys.executable, "-m", "web", "--log-level", "WARNING"], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    boxes = views(args.views)
    results: dict[str, dict[str, Any]] = {}
    stop_writer = asyncio.Event()
    writing = asyncio.create_task(writer(es, args.index, args.tracks, 50, stop_writer))
    try:
        timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
        async with aiohttp.ClientSession(timeout=timeout,
                                         connector=aiohttp.TCPConnector(limit=args.clients + 10)) as http:
            await wait_healthy(http, base)

            # events: every client one stream; count what arrives
            streams = [Stream() for _ in range(args.clients)]
            responses = [await http.get(f"{base}/api/events", params={"bbox": boxes[i % args.views]})
                         for i in range(args.clients)]

            async def consume(resp: aiohttp.ClientResponse, stream: Stream) -> None:
                async for _ in parse(resp.content, stream):
                    pass

            readers = [asyncio.create_task(consume(r, s)) for r, s in zip(responses, streams)]
            while any(not s.of("latest") for s in streams):  # every client has its whole view
                await asyncio.sleep(0.1)
            q0, t0 = await query_total(es, latest), time.perf_counter()
            before = [len(s.events) for s in streams]
            await asyncio.sleep(args.seconds)
            q1, t1 = await query_total(es, latest), time.perf_counter()
            after = [len(s.events) for s in streams]
            metrics = await (await http.get(f"{base}/metrics")).text()
            for task in readers:
                task.cancel()
            for r in responses:
                r.close()
            dropped = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                          if line.startswith("geoiot_web_sse_dropped_total{"))
            results["events"] = {"searches_per_s": round((q1 - q0) / (t1 - t0), 2),
                                 "expected_per_s": round(args.views / args.refresh, 2),
                                 "events_per_client_per_s": round(sum(a - b for a, b in zip(after, before))
                                                                  / args.clients / (t1 - t0), 2),
                                 "dropped": dropped}
            print(json.dumps(results["events"]), file=sys.stderr)
            await asyncio.sleep(2 * args.refresh)  # the views end

            # polling: every client GETs its view once per period
            answers = 0
            stop = asyncio.Event()

            async def poll(i: int) -> None:
                nonlocal answers
                await asyncio.sleep(random.random() * args.refresh)
                while not stop.is_set():
                    began = time.perf_counter()
                    async with http.get(f"{base}/api/latest", params={"bbox": boxes[i % args.views]}) as r:
                        await r.read()
                        answers += r.status == 200
                    await asyncio.sleep(max(0.0, args.refresh - (time.perf_counter() - began)))

            pollers = [asyncio.create_task(poll(i)) for i in range(args.clients)]
            await asyncio.sleep(args.refresh)
            q0, t0, a0 = await query_total(es, latest), time.perf_counter(), answers
            await asyncio.sleep(args.seconds)
            q1, t1, a1 = await query_total(es, latest), time.perf_counter(), answers
            stop.set()
            await asyncio.gather(*pollers, return_exceptions=True)
            results["polling"] = {"searches_per_s": round((q1 - q0) / (t1 - t0), 2),
                                  "expected_per_s": round(args.clients / args.refresh, 2),
                                  "answers_per_s": round((a1 - a0) / (t1 - t0), 2)}
            print(json.dumps(results["polling"]), file=sys.stderr)
    finally:
        stop_writer.set()
        written = await writing
        server.terminate()
        server.wait(10)
        await es.close()

    ratio = results["polling"]["searches_per_s"] / max(results["events"]["searches_per_s"], 1e-9)
    print(f"\n{args.clients} clients on {args.views} views, refresh {args.refresh:g} s, {args.seconds:g} s a phase, "
          f"{written} position updates written meanwhile; Elasticsearch searches/s from its own _stats\n")
    print("| path | ES searches/s (measured) | expected | other |")
    print("|---|---|---|---|")
    e, p = results["events"], results["polling"]
    print(f"| /api/events (shared fan-out) | {e['searches_per_s']} | views/refresh = {e['expected_per_s']} | "
          f"{e['events_per_client_per_s']} events/client/s, {e['dropped']:g} dropped |")
    print(f"| /api/latest polling (same clients) | {p['searches_per_s']} | clients/refresh = {p['expected_per_s']} | "
          f"{p['answers_per_s']} answers/s |")
    print(f"\nratio polling / events: {ratio:.1f}")


if __name__ == "__main__":
    asyncio.run(main())
