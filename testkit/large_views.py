"""Many latest positions over New York: the large index the map's views of the whole city read."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

from elasticsearch import AsyncElasticsearch
from elasticsearch.helpers import async_bulk

from agents.store.index import ensure_index
from geoiot import documents
from geoiot.config import Settings
from geoiot.schema import Preset, load_preset
from testkit import actions as es_actions
from testkit.observations import NYC, document, on_grid


def latest_documents(preset: Preset, tracks: int, *, t0: int, seed: int, heading: bool = False
                     ) -> Iterator[dict[str, Any]]:
    """One latest position for each of ``tracks`` tracks (random, within an hour after ``t0``, with a speed
    and, when asked, a heading)."""
    rng = random.Random(seed)
    w, s, e, n = NYC
    for i in range(tracks):
        lon, lat = on_grid(rng.uniform(w, e), rng.uniform(s, n))
        t = t0 + rng.randrange(0, 3_600_000)
        more = {"heading": rng.uniform(0, 360)} if heading else {}
        yield document(preset, f"cab-{i:06d}", t, lon, lat, [], speed=rng.uniform(0, 30), **more)


async def publish_latest(settings: Settings, preset: Preset, tracks: int, *, t0: int, seed: int,
                         heading: bool = False, partitions: int = 1) -> int:
    """The documents of :func:`write_latest` into the live topic (settings.latest_topic), created if missing."""
    from testkit import live

    await live.ensure_topic(settings, partitions)
    producer = live.transactional_producer(settings.kafka_bootstrap)
    await producer.start()
    try:
        docs = latest_documents(preset, tracks, t0=t0, seed=seed, heading=heading)
        return await live.publish(producer, settings.latest_topic, ((d[preset.track], d) for d in docs), partitions)
    finally:
        await producer.stop()


async def write_latest(es: AsyncElasticsearch, base: str, preset: Preset, tracks: int, *, t0: int, seed: int,
                       heading: bool = False) -> int:
    """Write :func:`latest_documents` to ``base``'s latest index; refresh it and return its count."""

    def actions() -> Iterator[dict[str, Any]]:
        for doc in latest_documents(preset, tracks, t0=t0, seed=seed, heading=heading):
            yield es_actions.latest_action(base, doc[preset.track], doc[preset.time], doc)

    await async_bulk(es, actions(), chunk_size=5_000)
    index = documents.latest_index(base)
    await es.indices.refresh(index=index)
    return (await es.count(index=index))["count"]


async def ensure_latest(es: AsyncElasticsearch, settings: Settings, tracks: int, *, t0: int, seed: int,
                        heading: bool = False) -> int:
    """The benchmarks' large index: :func:`write_latest` into ``settings.iot_index``, unless its latest index
    holds ``tracks`` positions already (re-used between runs); returns its count."""
    preset = load_preset(settings.iot_schema)
    await ensure_index(es, settings, preset, index=settings.iot_index)
    if (await es.count(index=documents.latest_index(settings.iot_index)))["count"] == tracks:
        return tracks
    return await write_latest(es, settings.iot_index, preset, tracks, t0=t0, seed=seed, heading=heading)
