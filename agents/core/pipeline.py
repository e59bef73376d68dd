"""One batch of raw messages -> a prepared bulk request, alerts, dead letters and new track states.

Free of I/O (the runtimes write its result), so the whole per-event logic is unit
tested without Kafka; the Spark job runs it too. Any event that cannot be decoded, is outside the
event-time bounds, would get an ``_id`` Elasticsearch refuses, or makes the annotation fail becomes
a dead letter with its reason; the rest of the batch goes on. Geofences are computed for the whole
batch at once; track state is advanced in arrival order, which per track is offset order because
messages are keyed by track id.

Each batch also gives at most one latest-position write per track (external versioning on the event time):
the newest indexed observation of that track in the batch that is not late (on equal event times the first
message: a later one is late, written create-only, so its document is not the one the index keeps). In
geofence filter mode it is the newest such observation inside a fence, like everything stored in that mode: a
track that left every fence keeps its last position inside one (its time says how old it is; the exit alert
says it left).

The batch is computed by columns, not rows (:func:`agents.core.validate.decode_batch`, then bounds, index names
and ids over the time column, geofences and motion over arrays), and each document is serialised once, straight
into its bulk entry (:class:`agents.core.bulk.Bulk`), the one form of a batch's result.
"""

from __future__ import annotations

import logging
import time
from bisect import bisect_left
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timezone, tzinfo
from typing import Any, NamedTuple, Protocol

import numpy as np
import orjson

from agents.core import codec
from agents.core.bulk import LATE_OP, Bulk, meta_line
from agents.core.geofence import Geofences
from agents.core.motion import State, StateLike, advance_batch
from agents.core.transitions import transitions
from agents.core.validate import decode_batch
from geoiot import documents
from geoiot.schema import InvalidRecord, Preset
from geoiot.timeparse import EventTimeBounds

log = logging.getLogger("agents.core.pipeline")

DAY_MS = documents.DAY_MS
# An _id of a track id up to this long cannot exceed MAX_ID_BYTES (":" and at most 20 digits of time).
_SHORT_TRACK = documents.MAX_ID_BYTES // 4 - 21


class Message(Protocol):
    """What the pipeline reads of a raw message: aiokafka's ``ConsumerRecord`` (the worker passes its records
    as they are), :class:`Incoming` elsewhere (the Spark job, tests)."""

    @property
    def value(self) -> bytes | None: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...


class Incoming(NamedTuple):
    """One raw message made by the caller (a :class:`Message`). A named tuple: cheaper to make than a frozen
    dataclass (whose ``__init__`` calls ``object.__setattr__`` per field)."""

    value: bytes | None
    key: bytes | None
    topic: str
    partition: int
    offset: int


class BatchResult:
    """What a batch gives: its bulk entries (observations, latest positions), with the message of each
    observation, and everything else (dead letters, alerts, new states, counts)."""

    def __init__(self) -> None:
        self.alerts: list[dict[str, Any]] = []
        self.dead: list[tuple[Message, str]] = []
        self.states: dict[str, tuple[int, State]] = {}  # track -> (partition, new state)
        self.valid = 0
        self.filtered = 0  # valid but outside every fence in filter mode
        self.nulled = 0  # attributes stored as null because they could not be coerced
        self.key_mismatch = 0  # valid events whose Kafka key is not their track id (the value's track id wins)
        self.observations = Bulk()  # one entry per indexed event, in message order
        self.origins: list[Message] = []  # the message of each observation entry
        self.latest_bulk = Bulk()  # one latest-position entry per track

    def bulk(self, latest: bool = True) -> Bulk:
        """The bulk request of the batch: the observations, then (``latest``) the latest positions."""
        return self.observations + self.latest_bulk if latest else self.observations

    @property
    def sources(self) -> dict[tuple[str, str], Message]:
        """(_index, _id) -> message of every observation (a latest-position entry is never a dead letter)."""
        return dict(zip(zip(self.observations.index, self.observations.ids), self.origins))


@dataclass(slots=True)
class _Columns:
    """The valid events of a batch, by columns."""

    messages: list[Message]
    records: list[dict[str, Any]]
    tracks: list[str]
    times: list[int]
    lons: list[float]
    lats: list[float]
    index: list[str]
    ids: list[str]


@dataclass(slots=True)
class _Part:
    """The annotation of some valid events (all of them, or one when redone event by event)."""

    events: list[int] = field(default_factory=list)  # the events indexed (indices into the columns)
    sources: list[bytes] = field(default_factory=list)  # their documents' bytes
    alerts: list[dict[str, Any]] = field(default_factory=list)
    states: dict[str, tuple[int, State]] = field(default_factory=dict)  # track -> (event, state)
    filtered: int = 0
    newest: dict[str, tuple[int, int]] = field(default_factory=dict)  # track -> (time_ms, event)
    late: set[int] = field(default_factory=set)  # the late events indexed (create-only, never a latest position)


