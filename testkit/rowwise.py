"""Frozen reference: the row-wise ``Pipeline.process`` of commit 61bb68b (before the batch core), for the tests only.

The batch core in :mod:`agents.core.pipeline` must give the same documents, ids, dead letters, alerts, states and
latest positions; ``tests/unit/test_batch_core.py`` holds the two equal. Copied as it was; do not "improve" it.
It imports none of the production code it is compared with: the decoder, the document builder, the index and
id rules, the alert transitions and the event-time bounds are frozen copies below (only the field names, the
contract, come from :mod:`geoiot.documents`). One deliberate change since: issue 23's track state (the
:class:`agents.core.motion.State` record, no history) and its late-report rule (no motion for a report not
newer than the state) replaced the history lookup in ``advance_batch``; and its late-report write rule: a late
report's observation is a ``create`` action (never overwriting a stored one) and never a latest position.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone, tzinfo
from functools import lru_cache
from typing import Any, NamedTuple

import geohash
import numpy as np
import orjson

from agents.core.geofence import Geofences
from agents.core.pipeline import Incoming
from agents.core.motion import EARTH_RADIUS_M, State
from geoiot.documents import DISTANCE, GEOFENCES, GEOHASH, GEOMETRY, HEADING, INGESTED_AT, SPEED
from geoiot.schema import InvalidRecord, Preset, typed_record

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
    if not keeps_latest(time_ms):
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
    bounds: Any = None  # max_age_days, max_ahead_days, retention_days (the production EventTimeBounds' fields)

    def process(self, messages: Sequence[Incoming], get_state: Callable[[str], State | None]) -> RowwiseResult:
        """The batch's effects; an event that cannot be processed is a dead letter, never the batch's end."""
        out = RowwiseResult()
        now = int(time.time() * 1000)
        bounds = (EventTimeBounds() if self.bounds is None else
                  EventTimeBounds(self.bounds.max_age_days, self.bounds.max_ahead_days, self.bounds.retention_days))
        valid: list[tuple[Incoming, Observation]] = []
        for msg in messages:
            try:
                obs = decode(self.preset, msg.value, self.tz)
                problem = bounds.problem(obs.time_ms, now)
                if problem is not None:
                    raise InvalidRecord(problem)
                index_for(self.index, obs.time_ms)
                doc_id(obs.track, obs.time_ms)
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
        out.latest = [latest_action(self.index, track, time_ms, doc)
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
            doc = build(obs.record, obs.lon, obs.lat, fences, distance[i], speed[i], heading[i], now)
            action = document_action(self.index, obs.track, obs.time_ms, doc)
            actions.append(action)
            sources[(action["_index"], action["_id"])] = msg
            if i in motion.late:  # issue 23: create-only, never a latest position
                action["_op_type"] = "create"
                continue
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


# --- agents/core/motion.advance_batch of 61bb68b, with issue 23's state (no history) and late-report rule ---

@dataclass(slots=True)
class RowwiseMotion:
    """Motion of every report of a batch, its fence transitions, and the tracks' new states."""

    distance_m: list[float | None]
    speed_mps: list[float | None]
    heading_deg: list[float | None]
    transitions: dict[int, tuple[tuple[str, ...], tuple[str, ...]]]  # report index -> (entered, exited)
    states: dict[str, tuple[int, State]]  # track -> (index of the last report that moved it, new state)
    late: set[int] = field(default_factory=set)  # indices of the late reports (issue 23)


