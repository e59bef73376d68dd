"""Latency of the OGC API's ``latest`` items pages (through `python -m web`, answered from its live mirror,
web.live.ogc_items) against the Elasticsearch path they replace (web.where.page_body on the ``_latest`` index,
shaped by web.ogc.shape: testkit.es_latest.ogc_page) run in this process, in the same run.

    .venv/bin/python -m bench.ogc_latest_items [--tracks 100000] [--index bench-latest-100k] [--requests 100]

Data: the latest positions of bench.web_latest_latency (testkit.large_views, one per track over New York, the
agents' document code) in ``<index>_latest`` and in the live topic ``<index>-<tracks>-latest`` (both re-used
between runs, created when missing). Cases: the first page of the whole collection (limit 10 and 1,000), a city
bbox with a CQL2 attribute filter, a CQL2 polygon, and a page deep in a scan (by its cursor: a full scan's
middle page). Each request has its own bbox or literal (shifted by 1e-6), one client, the two paths alternating
so both see the same machine load. Then a full scan of every track in pages of 10,000 on both paths
(features/s). Baseline ("ES") = the query the server sent before plus its shaping, without HTTP: a lower bound
of the old path's latency.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
from elasticsearch import AsyncElasticsearch
from elasticsearch.serializer import OrjsonSerializer
from multidict import MultiDict

from bench.web_aggregate_latency import pct, view_bbox
from geoiot import config, documents, topics
from geoiot.schema import load_preset
from testkit import es_latest
from testkit.health import wait_healthy
from testkit.large_views import ensure_latest, publish_latest
from web.ogc.params import items_params
from web.search import ES_CONNECTIONS

ROOT = Path(__file__).resolve().parent.parent
T0 = 1_356_998_400_000  # as bench.web_latest_latency: the same documents
ITEMS = "/ogc/collections/latest/items"


def shifted(bbox: list[float], i: int) -> str:
    d = i * 1e-6
    return f"{bbox[0] + d:.6f},{bbox[1] + d:.6f},{bbox[2] + d:.6f},{bbox[3] + d:.6f}"


def polygon(i: int) -> str:
    d = i * 1e-6
    return (f"S_INTERSECTS(geometry, POLYGON(({-74.0 + d} {40.70}, {-73.93 + d} {40.70}, {-73.95 + d} {40.80}, "
            f"{-74.0 + d} {40.70})))")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tracks", type=int, default=100_000)
    parser.add_argument("--index", default="bench-latest-100k")
    parser.add_argument("--requests", type=int, default=100, help="requests per case and path")
    args = parser.parse_args()

    settings = config.load(iot_index=args.index)
    preset = load_preset(settings.iot_schema)
    fields = dict(documents.field_types(preset))
    es = AsyncElasticsearch(settings.es_hosts, request_timeout=120, connections_per_node=ES_CONNECTIONS,
                            serializer=OrjsonSerializer())
    count = await ensure_latest(es, settings, args.tracks, t0=T0, seed=14, heading=True)
    live_settings = dataclasses.replace(settings, iot_latest_topic=f"{args.index}-{args.tracks}-latest")
    async with topics.admin_client(settings.kafka_bootstrap) as admin:
        if live_settings.latest_topic not in await admin.list_topics():
            await publish_latest(live_settings, preset, args.tracks, t0=T0, seed=14, heading=True, partitions=3)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, IOT_INDEX=args.index, WEB_PORT=str(port), PYTHONPATH=str(ROOT),
               IOT_LATEST_TOPIC=live_settings.latest_topic, IOT_ALERTS_TOPIC=f"{args.index}-alerts")
    server = subprocess.Popen([sys.executable, "-m", "web", "--log-level", "WARNING"], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    city = view_bbox(11)
    results: list[dict[str, Any]] = []

    async def es_page(query: dict[str, str], after: list[Any] | None = None) -> Any:
        p = items_params(MultiDict(query), None, fields)
        return await es_latest.ogc_page(es, args.index, preset, p.bbox, p.window, p.where, p.limit, after)

    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=10)) as http:
            await wait_healthy(http, base, timeout=600)

            async def api(query: dict[str, str]) -> tuple[float, dict[str, Any], float]:
                t = time.perf_counter()
                async with http.get(base + ITEMS, params=query) as r:
                    assert r.status == 200, await r.text()
                    body = json.loads(await r.read())
                    server = float(r.headers["Server-Timing"].removeprefix("app;dur="))
                return (time.perf_counter() - t) * 1000, body, server

            # a middle page of a scan in pages of 1,000: its cursor (API) and search_after (ES), found once
            scan_q = {"limit": "1000"}
            _, body, _ = await api(scan_q)
            after, page = None, await es_page(scan_q)
            for _ in range(count // 2000):
                link = next(ln["href"] for ln in body["links"] if ln["rel"] == "next")
                async with http.get(link) as r:
                    body = json.loads(await r.read())
                after, page = page.after, await es_page(scan_q, page.after)
            deep_cursor = parse_qs(urlsplit(next(ln["href"] for ln in body["links"] if ln["rel"] == "next")
                                            ).query)["cursor"][0]
            deep_after = page.after

            cases = [
                ("first page, limit 10", lambda i: {"limit": "10", "bbox": shifted([-180, -90, 179, 89], i)}, None),
                ("first page, limit 1,000", lambda i: {"limit": "1000", "bbox": shifted([-180, -90, 179, 89], i)},
                 None),
                ("city bbox + speed_mps >= 15, limit 100",
                 lambda i: {"limit": "100", "bbox": shifted(city, i), "filter": f"{documents.SPEED} >= 15"}, None),
                ("CQL2 polygon, limit 100", lambda i: {"limit": "100", "filter": polygon(i)}, None),
                ("a middle page of a scan, limit 1,000", lambda i: {"limit": "1000"}, (deep_cursor, deep_after)),
            ]
            for name, make, deep in cases:
                lat: dict[str, list[float]] = {"es": [], "api": []}
                server_ms: list[float] = []
                sample = await es_page(make(0), deep[1] if deep else None)

                async def one_es(i: int) -> None:
                    t = time.perf_counter()
                    await es_page(make(i), deep[1] if deep else None)
                    lat["es"].append((time.perf_counter() - t) * 1000)

                async def one_api(i: int) -> None:
                    q = make(i)
                    if deep:
                        q = {**q, "cursor": deep[0]}
                    ms, _, server = await api(q)
                    lat["api"].append(ms)
                    server_ms.append(server)

                for i in range(5):  # warm-up
                    await one_es(i)
                    await one_api(i)
                lat, server_ms[:] = {"es": [], "api": []}, []
                for i in range(args.requests):  # alternate: both paths see the same machine load
                    await one_es(i)
                    await one_api(i)
                case = {"case": name, "matched": sample.total if not deep else count, "returned": sample.count,
                        "es_p50": pct(lat["es"], 50), "es_p95": pct(lat["es"], 95),
                        "api_p50": pct(lat["api"], 50), "api_p95": pct(lat["api"], 95),
                        "server_p50": pct(server_ms, 50), "server_p95": pct(server_ms, 95)}
                case["ratio_p50"] = case["api_p50"] / case["es_p50"]
                results.append(case)
                print(json.dumps(case), file=sys.stderr, flush=True)

            # every track in pages of 10,000 on both paths, alternating, twice
            rates: dict[str, list[float]] = {"es": [], "api": []}
            for _ in range(2):
                t, n, after = time.perf_counter(), 0, None
                while True:
                    page = await es_page({"limit": "10000"}, after)
                    n += page.count
                    if page.returned < 10000:
                        break
                    after = page.after
                assert n == count, n
                rates["es"].append(n / (time.perf_counter() - t))
                t, n, url, q = time.perf_counter(), 0, base + ITEMS, {"limit": "10000"}
                while url:
                    async with http.get(url, params=q) as r:
                        body = json.loads(await r.read())
                    n += body["numberReturned"]
                    url = next((ln["href"] for ln in body["links"] if ln["rel"] == "next"), None)
                    q = None
                assert n == count, n
                rates["api"].append(n / (time.perf_counter() - t))
    finally:
        server.terminate()
        server.wait(10)
        await es.close()

    print(f"\n{count:,} tracks; one client; ms; ratio = API (mirror, over HTTP) / ES (search + shaping, in process)\n")
    print("| case | matched | returned | ES p50 / p95 | API (mirror) p50 / p95 | ratio p50 | server p50 / p95 |")
    print("|---|---|---|---|---|---|---|")
    for c in results:
        print(f"| {c['case']} | {c['matched']:,} | {c['returned']:,} | {c['es_p50']:.1f} / {c['es_p95']:.1f} | "
              f"{c['api_p50']:.1f} / {c['api_p95']:.1f} | {c['ratio_p50']:.2f} | "
              f"{c['server_p50']:.1f} / {c['server_p95']:.1f} |")
    e, a = statistics.median(rates["es"]), statistics.median(rates["api"])
    print(f"\nfull scan in pages of 10,000: ES {e:,.0f} features/s, API (mirror) {a:,.0f} features/s, "
          f"ratio {a / e:.2f} (rounds: ES {[round(x) for x in rates['es']]}, API {[round(x) for x in rates['api']]}; "
          f"load {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    asyncio.run(main())
