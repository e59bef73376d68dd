"""Latency of /api/latest (through `python -m web`, answered from its live mirror, web.live) over 10,000
tracks, against the Elasticsearch query the API sent before the mirror (the ``_latest`` index) sent directly,
in the same run.

    .venv/bin/python -m bench.web_latest_latency [--tracks 10000] [--requests 300] [--skip-direct]
        [--baseline-root /path/to/other/checkout] [--workers 1] [--decompress]

Writes ``--tracks`` latest positions (one per track, the agents' latest action, geoiot.documents) spread over
New York into ``<index>_latest`` and the same documents into the live topic ``<index>-<tracks>-latest`` (as
the worker publishes them; both re-used between runs; ``--skip-direct``: the topic only, no baseline), starts
the web server as a subprocess on that topic, then for a city view (zoom 11 over
Manhattan, the default limit of 1,000 positions) and a street view (zoom 15) measures p50/p95 with 1 and 20
concurrent clients on both paths, alternating them so both see the same machine load. Every request has its
own bbox (shifted by 1e-6 degree each), so the server's 1 s answer cache cannot serve it: this measures the
query path. Those views select the same rows (as one city on screens of other sizes), so the server's memos of
identical answers (web.live.table.AnswerMemo, web.compression) serve their joining and compression; in the case
"city-moving" each view moves 2e-4 degree further (up to 0.2: from all the tracks to half of them in view), so views select different rows and nothing
but the 1 s cache could be shared (it is not: every bbox differs). A last case, "shared", has the 20 clients ask for one city view, as screens watching one fleet do:
there the cache coalesces them (the direct path still searches every time). The client asks for gzip as
browsers do; it reads the compressed bytes without decoding them (``--decompress``: decode, as aiohttp does by
default), so that on a 2-core machine the client's own CPU takes as little from the server as it can (its CPU
per request is reported). ``--baseline-root``: a second server started from another checkout (say the main
branch's) on the same topic, measured in the same run, alternating with this one ("before" in the table).
``--workers``: both servers run ``python -m web --workers N`` (N processes on one port, each its own mirror).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gzip
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from elasticsearch import AsyncElasticsearch
from elasticsearch.serializer import OrjsonSerializer

from agents.store.index import drop_index
from bench.web_aggregate_latency import pct, run, view_bbox
from geoiot import config, documents, topics
from geoiot.schema import load_preset
from testkit import es_latest
from testkit.health import wait_healthy
from testkit.large_views import ensure_latest, publish_latest
from web import params
from web.search import ES_CONNECTIONS

ROOT = Path(__file__).resolve().parent.parent
T0 = 1_356_998_400_000


def shifted(bbox: list[float], i: int, step: float = 1e-6) -> str:
    d = (i % 1000) * step
    return ",".join(f"{v + d:.6f}" for v in bbox)


# view -> (zoom, degrees each request's bbox moves from the last, requests (clients) in the case)
VIEWS = {"city": (11, 1e-6, (1, 20)), "street": (15, 1e-6, (1, 20)), "shared": (11, 0.0, (20,)),
         "city-moving": (11, 2e-4, (20,))}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tracks", type=int, default=10_000)
    parser.add_argument("--index", default="bench-latest")
    parser.add_argument("--requests", type=int, default=300, help="requests per (path, view, clients) case")
    parser.add_argument("--drop", action="store_true", help="delete the benchmark indices afterwards")
    parser.add_argument("--skip-direct", action="store_true",
                        help="no Elasticsearch baseline (at a million tracks its index takes long to write)")
    parser.add_argument("--baseline-root", type=Path, default=None,
                        help="also measure a server started from this checkout (the same run's 'before')")
    parser.add_argument("--workers", type=int, default=1, help="web server processes on one port")
    parser.add_argument("--decompress", action="store_true", help="the client decodes the gzip answers")
    args = parser.parse_args()

    settings = config.load(iot_index=args.index)
    preset = load_preset(settings.iot_schema)
    es = AsyncElasticsearch(settings.es_hosts, request_timeout=60, connections_per_node=ES_CONNECTIONS,
                            serializer=OrjsonSerializer())
    count = args.tracks if args.skip_direct else await ensure_latest(es, settings, args.tracks, t0=T0, seed=14,
                                                                     heading=True)
    latest = documents.latest_index(args.index)
    live_settings = dataclasses.replace(settings, iot_latest_topic=f"{args.index}-{args.tracks}-latest")
    async with topics.admin_client(settings.kafka_bootstrap) as admin:
        if live_settings.latest_topic not in await admin.list_topics():
            await publish_latest(live_settings, preset, args.tracks, t0=T0, seed=14, heading=True, partitions=3)
    servers: dict[str, tuple[subprocess.Popen[bytes], str]] = {}
    roots = {"web": ROOT, **({"before": args.baseline_root.resolve()} if args.baseline_root else {})}
    for label, root in roots.items():
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        env = dict(os.environ, IOT_INDEX=args.index, WEB_PORT=str(port), PYTHONPATH=str(root),
                   IOT_LATEST_TOPIC=live_settings.latest_topic, IOT_ALERTS_TOPIC=f"{args.index}-alerts")
        proc = subprocess.Popen([sys.executable, "-m", "web", "--log-level", "WARNING", "--workers", str(args.workers)],
                                cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        servers[label] = (proc, f"http://127.0.0.1:{port}")
    paths = (() if args.skip_direct else ("direct",)) + tuple(servers)
    results: list[dict[str, Any]] = []
    try:
        async with aiohttp.ClientSession(headers={"Accept-Encoding": "gzip"}, auto_decompress=args.decompress,
                                         connector=aiohttp.TCPConnector(limit=100)) as http:
            for _, base in servers.values():
                await wait_healthy(http, base, timeout=600)
            for name, (zoom, step, client_counts) in VIEWS.items():
                bbox = view_bbox(zoom)

                async def direct(i: int) -> None:
                    p = params.LatestParams(params.parse_bbox(shifted(bbox, i, step)), params.DEFAULT_LIMIT)
                    resp = await es.search(index=latest, **es_latest.latest_body(preset, p))
                    assert "hits" in resp.body

                server_ms: dict[str, list[float]] = {label: [] for label in servers}

                def via(label: str) -> Any:
                    base = servers[label][1]

                    async def call(i: int) -> None:
                        async with http.get(f"{base}/api/latest", params={"bbox": shifted(bbox, i, step)}) as r:
                            assert r.status == 200, await r.text()
                            await r.read()
                            server_ms[label].append(float(r.headers["Server-Timing"].removeprefix("app;dur=")))
                    return call

                calls = {"direct": direct, **{label: via(label) for label in servers}}
                async with http.get(f"{servers['web'][1]}/api/latest", params={"bbox": shifted(bbox, 0)}) as r:
                    sample = orjson.loads(await r.read() if not r.headers.get("Content-Encoding") else
                                          gzip.decompress(await r.read()))
                for clients in client_counts:
                    n = args.requests if clients == 1 else args.requests * 3
                    case: dict[str, Any] = {"view": name, "zoom": zoom, "tracks_in_view": sample["total"],
                                            "returned": len(sample["features"]), "clients": clients,
                                            "requests": n}
                    for label in paths:  # warm-up
                        await run(clients, 20, calls[label])
                    lat: dict[str, list[float]] = {label: [] for label in paths}
                    cpu: dict[str, float] = {label: 0.0 for label in paths}
                    for ms in server_ms.values():
                        ms.clear()
                    for half in range(2):  # alternate the paths: all see the same machine load
                        for label in paths:
                            began = time.process_time()
                            lat[label] += await run(clients, n // 2, lambda i: calls[label](half * n + i))
                            cpu[label] += time.process_time() - began
                    for label in paths:
                        case[f"{label}_p50_ms"] = round(pct(lat[label], 50), 2)
                        case[f"{label}_p95_ms"] = round(pct(lat[label], 95), 2)
                        case[f"{label}_client_cpu_ms"] = round(cpu[label] / len(lat[label]) * 1000, 3)
                    for label, ms in server_ms.items():
                        case[f"{label}_server_p50_ms"] = round(pct(ms, 50), 2)
                        case[f"{label}_server_p95_ms"] = round(pct(ms, 95), 2)
                    results.append(case)
                    print(json.dumps(case), file=sys.stderr)
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait(10)
        if args.drop:
            await drop_index(es, args.index)
        await es.close()

    print(f"\n{count:,} tracks; p50 / p95 in ms (client; server: the server's own time per request, "
          f"Server-Timing); client CPU in ms per request; {args.workers} server process(es)\n")
    cols = [label for label in paths]
    print("| view (zoom) | tracks in view | returned | clients | "
          + " | ".join(f"{c} p50 / p95" for c in cols) + " | "
          + " | ".join(f"{c} server p50 / p95" for c in servers) + " | client CPU |")
    print("|---|---|---|---|" + "---|" * (len(cols) + len(servers) + 1))
    for c in results:
        print(f"| {c['view']} ({c['zoom']}) | {c['tracks_in_view']:,} | {c['returned']:,} | {c['clients']} | "
              + " | ".join(f"{c[f'{p}_p50_ms']} / {c[f'{p}_p95_ms']}" for p in cols) + " | "
              + " | ".join(f"{c[f'{p}_server_p50_ms']} / {c[f'{p}_server_p95_ms']}" for p in servers) + " | "
              + " / ".join(f"{c[f'{p}_client_cpu_ms']}" for p in cols) + " |")

if __name__ == "__main__":
    asyncio.run(main())
