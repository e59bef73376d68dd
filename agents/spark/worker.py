"""Executor side of the Spark job: the agents' pipeline per track with Spark's state, then Elasticsearch.

No pyspark import here (Spark hands these closures pandas frames), so all of it is unit tested without
Spark. Two steps per micro-batch:

1. :func:`group_function`, the ``applyInPandasWithState`` function: the Kafka rows of one track (the
   group key is the track field read from the value, :func:`group_key_path`), put in Kafka order
   (topic, partition, offset), go through the very same :meth:`agents.core.pipeline.Pipeline.process` the
   Faust agents run, with ``get_state`` fed from the group's state in Spark's state store: the
   :mod:`agents.core.motion` state of each track (its JSON form) with the time it was last updated
   (:data:`STATE_SCHEMA`). Tracks idle longer than IOT_TRACK_IDLE_TIMEOUT are dropped first
   (:mod:`agents.core.idle`, the worker's rule); Spark's ``ProcessingTimeTimeout`` removes groups nobody
   reports for. What comes out is rows (:data:`STATE_OUTPUT_SCHEMA`): the bulk actions of the
   observations and of the latest positions (with the track's live-layer key and source partition), the
   dead letters and the alerts (both in the agents' message shapes) and one row of counts.
2. :func:`write_function`, a ``mapInPandas`` over those rows: bulk-indexes observations and latest
   positions with the agents' :class:`agents.store.sink.ElasticsearchSink` (same retry rules, same bounded
   index creation, external versions for the latest positions: a 409 is counted, not dead-lettered, as is
   the 409 of a late report's create whose document is stored already: ``already_stored``),
   turns observations Elasticsearch refused for good into dead letters, and passes dead letters,
   alerts and, once the writes succeeded, each track's newest stored document for the live layer
   (:mod:`geoiot.live`: IOT_LATEST_TOPIC, keyed by track, on the track's source partition) on with their
   topic (:data:`WRITE_SCHEMA`) for Spark's Kafka sink.

A group normally holds one track; the state is a mapping so that a value whose track field reads
differently in JSON and in the preset (e.g. ``7`` and ``"7"``) is still processed correctly.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pandas as pd

from agents.core import idle, state_codec
from agents.core.bulk import Bulk
from agents.core.fence_shapes import Shapes
from agents.core.geofence import Geofences
from agents.core.motion import State
from agents.core.pipeline import BatchResult, Incoming, Pipeline
from agents.store.sink import ElasticsearchSink, Sink, es_client, stored_latest
from geoiot import live
from geoiot.config import Settings
from geoiot.deadletter import dead_letter
from geoiot.documents import doc_id
from geoiot.fences import FenceSet
from geoiot.schema import load_preset
from geoiot.timeparse import EventTimeBounds, zone

# The group state: JSON {track: [updated_ms, state]} (state: agents.core.state_codec.to_mapping of the
# agents.core.motion State; updated_ms: the batch timestamp of the micro-batch that last moved it).
STATE_SCHEMA = "tracks string"
COUNTS = ("messages", "dead", "filtered", "alerts", "ended")
# Rows of the state function: kind "doc" (value: the bulk action; key, raw, src, partition, offset: its
# message, for a dead letter if Elasticsearch refuses it), "latest" (value: the action; key: the track's live
# record key, partition: its source partition), "dlq" and "alert" (key, value: the Kafka message), "stats" (the
# counts).
STATE_OUTPUT_SCHEMA = ("kind string, key binary, value binary, raw binary, src string, partition int, offset long, "
                       + ", ".join(f"{c} long" for c in COUNTS))
STATE_COLUMNS = ("kind", "key", "value", "raw", "src", "partition", "offset", *COUNTS)
# Rows of the write step: "dlq"/"alert"/"live" with their topic (and partition: live records only; null lets
# the producer choose) for Spark's Kafka sink, and "stats".
WRITE_COUNTS = ("messages", "indexed", "dead", "filtered", "rejected", "alerts", "ended", "latest", "latest_stale",
                "latest_refused", "live", "already_stored")
WRITE_SCHEMA = ("kind string, topic string, key binary, value binary, partition int, "
                + ", ".join(f"{c} long" for c in WRITE_COUNTS))
WRITE_COLUMNS = ("kind", "topic", "key", "value", "partition", *WRITE_COUNTS)


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
    dlq_topic: str = "taxi-dlq"
    alerts_topic: str = "taxi-alerts"
    idle_timeout: float = 0.0
    fences_snapshot: str = ""  # the driver's snapshot of the live fences (agents.spark.fences); empty: the file's
    latest_topic: str = "taxi-latest"  # the live layer (geoiot.live)

    @classmethod
    def from_settings(cls, settings: Settings, fences_snapshot: str = "") -> "JobContext":
        return cls(settings.iot_schema, settings.iot_geofences, settings.iot_index, settings.iot_timezone,
                   settings.iot_geofence_filter, tuple(settings.es_hosts), max(1, settings.iot_bulk_size),
                   EventTimeBounds.from_settings(settings), settings.iot_max_new_indices, settings.iot_dlq_topic,
                   settings.iot_alerts_topic, settings.iot_track_idle_timeout, fences_snapshot, settings.latest_topic)

    def pipeline(self) -> Pipeline:
        return Pipeline(load_preset(self.schema), Geofences.load(self.geofences), self.index, zone(self.timezone),
                        self.geofence_filter, self.bounds)


def group_key_path(field: str) -> str:
    """The JSON path of the preset's track field, for Spark's ``get_json_object`` (the group key)."""
    if field.replace("_", "").isalnum():
        return f"$.{field}"
    return "$['" + field.replace("\\", "\\\\").replace("'", "\\'") + "']"


def incoming(chunk: pd.DataFrame) -> list[Incoming]:
    """Kafka source rows of one Arrow chunk as the pipeline's messages."""
    return [Incoming(None if v is None else bytes(v), None if k is None else bytes(k), str(t), int(p), int(o))
            for k, v, t, p, o in zip(chunk["key"], chunk["value"], chunk["topic"], chunk["partition"],
                                     chunk["offset"])]


