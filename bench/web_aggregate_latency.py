"""Latency of /api/aggregate (through `python -m web`) against the same Elasticsearch query sent directly.

    .venv/bin/python -m bench.web_aggregate_latency --docs 1000000

Indexes ``--docs`` generated observations (testkit.observations: the agents' documents) into ``--index`` once
(re-used when it already holds that many), starts the web server as a subprocess, then for city (zoom 11)
and street (zoom 16) views over Manhattan measures p50/p95 with 1 and 20 concurrent clients, for both paths,
in the same run. Every request has a distinct ``end`` (1 ms apart, past the data) so neither the server's
1 s cache nor Elasticsearch's request cache answers: this measures the query path. The client asks for gzip
as browsers do, so the server path includes compression.

Both paths use equally lean clients: the direct one is the server's own Elasticsearch client configuration
(orjson serializer, 32 connections), the web one a single aiohttp session (100 connections). The server's
own time per request (its Server-Timing header) and the load generator's CPU use are reported as well, so a
slow load generator or network can be told from a slow server, and so is the CPU time per request of
Elasticsearch (each path) and of the server process, from /proc: on a machine where all of them share the
cores, those decide the 20-client figures. ``--workers``/``--uvloop`` are passed to ``python -m web``.
``--pin-es-cpu N`` is an experiment, not the headline: Elasticsearch's threads on CPU N only, the server and
the load generator on the others, as if Elasticsearch had its own machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
from elasticsearch import AsyncElasticsearch
from elasticsearch.serializer import OrjsonSerializer

ROOT = Path(__file__).resolve().parent.parent

from agents.store.index import drop_index, ensure_index
from geoiot import config
from testkit.health import wait_healthy
from geoiot.schema import load_preset
from web import params, where
from web.search import ES_CONNECTIONS
from web.geo import precision_for_zoom
from testkit.observations import bulk_index, walk
from bench.procstat import cpu_seconds, service_pids

CENTER = (-73.97, 40.76)
VIEWPORT = (1280, 800)  # px
T0 = 1_356_998_400_000


def view_bbox(zoom: int) -> list[float]:
    """The bbox a 1280x800 map shows at ``zoom`` around Manhattan (Web Mercator, approximated locally)."""
    import math
    deg_per_px = 360 / (256 * 2**zoom)
    half_w = VIEWPORT[0] / 2 * deg_per_px
    half_h = VIEWPORT[1] / 2 * deg_per_px * math.cos(math.radians(CENTER[1]))
    return [round(CENTER[0] - half_w, 6), round(CENTER[1] - half_h, 6),
            round(CENTER[0] + half_w, 6), round(CENTER[1] + half_h, 6)]


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if len(values) > 1 else values[0]


async def prepare(es: AsyncElasticsearch, settings: config.Settings, n: int) -> int:
    preset = load_preset(settings.iot_schema)
    await ensure_index(es, settings, preset, index=settings.iot_index)
    have = (await es.options(ignore_status=404).count(index=settings.iot_index)).body.get("count", 0)
    if have == n:
        return n
    await es.options(ignore_status=404).indices.delete(index=f"{settings.iot_index}-*")
    began = time.perf_counter()
    # 200 taxis, one report each 30 s: 1,000,000 reports span ~42 hours (two or three daily indices).
    docs = walk(preset, n, tracks=200, start_ms=T0, step_ms=30_000, seed=42)
    count = await bulk_index(es, settings.iot_index, preset, docs, chunk_size=5_000)
    await es.indices.refresh(index=settings.iot_index)
    print(f"indexed {count} docs in {time.perf_counter() - began:.1f} s", file=sys.stderr)
    return count


async def run(clients: int, requests: int, call: Any) -> list[float]:
    """``requests`` calls spread over ``clients`` concurrent workers; latencies in ms."""
    latencies: list[float] = []
    counter = iter(range(requests))

    async def worker() -> None:
        for i in counter:
            began = time.perf_counter()
            await call(i)
            latencies.append((time.perf_counter() - began) * 1000)

    await asyncio.gather(*(worker() for _ in range(clients)))
    return latencies


def pin_elasticsearch(cpu: int):
    """Every thread of the local stack's Elasticsearch on ``cpu``, this process (and so the server it starts)
    on the other CPUs. Returns the function that puts everything back."""
    pid = service_pids().get("elasticsearch")
    if pid is None:
        raise SystemExit("--pin-es-cpu: no Elasticsearch pid file of the local stack (infra/local/stack up)")
    everything = os.sched_getaffinity(0)
    others = everything - {cpu}
    if cpu not in everything or not others:
        raise SystemExit(f"--pin-es-cpu {cpu}: needs that CPU and at least one other ({sorted(everything)})")
    tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    for tid in tids:
        os.sched_setaffinity(tid, {cpu})
    os.sched_setaffinity(0, others)
    print(f"pinned: elasticsearch (pid {pid}, {len(tids)} threads) on CPU {cpu}, "
          f"server and load generator on {sorted(others)}", file=sys.stderr)

    def restore() -> None:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                os.sched_setaffinity(int(tid), everything)
            except ProcessLookupError:
                pass
        os.sched_setaffinity(0, everything)

    return restore


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=1_000_000)
    parser.add_argument("--index", default="bench-web")
    parser.add_argument("--requests", type=int, default=300, help="requests per (path, view, clients) case")
    parser.add_argument("--drop", action="store_true", help="delete the benchmark index afterwards")
    parser.add_argument("--workers", type=int, default=1, help="server processes (python -m web --workers)")
    parser.add_argument("--uvloop", action="store_true", help="run the server on uvloop (if installed)")
    parser.add_argument("--pin-es-cpu", type=int, metavar="CPU",
                        help="experiment: Elasticsearch's threads on this CPU only, the server and this load "
                             "generator on the others (as if Elasticsearch had a machine of its own); restored after")
    args = parser.parse_args()
    restore = pin_elasticsearch(args.pin_es_cpu) if args.pin_es_cpu is not None else None

    settings = config.load(iot_index=args.index)
    preset = load_preset(settings.iot_schema)
    # the same client configuration as the server's (web.app.es_ctx), so the ratio compares like with like
    es = AsyncElasticsearch(settings.es_hosts, request_timeout=60, connections_per_node=ES_CONNECTIONS,
                            serializer=OrjsonSerializer())
    count = await prepare(es, settings, args.docs)
    es_pid = service_pids().get("elasticsearch")  # the local stack's; its CPU figures read 0 without it
    extent_end = T0 + (args.docs // 200) * 30_000 + 1

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, IOT_INDEX=args.index, WEB_PORT=str(port), PYTHONPATH=str(ROOT),
               IOT_ALERTS_TOPIC=f"{args.index}-alerts")
    flags = ["--workers", str(args.workers)] + (["--uvloop"] if args.uvloop else [])
    server = subprocess.Popen([sys.executable, "-m", "web", "--log-level", "WARNING", *flags], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    results: list[dict[str, Any]] = []
    try:
        async with aiohttp.ClientSession(headers={"Accept-Encoding": "gzip"},
                                         connector=aiohttp.TCPConnector(limit=100)) as http:
            await wait_healthy(http, base)
            for name, zoom in (("city", 11), ("street", 16)):
                bbox = view_bbox(zoom)
                bbox_text = ",".join(map(str, bbox))

                def body(i: int) -> dict[str, Any]:
                    p = params.AggregateParams(params.parse_bbox(bbox_text), params.Window(T0, extent_end + i),
                                               precision_for_zoom(zoom), None)
                    return where.aggregate_body(preset, p)

                async def direct(i: int) -> None:
                    resp = await es.search(index=args.index, **body(i))
                    assert "aggregations" in resp.body

                server_ms: list[float] = []

                async def via_web(i: int) -> None:
                    async with http.get(f"{base}/api/aggregate", params={
                            "bbox": bbox_text, "zoom": str(zoom), "start": str(T0), "end": str(extent_end + i)}) as r:
                        assert r.status == 200, await r.text()
                        await r.read()
                        server_ms.append(float(r.headers["Server-Timing"].removeprefix("app;dur=")))

                sample = await es.search(index=args.index, **body(0))
                in_view = sample.body["hits"]["total"]["value"]
                cells = len(sample.body["aggregations"]["cells"]["buckets"])
                offset = 0
                for clients in (1, 20):
                    n = args.requests if clients == 1 else args.requests * 3
                    case: dict[str, Any] = {"view": name, "zoom": zoom, "docs_in_view": in_view, "cells": cells,
                                            "clients": clients, "requests": n}
                    # warm-up, then alternate the two paths so both see the same machine load
                    await run(clients, 20, lambda i: direct(10**7 + offset + i))
                    await run(clients, 20, lambda i: via_web(10**7 + offset + i))
                    lat_direct: list[float] = []
                    lat_web: list[float] = []
                    server_ms.clear()
                    # the load generator's CPU per path: near 100 % would mean it, not the server, limits the rate
                    cpu = {"direct": 0.0, "web": 0.0}
                    server_cpu = 0.0
                    es_cpu = {"direct": 0.0, "web": 0.0}
                    wall = {"direct": 0.0, "web": 0.0}
                    for half in range(2):
                        for label, lat, call in (("direct", lat_direct, direct), ("web", lat_web, via_web)):
                            c0, w0 = time.process_time(), time.perf_counter()
                            s0, e0 = cpu_seconds(server.pid, children=True), cpu_seconds(es_pid) if es_pid else 0.0
                            lat += await run(clients, n // 2, lambda i: call(offset + half * n + i))
                            cpu[label] += time.process_time() - c0
                            wall[label] += time.perf_counter() - w0
                            es_cpu[label] += (cpu_seconds(es_pid) if es_pid else 0.0) - e0
                            if label == "web":
                                server_cpu += cpu_seconds(server.pid, children=True) - s0
                    offset += 4 * n
                    for label, lat in (("direct", lat_direct), ("web", lat_web)):
                        case[f"{label}_p50_ms"] = round(pct(lat, 50), 2)
                        case[f"{label}_p95_ms"] = round(pct(lat, 95), 2)
                        case[f"{label}_rps"] = round(len(lat) / wall[label], 1)
                        case[f"loadgen_cpu_{label}_pct"] = round(100 * cpu[label] / wall[label], 1)
                    case["server_p50_ms"] = round(pct(server_ms, 50), 2)
                    case["server_p95_ms"] = round(pct(server_ms, 95), 2)
                    case["server_cpu_ms_per_request"] = round(1000 * server_cpu / len(lat_web), 2)
                    for label, lat in (("direct", lat_direct), ("web", lat_web)):
                        case[f"es_cpu_ms_per_request_{label}"] = round(1000 * es_cpu[label] / len(lat), 2)
                    case["p95_ratio"] = round(case["web_p95_ms"] / case["direct_p95_ms"], 2)
                    case["p50_ratio"] = round(case["web_p50_ms"] / case["direct_p50_ms"], 2)
                    results.append(case)
                    print(json.dumps(case), file=sys.stderr)
    finally:
        server.terminate()
        server.wait(10)
        if restore is not None:
            restore()
        if args.drop:
            await drop_index(es, args.index)
        await es.close()

    print(f"\n{count:,} indexed observations; p50/p95 in ms; ratio = web / direct\n")
    print(f"server: python -m web --workers {args.workers}{' --uvloop' if args.uvloop else ''}; "
          "server = its own time per request (Server-Timing); req/s direct / web\n")
    print("| view (zoom, precision) | docs in view | cells | clients | direct p50 / p95 | web p50 / p95 | "
          "ratio p50 / p95 | server p50 / p95 | req/s | CPU ms per request: ES direct / ES web / server |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for c in results:
        print(f"| {c['view']} ({c['zoom']}, {precision_for_zoom(c['zoom'])}) | {c['docs_in_view']:,} | {c['cells']} | "
              f"{c['clients']} | {c['direct_p50_ms']} / {c['direct_p95_ms']} | {c['web_p50_ms']} / {c['web_p95_ms']} | "
              f"{c['p50_ratio']} / {c['p95_ratio']} | {c['server_p50_ms']} / {c['server_p95_ms']} | "
              f"{c['direct_rps']} / {c['web_rps']} | {c['es_cpu_ms_per_request_direct']} / "
              f"{c['es_cpu_ms_per_request_web']} / {c['server_cpu_ms_per_request']} |")


if __name__ == "__main__":
    asyncio.run(main())
