"""The Elasticsearch document of an observation and its bulk action (deterministic ``_id``).

``_id`` is ``"<track>:<time_ms>"`` and the index is the daily index of the event time, so a
redelivered event overwrites its own document instead of adding one: at-least-once delivery plus
idempotent writes gives effectively-once documents.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import geohash

from agents.index import index_for
from agents.tracks import Motion


def doc_id(track: str, time_ms: int) -> str:
    return f"{track}:{time_ms}"


def build(record: dict[str, Any], lon: float, lat: float, fences: Sequence[str], motion: Motion | None,
          ingested_at: int | None = None) -> dict[str, Any]:
    """The preset's fields plus geometry, geofences, motion, geohash (precision 12) and ingestion time."""
    if motion is None:
        return build_values(record, lon, lat, fences, None, None, None, ingested_at)
    return build_values(record, lon, lat, fences, motion.distance_m, motion.speed_mps, motion.heading_deg,
                        ingested_at)


def build_values(record: dict[str, Any], lon: float, lat: float, fences: Sequence[str], distance_m: float | None,
                 speed_mps: float | None, heading_deg: float | None, ingested_at: int | None = None) -> dict[str, Any]:
    """:func:`build` with the motion fields given one by one (the batch path computes them as arrays)."""
    doc = dict(record)
    doc["geometry"] = {"lat": lat, "lon": lon}
    doc["geofences"] = list(fences)
    doc["speed_mps"] = speed_mps
    doc["heading_deg"] = heading_deg
    doc["distance_m"] = distance_m
    doc["geohash"] = geohash.encode(lat, lon, precision=12)
    doc["ingested_at"] = int(time.time() * 1000) if ingested_at is None else ingested_at
    return doc


DAY_MS = 86_400_000


@lru_cache(maxsize=1024)
def _daily(base: str, day: int) -> str:
    return index_for(base, day * DAY_MS)


def action(base: str, track: str, time_ms: int, doc: dict[str, Any]) -> dict[str, Any]:
    """A bulk ``index`` action: overwrites the document of the same event if it exists."""
    # UTC days are exactly DAY_MS long in epoch time, so the index is a function of the day number.
    return {"_op_type": "index", "_index": _daily(base, time_ms // DAY_MS), "_id": f"{track}:{time_ms}", "_source": doc}