def advance_batch(tracks: Sequence[str], times: Sequence[int], lons: Sequence[float], lats: Sequence[float],
                  fences: Sequence[tuple[str, ...]], get_state: Callable[[str], State | None]) -> RowwiseMotion:
    """:func:`advance` applied to the reports of a batch in order, with the trigonometry vectorised.

    Same results as calling ``advance`` report by report (a property test holds them equal): one
    Python pass finds each report's previous point and the fence transitions, then numpy computes
    every distance, speed and heading at once, and each moved track's state is built once. A report
    not newer than its track's state (late) has no motion and no transitions (issue 23).
    """
    n = len(tracks)
    t0 = np.zeros(n, dtype=np.int64)
    lon0 = np.zeros(n, dtype=np.float64)
    lat0 = np.zeros(n, dtype=np.float64)
    has_prev = np.zeros(n, dtype=bool)
    changes: dict[int, tuple[tuple[str, ...], tuple[str, ...]]] = {}
    # track -> [t, lon, lat, fences, moved, last moving index]
    cursors: dict[str, list[Any]] = {}
    late: set[int] = set()
    for i in range(n):
        track, t, lon, lat, here = tracks[i], times[i], lons[i], lats[i], fences[i]
        cur = cursors.get(track)
        if cur is None:
            state = get_state(track)
            if state is None:
                cursors[track] = [t, lon, lat, here, True, i]
                continue
            cur = cursors[track] = [state[0], state[1], state[2], tuple(state[3]), False, -1]
        if t > cur[0]:
            t0[i], lon0[i], lat0[i] = cur[0], cur[1], cur[2]
            has_prev[i] = True
            if here != cur[3]:
                before, after = set(cur[3]), set(here)
                if before != after:
                    changes[i] = (tuple(sorted(after - before)), tuple(sorted(before - after)))
            cur[0], cur[1], cur[2], cur[3] = t, lon, lat, here
            cur[4] = True
            cur[5] = i
        else:
            late.add(i)

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
        if cur[4]:
            states[track] = (cur[5], State(cur[0], cur[1], cur[2], tuple(cur[3])))
    return RowwiseMotion(distance, speed, heading, changes, states, late)


# --- agents/validate.decode, geoiot/documents, agents/alerts.transitions, geoiot/timeparse.EventTimeBounds of 1c8e148 ---

