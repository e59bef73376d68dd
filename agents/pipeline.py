"""One batch of raw messages -> bulk actions, alerts, dead letters and new track states.

Faust-free (the agent in :mod:`agents.app` does the I/O), so the whole per-event logic is unit
tested without Kafka; the Spark job runs it too. Any event that cannot be decoded, is outside the
event-time bounds, would get an ``_id`` Elasticsearch refuses, or makes the annotation fail becomes
a dead letter with its reason; the rest of the batch goes on. Geofences are computed for the whole
batch at once; track state is advanced in arrival order, which per track is offset order because
messages are keyed by track id.

Each batch also gives at most one latest-position write per track (:func:`geoiot.documents.latest_action`):
the newest indexed observation of that track in the batch (on equal event times the later message,
whose document is the one the observation index keeps). In geofence filter mode it is the newest
observation inside a fence, like everything stored in that mode: a track that left every fence keeps its
last position inside one (its time says how old it is; the exit alert says it left).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timezone, tzinfo
from typing import Any

import numpy as np

from agents.alerts import transitions
from agents.geofence import Geofences
from agents.tracks import State, advance_batch
from agents.validate import Observation, decode
from geoiot import documents
from geoiot.schema import InvalidRecord, Preset
from geoiot.timeparse import EventTimeBounds

log = logging.getLogger("agents.pipeline")


@dataclass(frozen=True, slots=True)
class Incoming:
    value: bytes | None
    key: bytes | None
    topic: str
    partition: int
    offset: int


@dataclass
class BatchResult:
    actions: list[dict[str, Any]] = field(default_factory=list)
    alerts: list[dict[str, Any]] = field(default_factory=list)
    dead: list[tuple[Incoming, str]] = field(default_factory=list)
    states: dict[str, tuple[int, State]] = field(default_factory=dict)  # track -> (partition, new state)
    valid: int = 0
    filtered: int = 0  # valid but outside every fence in filter mode
    nulled: int = 0  # attributes stored as null because they could not be coerced
    sources: dict[tuple[str, str], Incoming] = field(default_factory=dict)  # (_index, _id) -> message
    latest: list[dict[str, Any]] = field(default_factory=list)  # one latest-position action per track
    newest: dict[str, tuple[int, dict[str, Any]]] = field(default_factory=dict)  # track -> (time_ms, document)


def keep_newest(newest: dict[str, tuple[int, dict[str, Any]]], track: str, time_ms: int,
                doc: dict[str, Any]) -> None:
    """Keep ``doc`` as the track's newest unless an older report: on a tie the later one wins, as in the index."""
    if not documents.keeps_latest(time_ms):
        return
    seen = newest.get(track)
    if seen is None or time_ms >= seen[0]:
        newest[track] = (time_ms, doc)


@dataclass
class Pipeline:
    preset: Preset
    fences: Geofences
    index: str
    tz: tzinfo = timezone.utc
    filter_inside: bool = False
    bounds: EventTimeBounds = field(default_factory=EventTimeBounds)

    def process(self, messages: Sequence[Incoming], get_state: Callable[[str], State | None]) -> BatchResult:
        """The batch's effects; an event that cannot be processed is a dead letter, never the batch's end."""
        out = BatchResult()
        now = int(time.time() * 1000)
        valid: list[tuple[Incoming, Observation]] = []
        for msg in messages:
            try:
                obs = decode(self.preset, msg.value, self.tz)
                problem = self.bounds.problem(obs.time_ms, now)
                if problem is not None:
                    raise InvalidRecord(problem)
                documents.index_for(self.index, obs.time_ms)
                documents.doc_id(obs.track, obs.time_ms)
            except InvalidRecord as exc:
                out.dead.append((msg, exc.reason))
                continue
            except Exception as exc:  # a bug or an input nobody foresaw: this event only
                out.dead.append((msg, f"cannot decode the event: {type(exc).__name__}: {exc}"))
                continue
            valid.append((msg, obs))
            out.nulled += len(obs.nulled)
        out.valid = len(valid)
        if not valid:
            return out
        try:
            self._annotate(valid, get_state, now, out)
        except Exception as exc:
            log.warning("batch annotation failed (%s: %s); redoing it event by event", type(exc).__name__, exc)
            self._annotate_one_by_one(valid, get_state, now, out)
        out.latest = [documents.latest_action(self.index, track, time_ms, doc)
                      for track, (time_ms, doc) in out.newest.items()]
        return out

    def _annotate_one_by_one(self, valid: list[tuple[Incoming, Observation]],
                             get_state: Callable[[str], State | None], now: int, out: BatchResult) -> None:
        """The batch computation failed: redo it event by event so only the failing events become dead letters."""
        out.actions, out.alerts, out.states, out.sources, out.filtered, out.newest = [], [], {}, {}, 0, {}

        def state_of(track: str) -> State | None:
            newer = out.states.get(track)
            return newer[1] if newer is not None else get_state(track)

        for item in valid:
            try:
                one = BatchResult()
                self._annotate([item], state_of, now, one)
            except Exception as exc:
                out.dead.append((item[0], f"cannot annotate the event: {type(exc).__name__}: {exc}"))
                out.valid -= 1
                continue
            out.actions += one.actions
            out.alerts += one.alerts
            out.states.update(one.states)
            out.sources.update(one.sources)
            out.filtered += one.filtered
            for track, (time_ms, doc) in one.newest.items():
                keep_newest(out.newest, track, time_ms, doc)

    def _annotate(self, valid: list[tuple[Incoming, Observation]], get_state: Callable[[str], State | None],
                  now: int, out: BatchResult) -> None:
        lon = np.fromiter((o.lon for _, o in valid), dtype=np.float64, count=len(valid))
        lat = np.fromiter((o.lat for _, o in valid), dtype=np.float64, count=len(valid))
        inside = self.fences.containing(lon, lat)
        observations = [o for _, o in valid]
        motion = advance_batch([o.track for o in observations], [o.time_ms for o in observations],
                               [o.lon for o in observations], [o.lat for o in observations], inside, get_state)
        changes = motion.transitions
        distance, speed, heading = motion.distance_m, motion.speed_mps, motion.heading_deg
        actions, alerts, sources, filtered = [], [], {}, 0
        newest: dict[str, tuple[int, dict[str, Any]]] = {}
        for i, ((msg, obs), fences) in enumerate(zip(valid, inside)):
            change = changes.get(i)
            if change is not None:
                alerts.extend(transitions(obs.track, change[0], change[1], obs.time_ms, obs.lon, obs.lat))
            if self.filter_inside and not fences:
                filtered += 1
                continue
            doc = documents.build(obs.record, obs.lon, obs.lat, fences, distance[i], speed[i], heading[i], now)
            action = documents.action(self.index, obs.track, obs.time_ms, doc)
            actions.append(action)
            sources[(action["_index"], action["_id"])] = msg
            keep_newest(newest, obs.track, obs.time_ms, doc)
        # Only a complete computation is kept, so a failure above leaves ``out`` as it was.
        for track, (i, state) in motion.states.items():
            out.states[track] = (valid[i][0].partition, state)
        out.actions += actions
        out.alerts += alerts
        out.sources.update(sources)
        out.filtered += filtered
        for track, (time_ms, doc) in newest.items():
            keep_newest(out.newest, track, time_ms, doc)