def dead_letters(dead: Sequence[tuple[Incoming, str]]) -> list[tuple[bytes | None, bytes]]:
    """(key, value) of the dead-letter messages, in the agents' shape; the key is the original key."""
    return [(m.key, dead_letter(m.value, reason, m.topic, m.partition, m.offset, m.key)) for m, reason in dead]


Held = dict[str, list[Any]]  # track -> [updated_ms, state]


def advance_group(pipeline: Pipeline, messages: Sequence[Incoming], held: Held, now_ms: int,
                  idle_timeout: float) -> tuple[BatchResult, Held, int]:
    """One group's reports through the agents' pipeline against its held states.

    Returns the pipeline's result, the states to hold now and how many ended idle (:mod:`agents.core.idle`).
    """
    alive = {t: v for t, v in held.items() if not idle.expired(v[0], now_ms, idle_timeout)}
    ended = len(held) - len(alive)

    def get_state(track: str) -> State | None:
        entry = alive.get(track)
        return None if entry is None else state_codec.from_mapping(entry[1])

    result = pipeline.process(messages, get_state)
    for track, (_, state) in result.states.items():
        alive[track] = [now_ms, state_codec.to_mapping(state)]
    return result, alive, ended


def timeout_duration(held: Held, now_ms: int, idle_timeout: float) -> int | None:
    """Milliseconds until Spark's processing-time timeout should remove the group (None: no timeout).

    Spark times a group out when its timeout timestamp (now + duration) is below the batch timestamp:
    at the newest track's :func:`agents.core.idle.ends_at`, the same boundary the function applies itself.
    """
    if not held or not idle.timeout_ms(idle_timeout):
        return None
    ends = idle.ends_at(max(v[0] for v in held.values()), idle_timeout)
    return max(1, ends - now_ms)