class Observation(NamedTuple):
    record: dict[str, Any]
    track: str
    time_ms: int
    lon: float
    lat: float
    nulled: tuple[str, ...] = ()


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _loads_unusual(raw: bytes | bytearray | str, error: Exception) -> Any:
    try:
        return json.loads(raw, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        raise InvalidRecord(f"not JSON: {error}") from None


def _null_unusable(preset: Preset, obj: dict[str, Any]) -> list[str]:
    core = {preset.track, preset.time, preset.lon, preset.lat}
    nulled: list[str] = []
    for name, _ in preset.fields:
        value = obj.get(name)
        if isinstance(value, str):
            try:
                value.encode("utf-8")
                continue
            except UnicodeEncodeError:
                if name == preset.track:
                    raise InvalidRecord(f"{name} is not valid Unicode (a lone surrogate)") from None
        elif not (isinstance(value, float) and not math.isfinite(value)):
            continue
        if name not in core:
            obj[name] = None
            nulled.append(name)
    return nulled


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "JSON array"
    if isinstance(value, str):
        return "JSON string"
    if isinstance(value, bool):
        return "JSON boolean"
    if value is None:
        return "JSON null"
    return "JSON number"


def decode(preset: Preset, raw: bytes | bytearray | memoryview | str | None, tz: tzinfo = timezone.utc) -> Observation:
    if raw is None or len(raw) == 0:
        raise InvalidRecord("empty value")
    if isinstance(raw, memoryview):
        raw = raw.tobytes()
    unusable: list[str] = []
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        obj = _loads_unusual(raw, exc)
        if isinstance(obj, dict):
            unusable = _null_unusable(preset, obj)
    if not isinstance(obj, dict):
        raise InvalidRecord(f"not a JSON object but a {_json_kind(obj)}")
    record, nulled = typed_record(preset, obj, tz)
    return Observation(record, record[preset.track], record[preset.time], record[preset.lon], record[preset.lat],
                       tuple(unusable + nulled))


DAY_MS = 86_400_000
MAX_ID_BYTES = 512
GEOHASH_PRECISION = 12
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_ONE_MS = timedelta(milliseconds=1)


def keeps_latest(time_ms: int) -> bool:
    return time_ms >= 0


@lru_cache(maxsize=4096)
def _daily(base: str, day: int) -> str:
    date = datetime.fromtimestamp(day * 86_400, tz=timezone.utc)
    return f"{base}-{date:%Y.%m.%d}"


def index_for(base: str, time_ms: int) -> str:
    try:
        return _daily(base, time_ms // DAY_MS)
    except (ValueError, OverflowError, OSError):
        raise InvalidRecord(f"event time {time_ms} ms has no daily index (outside the years 1-9999)") from None


def doc_id(track: str, time_ms: int) -> str:
    value = f"{track}:{time_ms}"
    if len(value) > MAX_ID_BYTES // 4 and len(value.encode("utf-8")) > MAX_ID_BYTES:
        raise InvalidRecord(f"document id of {len(value.encode('utf-8'))} bytes exceeds Elasticsearch's "
                            f"{MAX_ID_BYTES} (the track id is too long)")
    return value


def latest_action(base: str, track: str, time_ms: int, doc: dict[str, Any]) -> dict[str, Any]:
    return {"_op_type": "index", "_index": f"{base}_latest", "_id": track, "version": time_ms,
            "version_type": "external", "_source": doc}


def build(record: dict[str, Any], lon: float, lat: float, fences: Sequence[str], distance_m: float | None,
          speed_mps: float | None, heading_deg: float | None, ingested_at: int | None = None) -> dict[str, Any]:
    doc = dict(record)
    doc[GEOMETRY] = {"lat": lat, "lon": lon}
    doc[GEOFENCES] = list(fences)
    doc[SPEED] = speed_mps
    doc[HEADING] = heading_deg
    doc[DISTANCE] = distance_m
    doc[GEOHASH] = geohash.encode(lat, lon, precision=GEOHASH_PRECISION)
    doc[INGESTED_AT] = int(time.time() * 1000) if ingested_at is None else ingested_at
    return doc


def document_action(base: str, track: str, time_ms: int, doc: dict[str, Any]) -> dict[str, Any]:
    return {"_op_type": "index", "_index": index_for(base, time_ms), "_id": doc_id(track, time_ms), "_source": doc}


def transitions(track: str, entered: tuple[str, ...], exited: tuple[str, ...], time_ms: int,
                lon: float, lat: float) -> list[dict[str, Any]]:
    return ([{"track": track, "fence": f, "event": "exit", "time": time_ms, "lon": lon, "lat": lat} for f in exited]
            + [{"track": track, "fence": f, "event": "enter", "time": time_ms, "lon": lon, "lat": lat} for f in entered])


def retention_cutoff(retention_days: int, now_ms: int) -> int:
    return (now_ms - retention_days * DAY_MS) // DAY_MS * DAY_MS


def format_ms(ms: int) -> str:
    try:
        return (_EPOCH + ms * _ONE_MS).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    except OverflowError:
        return f"{ms} ms"


@dataclass(frozen=True)
class EventTimeBounds:
    max_age_days: float = 36525.0
    max_ahead_days: float = 1.0
    retention_days: int = 0

    def problem(self, time_ms: int, now: int) -> str | None:
        if self.retention_days > 0 and time_ms < retention_cutoff(self.retention_days, now):
            return (f"event time {format_ms(time_ms)} is in a day IOT_RETENTION_DAYS={self.retention_days} deletes "
                    f"(before {format_ms(retention_cutoff(self.retention_days, now))})")
        if time_ms < now - self.max_age_days * DAY_MS:
            return (f"event time {format_ms(time_ms)} is more than {self.max_age_days:g} days old "
                    "(IOT_MAX_EVENT_AGE_DAYS)")
        if time_ms > now + self.max_ahead_days * DAY_MS:
            return (f"event time {format_ms(time_ms)} is more than {self.max_ahead_days:g} days ahead "
                    "(IOT_MAX_EVENT_AHEAD_DAYS)")
        return None
