"""Records of the live layer (geoiot.live) for tests and benchmarks: what the worker publishes, through its
encoder, in Kafka transactions (so ``read_committed`` readers see commits and never aborts)."""

from __future__ import annotations

import uuid
import zlib
from collections.abc import Iterable
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from agents.core.pipeline import BatchResult
from geoiot import live, topics
from geoiot.config import Settings


def partition_of(track: str, partitions: int) -> int:
    """A stable partition per track (the worker uses the source partition: one writer per track)."""
    return zlib.crc32(live.key(track)) % partitions


def transactional_producer(bootstrap: str) -> AIOKafkaProducer:
    return AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=f"testkit-live-{uuid.uuid4().hex[:8]}",
                            enable_idempotence=True, acks="all", linger_ms=5, max_batch_size=1 << 20,
                            max_request_size=8 << 20)


async def ensure_topic(settings: Settings, partitions: int = 3) -> None:
    result = await topics.ensure_topic(settings.kafka_bootstrap, topics.latest_spec(settings, partitions))
    assert result.status in ("created", "exists"), result


def latest_documents(result: BatchResult) -> list[tuple[str, dict[str, Any]]]:
    """(track, document) of a batch's newest reports: what the worker publishes for it (its latest entries)."""
    return [(track, orjson.loads(source)) for track, source in zip(result.latest_bulk.ids, result.latest_bulk.sources)]


async def publish(producer: AIOKafkaProducer, topic: str, records: Iterable[tuple[str, dict[str, Any] | None]],
                  partitions: int, *, abort: bool = False, chunk: int = 50_000) -> int:
    """Send (track, document or None for a tombstone) records, ``chunk`` per transaction (aborted when
    ``abort``); the records sent."""
    sent = 0
    batch: list[tuple[str, dict[str, Any] | None]] = []

    async def flush() -> None:
        await producer.begin_transaction()
        futures = [await producer.send(topic, None if doc is None else live.value(doc), key=live.key(track),
                                       partition=partition_of(track, partitions)) for track, doc in batch]
        if abort:
            await producer.flush()
            await producer.abort_transaction()
        else:
            await producer.commit_transaction()
            for f in futures:
                await f
        batch.clear()

    for record in records:
        batch.append(record)
        sent += 1
        if len(batch) >= chunk:
            await flush()
    if batch:
        await flush()
    return sent


async def publish_once(settings: Settings, records: Iterable[tuple[str, dict[str, Any] | None]],
                       partitions: int = 1) -> int:
    """:func:`publish` with a producer of its own (tests that write a few records now and then)."""
    producer = transactional_producer(settings.kafka_bootstrap)
    await producer.start()
    try:
        return await publish(producer, settings.latest_topic, records, partitions)
    finally:
        await producer.stop()


async def delete_topic(settings: Settings) -> None:
    async with topics.admin_client(settings.kafka_bootstrap) as admin:
        try:
            await topics.delete(admin, [settings.latest_topic])
        except Exception:  # a broker restart: nothing to clean
            pass


async def until_synced(app: Any, timeout: float = 30.0) -> None:
    """Until a web app's live mirror (web.keys.LIVE) read its topic to the end found at start."""
    import asyncio

    from web.keys import LIVE
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not app[LIVE].synced:
        assert loop.time() < deadline, "the live mirror did not load"
        await asyncio.sleep(0.05)


def snapshot(table: Any) -> dict[str, dict[str, Any]]:
    """Every track a mirror's table (web.live.table.LiveTable) holds, with its document: mirrors compared."""
    return {doc[table.preset.track]: doc for doc in table.documents(list(table.rows.values()))}


def held_time(table: Any, track: str) -> int | None:
    """The event time of the document a mirror's table holds for ``track`` (None: none)."""
    row = table.rows.get(track)
    return None if row is None else int(table.time[row])


def apply(table: Any, track: str, doc: dict[str, Any] | None) -> bool:
    """One live record (a document, or None for a tombstone) into a table; whether it changed it."""
    return table.apply_batch([track], [doc]) > 0


def newest_reports(reports: Iterable[dict[str, Any]], preset: Any = None) -> dict[str, dict[str, Any]]:
    """Each track's newest report in arrival order, as the agents keep it: on equal times the first one (a later
    one is late and written create-only, agents.core.motion). ``preset``: the reports' (default: taxi)."""
    if preset is None:
        from geoiot.schema import load_preset
        preset = load_preset("taxi")
    track, time = preset.track, preset.time
    out: dict[str, dict[str, Any]] = {}
    for r in reports:
        seen = out.get(r[track])
        if seen is None or r[time] > seen[time]:
            out[r[track]] = r
    return out
