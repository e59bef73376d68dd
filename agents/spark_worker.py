"""Executor side of the Spark job: one Kafka partition's rows -> the agents' pipeline -> Elasticsearch.

No pyspark import here: Spark hands :func:`partition_function`'s closure pandas chunks of Kafka rows
(``key, value, topic, partition, offset``) through ``mapInPandas``; each chunk goes through the very
same :class:`agents.pipeline.Pipeline` the Faust agents run (validate -> geofences -> document ->
deterministic bulk action, the same per-event dead letters and event-time bounds), is bulk-indexed with the agents' :class:`agents.sink.ElasticsearchSink`
(same retry rules, same bounded index creation), and what comes back to Spark is only the dead letters (built by
:func:`agents.validate.dead_letter`, the agents' message shape) and one row of counts per chunk.

Track-dependent fields (``speed_mps``, ``heading_deg``, ``distance_m``) and geofence enter/exit
alerts need per-track state across batches, which this job does not keep: they are stored as null
so a document never depends on where a micro-batch happened to start.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from agents.geofence import Geofences
from agents.pipeline import BatchResult, Incoming, Pipeline
from agents.sink import ElasticsearchSink, Sink, es_client
from agents.validate import dead_letter
from geoiot.config import Settings
from geoiot.documents import MOTION_FIELDS
from geoiot.schema import load_preset
from geoiot.timeparse import EventTimeBounds, zone

# What mapInPandas returns: dead letters (kind "dlq": key, value) and per-chunk counts (kind "stats").
OUTPUT_SCHEMA = ("kind string, key binary, value binary, "
                 "messages long, indexed long, dead long, filtered long, rejected long")
OUTPUT_COLUMNS = ("kind", "key", "value", "messages", "indexed", "dead", "filtered", "rejected")


@dataclass(frozen=True)
class JobContext:
    """The settings executors need; small, hashable and picklable (it is shipped with every task)."""

    schema: str
    geofences: str
    index: str
    timezone: str
    geofence_filter: bool
    es_hosts: tuple[str, ...]
    bulk_size: int
    bounds: EventTimeBounds = EventTimeBounds()
    max_new_indices: int = 10

    @classmethod
    def from_settings(cls, settings: Settings) -> "JobContext":
        return cls(settings.iot_schema, settings.iot_geofences, settings.iot_index, settings.iot_timezone,
                   settings.iot_geofence_filter, tuple(settings.es_hosts), max(1, settings.iot_bulk_size),
                   EventTimeBounds.from_settings(settings), settings.iot_max_new_indices)

    def pipeline(self) -> Pipeline:
        return Pipeline(load_preset(self.schema), Geofences.load(self.geofences), self.index, zone(self.timezone),
                        self.geofence_filter, self.bounds)


def no_state(track: str) -> None:
    """Spark keeps no track state: every report is seen as a track's first."""
    return None


def annotate(pipeline: Pipeline, messages: Sequence[Incoming]) -> BatchResult:
    """The agents' pipeline over one chunk, minus the track-dependent fields (nulled, see module doc)."""
    result = pipeline.process(messages, no_state)
    for action in result.actions:
        source = action["_source"]
        for name in MOTION_FIELDS:
            source[name] = None
    return result


def incoming(chunk: pd.DataFrame) -> list[Incoming]:
    """Kafka source rows of one Arrow chunk as the pipeline's messages."""
    return [Incoming(None if v is None else bytes(v), None if k is None else bytes(k), str(t), int(p), int(o))
            for k, v, t, p, o in zip(chunk["key"], chunk["value"], chunk["topic"], chunk["partition"],
                                     chunk["offset"])]


def dead_letters(dead: Sequence[tuple[Incoming, str]]) -> list[tuple[bytes | None, bytes]]:
    """(key, value) of the dead-letter messages, in the agents' shape; the key is the original key."""
    return [(m.key, dead_letter(m.value, reason, m.topic, m.partition, m.offset, m.key)) for m, reason in dead]


class Worker:
    """Per Python-worker state: the pipeline (preset, loaded fences) and an Elasticsearch sink on one loop."""

    def __init__(self, ctx: JobContext, sink: Sink | None = None) -> None:
        self.ctx = ctx
        self.pipeline = ctx.pipeline()
        self.loop = asyncio.new_event_loop()
        self.sink: Sink = sink or ElasticsearchSink(es_client(list(ctx.es_hosts)), max_new_indices=ctx.max_new_indices)

    def write(self, actions: list[dict[str, Any]]) -> list[tuple[dict[str, Any], str]]:
        """Bulk-index in slices of IOT_BULK_SIZE; returns what Elasticsearch refused for good."""
        rejected: list[tuple[dict[str, Any], str]] = []
        for start in range(0, len(actions), self.ctx.bulk_size):
            rejected += self.loop.run_until_complete(self.sink.write(actions[start:start + self.ctx.bulk_size]))
        return rejected

    def process(self, chunk: pd.DataFrame) -> pd.DataFrame:
        messages = incoming(chunk)
        result = annotate(self.pipeline, messages)
        rejected = self.write(result.actions)
        dead = list(result.dead)
        # Same reason text as the agents give documents a sink refused for good.
        dead += [(result.sources[(a["_index"], a["_id"])], f"{self.sink.name}: {reason}") for a, reason in rejected]
        letters = dead_letters(dead)
        rows: dict[str, list[Any]] = {c: [] for c in OUTPUT_COLUMNS}
        for key, value in letters:
            for column, item in zip(OUTPUT_COLUMNS, ("dlq", key, value, 0, 0, 0, 0, 0)):
                rows[column].append(item)
        stats = ("stats", None, None, len(messages), len(result.actions) - len(rejected), len(dead), result.filtered,
                 len(rejected))
        for column, item in zip(OUTPUT_COLUMNS, stats):
            rows[column].append(item)
        return pd.DataFrame(rows, columns=list(OUTPUT_COLUMNS))


_WORKERS: dict[JobContext, Worker] = {}


def worker_for(ctx: JobContext) -> Worker:
    """One Worker per Python worker process and context (Spark reuses Python workers across tasks)."""
    worker = _WORKERS.get(ctx)
    if worker is None:
        worker = _WORKERS[ctx] = Worker(ctx)
    return worker


def partition_function(ctx: JobContext) -> Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]:
    """The ``mapInPandas`` function of the job."""

    def run(chunks: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        worker = worker_for(ctx)
        for chunk in chunks:
            if len(chunk):
                yield worker.process(chunk)

    return run
