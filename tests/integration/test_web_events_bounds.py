"""The cost of the /api/events fan-out is bounded by its settings (issue 22, item 4): a view holds at most
WEB_SSE_VIEW_FEATURES features, all views together at most WEB_SSE_FEATURE_BUDGET (a new view beyond is 503
busy), and the memory of ended views goes back to the kernel. Fast tests of the hub with a counting fetch,
then ``python -m web`` on a large latest index with many distinct views near limit=10000: the server's RSS
stays within a bound set by the budget and comes back down after the clients leave."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from elasticsearch import AsyncElasticsearch

from agents.store.index import drop_index, ensure_index
from geoiot.config import Settings
from geoiot.malloc import TOP_PAD, TRIM_THRESHOLD
from geoiot.schema import load_preset
from testkit.health import wait_healthy
from testkit.large_views import publish_latest, write_latest
from testkit.live import delete_topic
from testkit.processes import proc_stat, stop
from testkit.sse import Stream, read_until
from web.alerts import AlertBuffer
from web.events import Hub
from web.params import LatestParams, parse_bbox

PRESET = load_preset("taxi")
T0 = 1_357_000_000_000


def view(i: int, limit: int) -> LatestParams:
    return LatestParams(parse_bbox(f"{-74.05 + i * 1e-5},40.6,-73.75,40.9"), limit)


async def test_a_views_limit_is_cut_and_views_beyond_the_budget_are_refused() -> None:
    asked: list[int] = []
    released: list[float] = []

    async def fetch(p: LatestParams) -> tuple[int, list[dict[str, Any]]]:
        asked.append(p.limit)
        return 50_000, [{"type": "Feature", "id": f"t{i}", "properties": {}} for i in range(p.limit)]

    hub = Hub(fetch, AlertBuffer(10), period=0.05, queue_size=8, max_clients=100, max_views=100,
              view_features=300, feature_budget=1000, release=lambda: released.append(time.monotonic()))
    big = hub.subscribe(view(0, 10_000))
    same = hub.subscribe(view(0, 5_000))  # cut to the same 300: one view
    assert big.view is same.view and big.view.params.limit == 300
    subs = [hub.subscribe(view(i, 10_000)) for i in (1, 2)]
    assert hub.reserved == 900
    with pytest.raises(OverflowError, match="WEB_SSE_FEATURE_BUDGET"):
        hub.subscribe(view(3, 300))
    subs.append(hub.subscribe(view(3, 100)))  # 1000 of 1000
    with pytest.raises(OverflowError, match="WEB_SSE_FEATURE_BUDGET"):
        hub.subscribe(view(4, 1))
    hub.subscribe(view(0, 10_000))  # a view watched already costs nothing more
    await asyncio.sleep(0.3)
    assert set(asked) == {300, 100} and hub.held == 1000
    for sub in list(hub.subscribers):
        hub.unsubscribe(sub)
    await asyncio.sleep(0.4)
    assert hub.views == {} and hub.held == 0 and hub.reserved == 0
    assert len(released) == 1  # four views ended within a period: memory handed back once
    assert hub.subscribe(view(4, 1000)).view.params.limit == 300  # the budget is free again
    await hub.close()


# --- the web server process on a large index --------------------------------------------------------

TRACKS = 20_000
VIEW_FEATURES = 5_000
BUDGET = 20_000
STREAMS = 20
# What one held feature may cost the server, all included (its JSON, the search answer it came from, the
# events built from it): the RSS bound under load is the budget times this, plus the freed heap the process
# keeps by design (geoiot.malloc: up to the trim threshold plus the top pad).
BYTES_PER_FEATURE = 8_192
KEPT_HEAP = TRIM_THRESHOLD + TOP_PAD
RETURNED_WITHIN = 64 << 20  # what may stay resident after the views ended, above the start


def rss(pid: int) -> int:
    return proc_stat(pid)[0]


def metric(text: str, name: str) -> float:
    return next(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + " "))


@pytest_asyncio.fixture(loop_scope="session")
async def big_index(stack: Settings, es: AsyncElasticsearch) -> AsyncIterator[str]:
    name = f"webbounds-{uuid.uuid4().hex[:10]}"
    await ensure_index(es, stack, PRESET, index=name)
    try:
        assert await write_latest(es, name, PRESET, TRACKS, t0=T0, seed=22) == TRACKS
        live_settings = dataclasses.replace(stack, iot_index=name, iot_latest_topic=f"{name}-latest")
        assert await publish_latest(live_settings, PRESET, TRACKS, t0=T0, seed=22) == TRACKS
        yield name
    finally:
        await drop_index(es, name)
        await delete_topic(dataclasses.replace(stack, iot_latest_topic=f"{name}-latest"))


@pytest.mark.integration
async def test_many_large_views_keep_the_servers_memory_within_the_budget_and_give_it_back(
        big_index: str, python_env: dict[str, str]) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(python_env, IOT_INDEX=big_index, IOT_LATEST_TOPIC=f"{big_index}-latest", WEB_PORT=str(port), WEB_HOST="127.0.0.1", WEB_SSE_REFRESH="0.5",
               IOT_ALERTS_TOPIC=f"{big_index}-alerts", WEB_SSE_VIEW_FEATURES=str(VIEW_FEATURES),
               WEB_SSE_FEATURE_BUDGET=str(BUDGET))
    proc = subprocess.Popen([sys.executable, "-m", "web", "--log-level", "WARNING"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"

    def small(i: int) -> str:  # a distinct box each time: answered by a search, not the 1 s answer cache
        return f"{base}/api/latest?bbox=-74.0,40.7,{-73.99 + i * 1e-6:.6f},40.71&limit=10"
    timeout = aiohttp.ClientTimeout(total=None, sock_read=60)
    async with aiohttp.ClientSession(timeout=timeout, read_bufsize=16 << 20) as http:  # whole views are MBs
        try:
            await wait_healthy(http, base, timeout=60)
            idle = []
            for i in range(5):
                began = time.monotonic()
                async with http.get(small(i)) as r:
                    assert r.status == 200
                idle.append(time.monotonic() - began)
            before = rss(proc.pid)
            responses = [await http.get(f"{base}/api/events?bbox=-74.05,40.6,{-73.75 + i * 1e-5},40.9&limit=10000")
                         for i in range(STREAMS)]
            accepted = [r for r in responses if r.status == 200]
            refused = [r for r in responses if r.status == 503]
            assert len(accepted) == BUDGET // VIEW_FEATURES and len(refused) == STREAMS - len(accepted)
            for r in refused:
                assert "WEB_SSE_FEATURE_BUDGET" in (await r.json())["error"]
            for r in accepted:
                stream = await read_until(r, Stream(), lambda s: s.of("latest"), 60)
                first = stream.of("latest")[0].json()
                assert first["full"] and len(first["features"]) == VIEW_FEATURES and first["total"] == TRACKS
            peak, latencies = before, []
            for i in range(16):  # eight periods of searches of every view
                began = time.monotonic()
                async with http.get(small(100 + i)) as r:
                    assert r.status == 200 and len((await r.json())["features"]) <= 10
                latencies.append(time.monotonic() - began)
                peak = max(peak, rss(proc.pid))
                await asyncio.sleep(0.25)
            async with http.get(f"{base}/metrics") as r:
                text = await r.text()
            assert metric(text, "geoiot_web_sse_features") <= BUDGET
            for r in accepted:
                r.close()
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                async with http.get(f"{base}/metrics") as r:
                    if metric(await r.text(), "geoiot_web_sse_views") == 0:
                        break
                await asyncio.sleep(0.2)
            await asyncio.sleep(1.5)  # the release runs a period after the last view ended
            after = rss(proc.pid)
        finally:
            stop(proc, 20)
    grown = peak - before
    print(f"rss before {before >> 20} MiB, peak {peak >> 20} MiB, after {after >> 20} MiB; small /api/latest "
          f"median {sorted(latencies)[len(latencies) // 2] * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms "
          f"(idle: median {sorted(idle)[2] * 1000:.0f} ms)")
    assert grown <= BUDGET * BYTES_PER_FEATURE + KEPT_HEAP
    assert after - before <= RETURNED_WITHIN  # the ended views' memory, kept heap included, went back