def state_rows(result: BatchResult, messages: int, ended: int) -> pd.DataFrame:
    """The state function's output rows for one group's result (see :data:`STATE_OUTPUT_SCHEMA`)."""
    rows: dict[str, list[Any]] = {c: [] for c in STATE_COLUMNS}

    def add(kind: str, key: Any = None, value: Any = None, msg: Incoming | None = None,
            counts: Sequence[int] = (0,) * len(COUNTS), partition: int | None = None) -> None:
        for column, item in zip(STATE_COLUMNS, (kind, key, value, None if msg is None else msg.value,
                                                None if msg is None else msg.topic,
                                                partition if msg is None else msg.partition,
                                                None if msg is None else msg.offset, *counts)):
            rows[column].append(item)

    for i, msg in enumerate(result.origins):
        add("doc", msg.key, orjson.dumps(result.observations.action(i)), msg)
    partitions = {doc: msg.partition for doc, msg in zip(result.observations.ids, result.origins)}
    for action in result.latest_bulk.actions():  # on the partition of the message of the track's newest document
        track = action["_id"]
        add("latest", live.key(track), orjson.dumps(action), partition=partitions[doc_id(track, action["version"])])
    for key, value in dead_letters(result.dead):
        add("dlq", key, value)
    for alert in result.alerts:
        add("alert", alert["track"].encode(), orjson.dumps(alert))
    add("stats", counts=(messages, len(result.dead), result.filtered, len(result.alerts), ended))
    return pd.DataFrame(rows, columns=list(STATE_COLUMNS))