def key_mismatches(messages: Sequence[Message], tracks: Sequence[str]) -> int:
    """Messages whose Kafka key is set and is not the UTF-8 of their value's track id.

    The rule (README, "Kafka key"): the value's track id wins (it is what is validated, stored and tracked);
    such events are counted, not dead-lettered. A message without a key is not counted."""
    n = 0
    for msg, track in zip(messages, tracks):
        key = msg.key
        if key is not None and key != track.encode():
            n += 1
    return n


def keep_newest(newest: dict[str, tuple[int, int]], track: str, time_ms: int, event: int) -> None:
    """Keep ``event`` as the track's newest unless an older report: on a tie the later one wins, as in the index."""
    if not documents.keeps_latest(time_ms):
        return
    seen = newest.get(track)
    if seen is None or time_ms >= seen[0]:
        newest[track] = (time_ms, event)


@dataclass
class Pipeline:
    preset: Preset
    fences: Geofences
    index: str
    tz: tzinfo = timezone.utc
    filter_inside: bool = False
    bounds: EventTimeBounds = field(default_factory=EventTimeBounds)

    def process(self, messages: Sequence[Message], get_state: Callable[[str], StateLike | None]) -> BatchResult:
        """The batch's effects; an event that cannot be processed is a dead letter, never the batch's end."""
        out = BatchResult()
        now = int(time.time() * 1000)
        cols = self._validate(messages, now, out)
        out.valid = len(cols.tracks)
        out.key_mismatch = key_mismatches(cols.messages, cols.tracks)
        if not cols.tracks:
            return out
        try:
            part = self._annotate(cols, range(len(cols.tracks)), get_state, now)
        except Exception as exc:
            log.warning("batch annotation failed (%s: %s); redoing it event by event", type(exc).__name__, exc)
            part = self._annotate_one_by_one(cols, get_state, now, out)
        self._collect(cols, part, out)
        return out

    def _validate(self, messages: Sequence[Message], now: int, out: BatchResult) -> _Columns:
        """Decode and check the batch by columns; the invalid events become dead letters, in message order."""
        dec = decode_batch(self.preset, [m.value for m in messages], self.tz)
        reasons = dec.reasons
        times = dec.times
        problems: dict[int, str] = {}  # index into dec's columns -> reason
        if times:
            bounds = self.bounds
            if type(bounds) is EventTimeBounds:  # its rule, by column; a subclass is asked event by event
                lo, hi = bounds.window(now)
                suspects = range(len(times)) if min(times) < lo or max(times) > hi else ()
            else:
                suspects = range(len(times))
            for k in suspects:
                problem = bounds.problem(times[k], now)
                if problem is not None:
                    problems[k] = problem
            days = (np.asarray(times, dtype=np.int64) // DAY_MS).tolist()
            names: dict[int, str | None] = {}
            for day in set(days):
                try:
                    names[day] = documents.index_for(self.index, day * DAY_MS)
                except InvalidRecord as exc:
                    names[day] = None
                    for k, d in enumerate(days):
                        if d == day and k not in problems:
                            problems[k] = exc.reason
            tracks = dec.tracks
            ids = [f"{t}:{ms}" for t, ms in zip(tracks, times)]
            for k, track in enumerate(tracks):
                if len(track) > _SHORT_TRACK and k not in problems:
                    try:
                        documents.doc_id(track, times[k])
                    except InvalidRecord as exc:
                        problems[k] = exc.reason
            index = [names[d] for d in days]
        else:
            ids, index = [], []
        positions = dec.positions
        for k, reason in problems.items():
            reasons[positions[k]] = reason
        for i in sorted(reasons):
            out.dead.append((messages[i], reasons[i]))
        keep = [k for k in range(len(positions)) if k not in problems] if problems else None
        if dec.nulled:
            out.nulled = sum(n for i, n in dec.nulled.items() if i not in reasons)
        if keep is None:
            return _Columns([messages[i] for i in positions], dec.records, dec.tracks, times, dec.lons, dec.lats,
                            index, ids)
        return _Columns([messages[positions[k]] for k in keep], [dec.records[k] for k in keep],
                        [dec.tracks[k] for k in keep], [times[k] for k in keep], [dec.lons[k] for k in keep],
                        [dec.lats[k] for k in keep], [index[k] for k in keep], [ids[k] for k in keep])

    def _annotate_one_by_one(self, cols: _Columns, get_state: Callable[[str], StateLike | None], now: int,
                             out: BatchResult) -> _Part:
        """The batch computation failed: redo it event by event so only the failing events become dead letters."""
        total = _Part()

        def state_of(track: str) -> StateLike | None:
            newer = total.states.get(track)
            return newer[1] if newer is not None else get_state(track)

        for k in range(len(cols.tracks)):
            try:
                one = self._annotate(cols, [k], state_of, now)
            except Exception as exc:
                out.dead.append((cols.messages[k], f"cannot annotate the event: {type(exc).__name__}: {exc}"))
                out.valid -= 1
                continue
            total.events += one.events
            total.sources += one.sources
            total.alerts += one.alerts
            total.states.update(one.states)
            total.filtered += one.filtered
            total.late |= one.late
            for track, (time_ms, event) in one.newest.items():
                keep_newest(total.newest, track, time_ms, event)
        return total

    def _annotate(self, cols: _Columns, events: Sequence[int], get_state: Callable[[str], StateLike | None],
                  now: int) -> _Part:
        """Geofences, motion, alerts and document bytes of ``events`` (indices into ``cols``); no side effect
        on ``cols`` beyond the documents written into their records, so a failure can be redone."""
        whole = len(events) == len(cols.tracks)
        tracks = cols.tracks if whole else [cols.tracks[k] for k in events]
        times = cols.times if whole else [cols.times[k] for k in events]
        lons = cols.lons if whole else [cols.lons[k] for k in events]
        lats = cols.lats if whole else [cols.lats[k] for k in events]
        lon_array, lat_array = np.asarray(lons, dtype=np.float64), np.asarray(lats, dtype=np.float64)
        inside = self.fences.containing(lon_array, lat_array)
        cells = codec.geohashes(lat_array, lon_array)
        motion = advance_batch(tracks, times, lons, lats, inside, get_state)
        part = _Part()
        describe = self.fences.describe  # the fences in force for this batch: their versions, and those removed
        for i, (entered, exited) in motion.transitions.items():
            part.alerts.extend(map(describe, transitions(tracks[i], entered, exited, times[i], lons[i], lats[i])))
        distance, speed, heading = motion.distance_m, motion.speed_mps, motion.heading_deg
        records, filter_inside = cols.records, self.filter_inside
        dumps, build_into, fill = orjson.dumps, codec.build_into, codec.fill
        indexed, sources, newest, keeps = part.events, part.sources, part.newest, documents.keeps_latest
        structs: list[Any] = []  # the documents that are structs, encoded together after the loop
        late = set(motion.late)
        for i, k in enumerate(events):
            fences = inside[i]
            if filter_inside and not fences:
                part.filtered += 1
                continue
            record = records[k]
            if type(record) is dict:
                sources.append(dumps(build_into(record, lons[i], lats[i], fences, distance[i], speed[i], heading[i],
                                                now, cells[i])))
            else:
                structs.append(fill(record, lons[i], lats[i], fences, distance[i], speed[i], heading[i], now,
                                    cells[i]))
                sources.append(None)
            indexed.append(k)
            if late and i in late:  # stored create-only; the track's state report is as new or newer
                part.late.add(k)
                continue
            t, track = times[i], tracks[i]
            if keeps(t):
                seen = newest.get(track)
                if seen is None or t >= seen[0]:
                    newest[track] = (t, k)
        if structs:
            # One call for all of them: msgspec writes one JSON document per line (a newline inside a string is
            # escaped), cheaper than a call per document.
            encoded = codec.ENCODER.encode_lines(structs).split(b"\n")
            encoded.pop()  # after the last newline
            if len(encoded) == len(sources):
                part.sources = encoded
            else:
                lines = iter(encoded)
                part.sources = [next(lines) if source is None else source for source in sources]
        for track, (i, state) in motion.states.items():
            part.states[track] = (events[i], state)
        return part

    def _collect(self, cols: _Columns, part: _Part, out: BatchResult) -> None:
        """The part's entries as bulk lines, its states by source partition, its latest positions."""
        messages, index, ids = cols.messages, cols.index, cols.ids
        obs = out.observations
        events = part.events
        kept_ids = [ids[k] for k in events] if len(events) < len(ids) else ids
        names = [index[k] for k in events] if len(events) < len(index) else index
        # The _ids as JSON strings, one call for all (one per line: a newline inside a string is escaped).
        quoted = codec.ENCODER.encode_lines(kept_ids).split(b"\n")
        quoted.pop()
        prefixes: dict[str, bytes] = {}  # b'{"index":{"_index":"<name>","_id":' as orjson writes the metadata
        for name in set(names):
            prefixes[name] = meta_line(name, "").rsplit(b'"_id":', 1)[0] + b'"_id":'
        join = b"".join
        if len(prefixes) == 1:
            prefix = prefixes[names[0]]
            obs.metas = [join((prefix, q, b"}}")) for q in quoted]
        else:
            obs.metas = [join((prefixes[name], q, b"}}")) for name, q in zip(names, quoted)]
        if part.late:  # late reports: create-only (agents.core.bulk.LATE_OP)
            creates = obs.creates = {j for j, k in enumerate(events) if k in part.late}
            for j in creates:
                obs.metas[j] = meta_line(names[j], kept_ids[j], None, LATE_OP)
        obs.sources, obs.index, obs.ids = part.sources, names, kept_ids  # the columns are not used after this
        obs.versions = [None] * len(kept_ids)
        out.origins = [messages[k] for k in events]
        out.alerts += part.alerts
        out.filtered += part.filtered
        for track, (k, state) in part.states.items():
            out.states[track] = (messages[k].partition, state)
        latest = documents.latest_index(self.index)
        sources = part.sources
        for track, (time_ms, k) in part.newest.items():  # events ascend: k's document is found by bisection
            out.latest_bulk.append(latest, track, sources[bisect_left(events, k)], time_ms)
