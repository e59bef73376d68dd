"""The live layer's record contract: each track's newest document on a compacted Kafka topic.

The topic (IOT_LATEST_TOPIC, :func:`geoiot.topics.latest_spec`) holds, per track, the document of its newest
report, exactly the ``_source`` the observation of that report has in Elasticsearch (attributes, geometry,
motion, fences; :mod:`geoiot.documents`). Writers: the worker, in the same Kafka transaction as its track
states and consumer offsets (so a reader with ``read_committed`` never sees a batch that was not stored), and
the Spark job (same records). Readers: every web server mirrors the whole topic in memory.

* key: the track id, UTF-8 (:func:`key`);
* value: the document, JSON (:func:`value`), or a tombstone (``None``) when the track left the live layer
  (idle eviction, retention);
* partition: the source partition the track's events came from (the topic has as many partitions as the
  source topic), so one writer owns each track's records;
* order: a reader keeps, per track, the record with the newest event time (:func:`newer`); equal times: the
  record read last. A record re-sent for an older report (a redelivered batch, a second writer, a track whose
  partition changed) therefore never moves a track back.
"""

from __future__ import annotations

from typing import Any

import orjson

KEY_ENCODING = "utf-8"


def key(track: str) -> bytes:
    """The record key of a track."""
    return track.encode(KEY_ENCODING)


def track_of(record_key: bytes) -> str:
    """The track id of a record key (the inverse of :func:`key`)."""
    return record_key.decode(KEY_ENCODING)


def value(document: dict[str, Any]) -> bytes:
    """The record value of a track's newest document."""
    return orjson.dumps(document)


def document(record_value: bytes, time_field: str) -> dict[str, Any]:
    """The document of a record value (the inverse of :func:`value`); ``time_field`` is the preset's time
    field (:attr:`geoiot.schema.Preset.time`). ``ValueError`` when the value is not such a document."""
    doc = orjson.loads(record_value)
    if not isinstance(doc, dict) or type(doc.get(time_field)) is not int:
        raise ValueError(f"a live record is a JSON object with an integer {time_field!r} (epoch ms)")
    return doc


def newer(time_ms: int, held_ms: int | None) -> bool:
    """Whether a record of event time ``time_ms`` replaces the one held (of ``held_ms``; None: none held)."""
    return held_ms is None or time_ms >= held_ms