def ordered(frames: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """A group's rows in Kafka order (topic, partition, offset), whatever order the shuffle gave them."""
    frame = frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
    return frame.sort_values(["topic", "partition", "offset"], kind="stable")


class Worker:
    """Per Python-worker state: the pipeline (preset, loaded fences) and an Elasticsearch sink on one loop."""

    def __init__(self, ctx: JobContext, sink: Sink | None = None) -> None:
        self.ctx = ctx
        self.pipeline = ctx.pipeline()
        self.shapes = Shapes()
        self.snapshot_seen: tuple[int, int] | None = None  # (inode, mtime) of the fence snapshot in force
        self.loop = asyncio.new_event_loop()
        self.stale = 0
        self.already_stored = 0
        self.sink: Sink = sink or ElasticsearchSink(es_client(list(ctx.es_hosts)), max_new_indices=ctx.max_new_indices,
                                                    on_conflict=self._count_stale, on_duplicate=self._count_stored)

    def _count_stale(self, n: int) -> None:
        self.stale += n

    def _count_stored(self, n: int) -> None:
        """Late reports whose create met their stored document (a re-sent report): kept, as the worker counts them."""
        self.already_stored += n

    def write(self, actions: list[dict[str, Any]]) -> list[tuple[dict[str, Any], str]]:
        """Bulk-index in slices of IOT_BULK_SIZE; returns what Elasticsearch refused for good."""
        rejected: list[tuple[dict[str, Any], str]] = []
        for start in range(0, len(actions), self.ctx.bulk_size):
            rejected += self.loop.run_until_complete(self.sink.write(actions[start:start + self.ctx.bulk_size]))
        return rejected

    def refresh_fences(self) -> None:
        """The fences of the driver's latest snapshot, read again only when the file was replaced: the driver
        replaces it between micro-batches, so every group of a batch sees the same fences (agents.spark.fences)."""
        path = self.ctx.fences_snapshot
        if not path:
            return
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return
        seen = (st.st_ino, st.st_mtime_ns)
        if seen != self.snapshot_seen:
            fs = FenceSet.from_snapshot(Path(path).read_bytes())
            self.pipeline.fences = self.shapes.index(fs.fences, fs.removed)
            self.snapshot_seen = seen

    def group(self, held: Held, frames: Sequence[pd.DataFrame], now_ms: int) -> tuple[pd.DataFrame, Held]:
        """The state function's work for one group: its output rows and the states to hold."""
        self.refresh_fences()
        frame = ordered(frames)
        messages = incoming(frame)
        result, alive, ended = advance_group(self.pipeline, messages, held, now_ms, self.ctx.idle_timeout)
        return state_rows(result, len(messages), ended), alive

    def store(self, chunk: pd.DataFrame) -> pd.DataFrame:
        """The write step over one chunk of state-function rows (see :data:`WRITE_SCHEMA`)."""
        kinds = chunk["kind"]
        docs = chunk[kinds == "doc"]
        observations = [orjson.loads(v) for v in docs["value"]]
        latest_rows = chunk[kinds == "latest"]
        latest = [orjson.loads(v) for v in latest_rows["value"]]
        partitions = {live.track_of(k): int(p) for k, p in zip(latest_rows["key"], latest_rows["partition"])}
        messages = {(a["_index"], a["_id"]): Incoming(raw, key, src, int(p), int(o))
                    for a, key, raw, src, p, o in zip(observations, docs["key"], docs["raw"], docs["src"],
                                                      docs["partition"], docs["offset"])}
        stale_before, stored_before = self.stale, self.already_stored
        rejected = self.write(observations)
        if rejected:  # a latest position must be a stored observation, as in the agents' sink
            latest = stored_latest(Bulk.from_actions(observations), Bulk.from_actions(latest), rejected).actions()
        rejected += self.write(latest)
        refused = [(messages[(a["_index"], a["_id"])], f"{self.sink.name}: {reason}") for a, reason in rejected
                   if (a["_index"], a["_id"]) in messages]
        latest_refused = len(rejected) - len(refused)
        stats = chunk[kinds == "stats"]
        sums = {c: int(stats[c].sum()) for c in COUNTS}
        rows: dict[str, list[Any]] = {c: [] for c in WRITE_COLUMNS}

        def add(kind: str, topic: str | None, key: Any, value: Any, counts: Sequence[int],
                partition: int | None = None) -> None:
            for column, item in zip(WRITE_COLUMNS, (kind, topic, key, value, partition, *counts)):
                rows[column].append(item)

        zeros = (0,) * len(WRITE_COUNTS)
        passed = chunk[kinds.isin(("dlq", "alert"))]
        for kind, key, value in zip(passed["kind"], passed["key"], passed["value"]):
            add(kind, self.ctx.dlq_topic if kind == "dlq" else self.ctx.alerts_topic, key, value, zeros)
        for key, value in dead_letters(refused):
            add("dlq", self.ctx.dlq_topic, key, value, zeros)
        # The live layer: each track's newest stored observation (never one Elasticsearch refused), even when its
        # _latest write conflicted (a newer one is there: readers keep the newest) or was refused (not read by it).
        for action in latest:
            add("live", self.ctx.latest_topic, live.key(action["_id"]), live.value(action["_source"]), zeros,
                partitions[action["_id"]])
        add("stats", None, None, None, (sums["messages"], len(observations) - len(refused), sums["dead"] + len(refused),
                                        sums["filtered"], len(refused), sums["alerts"], sums["ended"], len(latest),
                                        self.stale - stale_before, latest_refused, len(latest),
                                        self.already_stored - stored_before))
        return pd.DataFrame(rows, columns=list(WRITE_COLUMNS))


_WORKERS: dict[JobContext, Worker] = {}


def worker_for(ctx: JobContext) -> Worker:
    """One Worker per Python worker process and context (Spark reuses Python workers across tasks)."""
    worker = _WORKERS.get(ctx)
    if worker is None:
        worker = _WORKERS[ctx] = Worker(ctx)
    return worker


def empty_state_rows(ended: int) -> pd.DataFrame:
    """Only the counts row (a group removed by Spark's timeout)."""
    return state_rows(BatchResult(), 0, ended)


def group_function(ctx: JobContext) -> Callable[[Any, Iterator[pd.DataFrame], Any], Iterator[pd.DataFrame]]:
    """The ``applyInPandasWithState`` function of the job (``state``: pyspark's GroupState)."""

    def run(key: Any, frames: Iterator[pd.DataFrame], state: Any) -> Iterator[pd.DataFrame]:
        held: Held = orjson.loads(state.get[0]) if state.exists else {}
        if state.hasTimedOut:  # nobody of the group reported for IOT_TRACK_IDLE_TIMEOUT: its states end
            state.remove()
            yield empty_state_rows(len(held))
            return
        chunks = [f for f in frames if len(f)]
        if not chunks:
            return
        now_ms = state.getCurrentProcessingTimeMs()
        rows, alive = worker_for(ctx).group(held, chunks, now_ms)
        if alive:
            state.update((orjson.dumps(alive).decode(),))
            duration = timeout_duration(alive, now_ms, ctx.idle_timeout)
            if duration is not None:
                state.setTimeoutDuration(duration)
        elif state.exists:
            state.remove()
        yield rows

    return run


def write_function(ctx: JobContext) -> Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]:
    """The ``mapInPandas`` function of the write step."""

    def run(chunks: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        worker = worker_for(ctx)
        for chunk in chunks:
            if len(chunk):
                yield worker.store(chunk)

    return run
