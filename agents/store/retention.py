"""Retention: delete the daily observation indices older than ``IOT_RETENTION_DAYS`` (0 keeps everything),
and the latest positions (``<IOT_INDEX>_latest``) of the tracks whose newest report is as old.

Run it once or every N seconds::

    python -m agents.store.retention [--index taxi] [--schema taxi] [--retention-days 30] [--every 3600] [--dry-run]

The worker runs the same task every hour when ``IOT_RETENTION_DAYS`` is set. An index is deleted when
the whole day it holds is older than the retention period; only names of the form
``<IOT_INDEX>-YYYY.MM.DD`` (:mod:`geoiot.documents`) are considered. Deleting is idempotent: a second
run finds nothing to delete, and an index already gone is not an error. The alias ``<IOT_INDEX>``
stays on the remaining daily indices, so readers keep working (and the agents refuse events that
retention would delete at once, see :class:`geoiot.timeparse.EventTimeBounds`).

The latest index has one document per track, not one index per day, so it is trimmed by the preset's
time field: a track whose newest report lies in a day that retention deletes loses its latest position
too (the same boundary, :func:`latest_cutoff`), so /api/latest and /api/aggregate?source=latest never
show a track whose observations are gone. A track that reports meanwhile keeps its new position
(:func:`latest_delete`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence

from elasticsearch import AsyncElasticsearch

from geoiot import config
from geoiot.documents import index_day_ms, index_pattern, latest_index
from geoiot.schema import load_preset
from geoiot.timeparse import retention_cutoff

ENVS = config.envs("retention")


def expired(base: str, names: Sequence[str], retention_days: int, now_ms: int) -> list[str]:
    """The daily indices of ``base`` among ``names`` whose whole day is older than ``retention_days``."""
    if retention_days <= 0:
        return []
    cutoff = retention_cutoff(retention_days, now_ms)
    out = []
    for name in names:
        day = index_day_ms(base, name)
        if day is not None and day < cutoff:
            out.append(name)
    return sorted(out)


async def delete_expired(es: AsyncElasticsearch, base: str, retention_days: int, now_ms: int | None = None,
                         dry_run: bool = False) -> list[str]:
    """Delete (or only list, with ``dry_run``) the expired daily indices of ``base``; returns their names."""
    if retention_days <= 0:
        return []
    found = await es.indices.get(index=index_pattern(base), expand_wildcards="open,closed",
                                 ignore_unavailable=True, allow_no_indices=True, filter_path="*.settings.index.uuid")
    now = int(time.time() * 1000) if now_ms is None else now_ms
    names = expired(base, list(found.body or {}), retention_days, now)
    if not dry_run:
        for start in range(0, len(names), 50):  # keep the request line short
            await es.options(ignore_status=404).indices.delete(index=",".join(names[start:start + 50]))
    return names


def latest_cutoff(retention_days: int, now_ms: int) -> int:
    """Latest positions older than this (epoch ms) go: the start of the first day :func:`expired` keeps."""
    return retention_cutoff(retention_days, now_ms)


def stale_latest_query(time_field: str, retention_days: int, now_ms: int) -> dict[str, object]:
    return {"range": {time_field: {"lt": latest_cutoff(retention_days, now_ms), "format": "epoch_millis"}}}


# Latest positions deleted per bulk request (and found per search) when trimming.
TRIM_PAGE = 1000


def latest_delete(index: str, track_id: str, cutoff: int) -> dict[str, object]:
    """A bulk delete of a latest document that succeeds only while its version (the event time of its report,
    geoiot.documents.latest_action) is below ``cutoff``: external_gte with ``cutoff - 1``. A report at or after
    the cutoff that arrives meanwhile makes it a version conflict (409), and the track keeps its position;
    the tombstone's version refuses older reports that are re-sent (Elasticsearch keeps it index.gc_deletes)."""
    return {"delete": {"_index": index, "_id": track_id, "version": cutoff - 1, "version_type": "external_gte"}}


async def trim_latest(es: AsyncElasticsearch, base: str, time_field: str, retention_days: int,
                      now_ms: int | None = None, dry_run: bool = False) -> int:
    """Delete (or only count, with ``dry_run``) the latest positions of ``base`` older than the retention;
    returns how many were deleted. A missing latest index is nothing to delete.

    Search then versioned bulk deletes (:func:`latest_delete`), not delete_by_query: that is the reindex
    module's, which a minimal Elasticsearch (the local stack's) does not have, and it could delete a
    position that a newer report replaced between its search and its delete; the versioned delete cannot."""
    if retention_days <= 0:
        return 0
    now = int(time.time() * 1000) if now_ms is None else now_ms
    cutoff = latest_cutoff(retention_days, now)
    query = stale_latest_query(time_field, retention_days, now)
    index = latest_index(base)
    options = {"ignore_unavailable": True, "allow_no_indices": True}
    if dry_run:
        return int((await es.count(index=index, query=query, **options))["count"])
    deleted = 0
    while True:
        found = await es.search(index=index, query=query, size=TRIM_PAGE, source=False, track_total_hits=False,
                                **options)
        ids = [hit["_id"] for hit in found["hits"]["hits"]]
        if not ids:
            return deleted
        done = await es.bulk(operations=[latest_delete(index, i, cutoff) for i in ids], refresh=True)
        for item in done["items"]:
            status = item["delete"]["status"]
            if status == 200:
                deleted += 1
            elif status not in (404, 409):  # gone already, or newer now: neither is an error
                raise RuntimeError(f"deleting latest position {item['delete'].get('_id')!r} of {index}: "
                                   f"{item['delete'].get('error')}")
        if len(ids) < TRIM_PAGE:
            return deleted


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m agents.store.retention", description=__doc__.splitlines()[0])
    config.add_flags(parser, ENVS)
    parser.add_argument("--every", type=float, default=0, metavar="SECONDS",
                        help="run again every SECONDS (default 0: once)")
    parser.add_argument("--dry-run", action="store_true", help="list what would be deleted, delete nothing")
    return parser


def emit(event: str, **fields: object) -> None:
    print(json.dumps({"ts": round(time.time(), 3), "component": "retention", "event": event, **fields}), flush=True)


async def run(settings: config.Settings, time_field: str, every: float, dry_run: bool) -> int:
    es = AsyncElasticsearch(settings.es_hosts, request_timeout=60)
    try:
        while True:
            try:
                names = await delete_expired(es, settings.iot_index, settings.iot_retention_days, dry_run=dry_run)
                latest = await trim_latest(es, settings.iot_index, time_field, settings.iot_retention_days,
                                           dry_run=dry_run)
                emit("retention", index=settings.iot_index, retention_days=settings.iot_retention_days,
                     dry_run=dry_run, deleted=names, latest_deleted=latest)
            except Exception as exc:  # Elasticsearch down: say so; a periodic run tries again
                emit("retention_failed", index=settings.iot_index, error=f"{type(exc).__name__}: {exc}")
                if every <= 0:
                    return 1
            if every <= 0:
                return 0
            await asyncio.sleep(every)
    finally:
        await es.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = config.from_args(args, component="retention")
        time_field = load_preset(settings.iot_schema).time  # SchemaError is a ValueError
    except ValueError as exc:
        print(f"retention: {exc}", file=sys.stderr)
        return 2
    if settings.iot_retention_days <= 0:
        emit("retention", index=settings.iot_index, retention_days=settings.iot_retention_days, deleted=[],
             note="IOT_RETENTION_DAYS is 0: every index is kept")
        if args.every <= 0:
            return 0
    try:
        return asyncio.run(run(settings, time_field, args.every, args.dry_run))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
