"""Frozen reference: the row-wise ``Pipeline.process`` of commit 61bb68b (before the batch core), for the tests only.

The batch core in :mod:`agents.core.pipeline` must give the same documents, ids, dead letters, alerts, states and
latest positions; ``tests/test_batch_core.py`` holds the two equal. Copied as it was; do not "improve" it.
"""

from __future__ import annotations

import logging
import time
from bisect import bisect_left
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timezone, tzinfo
from typing import Any

import numpy as np

from agents.core.geofence import Geofences
from agents.core.motion import HISTORY, EARTH_RADIUS_M, State
from agents.core.pipeline import Incoming
from agents.core.transitions import transitions
from agents.core.validate import Observation, decode
from geoiot import documents
from geoiot.schema import InvalidRecord, Preset
from geoiot.timeparse import EventTimeBounds
from tests.support import actions as es_actions

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
        out.latest = [es_actions.latest_action(self.index, track, time_ms, doc)
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
                alerts.extend(map(self.fences.describe,  # the fence versions (agents.core.geofence)
                                  transitions(obs.track, change[0], change[1], obs.time_ms, obs.lon, obs.lat)))
            if self.filter_inside and not fences:
                filtered += 1
                continue
            doc = es_actions.build(obs.record, obs.lon, obs.lat, fences, distance[i], speed[i], heading[i], now)
            action = es_actions.action(self.index, obs.track, obs.time_ms, doc)
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


# --- agents/core/motion.advance_batch of 61bb68b ---

@dataclass(slots=True)
class RowwiseMotion:
    """Motion of every report of a batch, its fence transitions, and the tracks' new states."""

    distance_m: list[float | None]
    speed_mps: list[float | None]
    heading_deg: list[float | None]
    transitions: dict[int, tuple[tuple[str, ...], tuple[str, ...]]]  # report index -> (entered, exited)
    states: dict[str, tuple[int, State]]  # track -> (index of the last report that moved it, new state)


def advance_batch(tracks: Sequence[str], times: Sequence[int], lons: Sequence[float], lats: Sequence[float],
                  fences: Sequence[tuple[str, ...]], get_state: Callable[[str], State | None]) -> RowwiseMotion:
    """:func:`advance` applied to the reports of a batch in order, with the trigonometry vectorised.

    Same results as calling ``advance`` report by report (a property test holds them equal): one
    Python pass finds each report's previous point and the fence transitions, then numpy computes
    every distance, speed and heading at once, and each moved track's state is built once.
    """
    n = len(tracks)
    t0 = np.zeros(n, dtype=np.int64)
    lon0 = np.zeros(n, dtype=np.float64)
    lat0 = np.zeros(n, dtype=np.float64)
    has_prev = np.zeros(n, dtype=bool)
    changes: dict[int, tuple[tuple[str, ...], tuple[str, ...]]] = {}
    # track -> [t, lon, lat, fences, saved state, hist to extend, points appended, last moving index]
    cursors: dict[str, list[Any]] = {}
    for i in range(n):
        track, t, lon, lat, here = tracks[i], times[i], lons[i], lats[i], fences[i]
        cur = cursors.get(track)
        if cur is None:
            state = get_state(track)
            if state is None:
                cursors[track] = [t, lon, lat, here, None, [], [[t, lon, lat]], i]
                continue
            cur = cursors[track] = [state["t"], state["lon"], state["lat"], tuple(state["fences"]), state,
                                    state.get("hist") or [[state["t"], state["lon"], state["lat"]]], [], -1]
        if t > cur[0]:
            t0[i], lon0[i], lat0[i] = cur[0], cur[1], cur[2]
            has_prev[i] = True
            if here != cur[3]:
                before, after = set(cur[3]), set(here)
                if before != after:
                    changes[i] = (tuple(sorted(after - before)), tuple(sorted(before - after)))
            cur[0], cur[1], cur[2], cur[3] = t, lon, lat, here
            cur[6].append([t, lon, lat])
            cur[7] = i
            continue
        # Older or duplicate: motion against the latest kept point strictly before it.
        hist = (cur[5] + cur[6])[-HISTORY:] if cur[6] else ((cur[4] or {}).get("hist") or [])
        j = bisect_left([h[0] for h in hist], t)
        if j > 0:
            t0[i], lon0[i], lat0[i] = hist[j - 1]
            has_prev[i] = True

    distance: list[float | None] = [None] * n
    speed: list[float | None] = [None] * n
    heading: list[float | None] = [None] * n
    idx = np.flatnonzero(has_prev)
    if idx.size:
        lon1 = np.asarray(lons, dtype=np.float64)[idx]
        lat1 = np.asarray(lats, dtype=np.float64)[idx]
        t1 = np.asarray(times, dtype=np.int64)[idx]
        p1, p2 = np.radians(lat0[idx]), np.radians(lat1)
        dp, dl = p2 - p1, np.radians(lon1 - lon0[idx])
        a = np.sin(dp / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
        dist = 2 * EARTH_RADIUS_M * np.arcsin(np.minimum(1.0, np.sqrt(a)))
        dt = (t1 - t0[idx]) / 1000.0
        with np.errstate(divide="ignore", invalid="ignore"):
            spd = np.where(dt > 0, dist / np.where(dt > 0, dt, 1.0), np.nan)
        x = np.sin(dl) * np.cos(p2)
        y = np.cos(p1) * np.sin(p2) - np.sin(p1) * np.cos(p2) * np.cos(dl)
        head = np.degrees(np.arctan2(x, y)) % 360.0
        for k, d, s, h in zip(idx.tolist(), dist.tolist(), spd.tolist(), head.tolist()):
            distance[k] = d
            speed[k] = None if s != s else s  # NaN: no time elapsed
            heading[k] = h if d > 0 else None

    states: dict[str, tuple[int, State]] = {}
    for track, cur in cursors.items():
        if cur[6]:
            states[track] = (cur[7], {"t": cur[0], "lon": cur[1], "lat": cur[2], "fences": list(cur[3]),
                                      "hist": (cur[5] + cur[6])[-HISTORY:]})
    return RowwiseMotion(distance, speed, heading, changes, states)
