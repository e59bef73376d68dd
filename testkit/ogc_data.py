"""The OGC API tests' data set: random walks in New York (more than 10,000 reports in one window, for paging
clients), a few reports on both sides of the antimeridian, and each track's latest document, written with the
agents' own bulk actions (geoiot.documents) and published to the live layer (geoiot.live: the ``latest``
collection's source) as the worker does. Usable by hand: ``python -m testkit.ogc_data <index>``."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from elasticsearch import AsyncElasticsearch
from elasticsearch.helpers import async_bulk

from agents.store.index import drop_index, ensure_index
from geoiot import config
from geoiot.schema import Preset, load_preset
from testkit.observations import bulk_index, document, on_grid, walk
from testkit import actions as es_actions
from testkit import live

PRESET = load_preset("taxi")
T0 = 1_357_084_800_000 - 3 * 3_600_000  # 2013-01-01T21:00Z: two daily indices
N = 14_000
TRACKS = 40
STEP_MS = 60_000
DATELINE = [(179.5, 1.0), (179.9, -2.0), (-179.7, 0.5), (-179.2, 3.0), (178.0, 0.0), (-178.0, 0.0)]
# one report in each box the OGC conformance suite asks for (Britain, Ecuador, the Bering Strait across the
# antimeridian, both poles), so none of its bbox tests is skipped for want of a feature
WORLD = [(-0.1, 51.5), (-75.0, 0.2), (178.5, 66.0), (-178.5, 67.0), (10.0, 87.0), (-20.0, -87.0)]


def make_docs(preset: Preset = PRESET, n: int = N) -> list[dict[str, Any]]:
    docs = list(walk(preset, n, tracks=TRACKS, start_ms=T0, step_ms=STEP_MS * N // n, seed=11))
    for i, (lon, lat) in enumerate(DATELINE + WORLD):
        lon, lat = on_grid(lon, lat)
        docs.append(document(preset, f"pacific-{i}", T0 + i * 1000, lon, lat, []))
    for i, d in enumerate(docs):  # some attributes to filter on
        d["passengerCount"] = i % 5
        d["vendor_id"] = "CMT" if i % 3 else "VTS"
    return docs


def newest(preset: Preset, docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for d in docs:
        track = d[preset.track]
        if track not in out or d[preset.time] >= out[track][preset.time]:
            out[track] = d
    return out


def settings_for(settings: config.Settings, index: str) -> config.Settings:
    """``settings`` on the index ``index`` and a live topic of its own (``<index>-latest``)."""
    import dataclasses
    return dataclasses.replace(settings, iot_index=index, iot_latest_topic=f"{index}-latest")


def env_for(settings: config.Settings) -> dict[str, str]:
    """The environment a web server process needs to serve ``settings``' data."""
    return {"IOT_INDEX": settings.iot_index, "IOT_LATEST_TOPIC": settings.latest_topic,
            "ES_URL": settings.es_url, "KAFKA_BOOTSTRAP": settings.kafka_bootstrap}


async def load(es: AsyncElasticsearch, settings: config.Settings, docs: list[dict[str, Any]],
               preset: Preset = PRESET) -> None:
    """``docs`` into the daily indices of ``settings.iot_index``, and each track's newest into its latest index
    and the live topic ``settings.latest_topic``."""
    base = settings.iot_index
    await ensure_index(es, settings, preset, index=base)
    assert await bulk_index(es, base, preset, iter(docs)) == len(docs)
    latest = newest(preset, docs)
    await async_bulk(es, [es_actions.latest_action(base, t, d[preset.time], d) for t, d in latest.items()])
    await es.indices.refresh(index=f"{base}*")
    await live.ensure_topic(settings, 1)
    assert await live.publish_once(settings, latest.items()) == len(latest)


async def drop(es: AsyncElasticsearch, settings: config.Settings) -> None:
    """What :func:`load` made: the indices and the live topic."""
    await drop_index(es, settings.iot_index)
    await live.delete_topic(settings)


async def _main(index: str, n: int) -> None:
    settings = settings_for(config.load(), index)
    es = AsyncElasticsearch(settings.es_hosts, request_timeout=60)
    try:
        await load(es, settings, make_docs(n=n))
    finally:
        await es.close()


if __name__ == "__main__":
    asyncio.run(_main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else N))
