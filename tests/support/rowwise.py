"""Frozen reference: the row-wise ``Pipeline.process`` of commit 61bb68b (before the batch core), for the tests only.

The batch core in :mod:`agents.pipeline` must give the same documents, ids, dead letters, alerts, states and
latest positions; ``tests/test_batch_core.py`` holds the two equal. Copied as it was; do not "improve" it.
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
from agents.pipeline import Incoming
from agents.tracks import State, advance_batch
from agents.validate import Observation, decode
from geoiot import documents
from geoiot.schema import InvalidRecord, Preset
from geoiot.timeparse import EventTimeBounds

log = logging.getLogger("tests.rowwise")


@dataclass
class RowwiseResult:
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
class RowwisePipeline:
    preset: Preset
    fences: Geofences
    index: str
    tz: tzinfo = timezone.utc
    filter_inside: bool = False
    bounds: EventTimeBounds = field(default_factory=EventTimeBounds)

    def process(self, messages: Sequence[Incoming], get_state: Callable[[str], State | None]) -> RowwiseResult:
        """The batch's effects; an event that cannot be processed is a dead letter, never the batch's end."""
        out = RowwiseResult()
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
                             get_state: Callable[[str], State | None], now: int, out: RowwiseResult) -> None:
        """The batch computation failed: redo it event by event so only the failing events become dead letters."""
        out.actions, out.alerts, out.states, out.sources, out.filtered, out.newest = [], [], {}, {}, 0, {}

        def state_of(track: str) -> State | None:
            newer = out.states.get(track)
            return newer[1] if newer is not None else get_state(track)

        for item in valid:
            try:
                one = RowwiseResult()
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
                  now: int, out: RowwiseResult) -> None:
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
