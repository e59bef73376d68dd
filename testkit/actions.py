"""Documents and bulk actions built one at a time, as the agents index them: for tests and benchmarks that
write observations to Elasticsearch themselves."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from agents.core.codec import build_into
from geoiot.documents import doc_id, index_for, latest_index


def build(record: dict[str, Any], lon: float, lat: float, fences: Sequence[str], distance_m: float | None,
          speed_mps: float | None, heading_deg: float | None, ingested_at: int | None = None) -> dict[str, Any]:
    """The preset's fields plus geometry, geofences, motion, geohash and ingestion time."""
    return build_into(dict(record), lon, lat, fences, distance_m, speed_mps, heading_deg, ingested_at)


def action(base: str, track: str, time_ms: int, doc: dict[str, Any]) -> dict[str, Any]:
    """A bulk ``index`` action: overwrites the document of the same event if it exists."""
    return {"_op_type": "index", "_index": index_for(base, time_ms), "_id": doc_id(track, time_ms), "_source": doc}


def latest_action(base: str, track: str, time_ms: int, doc: dict[str, Any]) -> dict[str, Any]:
    """A bulk ``index`` action of the track's latest document, versioned by the event time: Elasticsearch
    refuses it with 409 when the stored document is as new or newer (a stale report, not an error)."""
    return {"_op_type": "index", "_index": latest_index(base), "_id": track, "version": time_ms,
            "version_type": "external", "_source": doc}


def serialized_action(action: dict[str, Any]) -> tuple[bytes, bytes]:
    """Both bulk lines of an action as the helpers' ``expand_action`` would write them, in orjson bytes (the
    format :class:`agents.core.bulk.Bulk` entries keep; the tests hold the two equal).

    Our actions carry only ``_op_type``, ``_index``, ``_id``, ``_source`` and, for the latest positions,
    ``version`` and ``version_type``.
    """
    meta = {"_index": action["_index"], "_id": action["_id"]}
    if "version_type" in action:
        meta["version"], meta["version_type"] = action["version"], action["version_type"]
    return orjson.dumps({action.get("_op_type", "index"): meta}), orjson.dumps(action["_source"])
