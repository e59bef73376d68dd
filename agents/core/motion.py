"""Per-track motion state: distance, speed and heading from the previous report; fence transitions.

A track's state is a small fixed record (:class:`State`): the time and position of its newest report and the
set of fences it was in (a shared tuple, :func:`fence_set`). Nothing else: no history of points. The worker
keeps it per track in :class:`agents.worker.track_table.TrackTable` (backed by a compacted changelog, encoded
by :mod:`agents.core.state_codec`), the Spark job in its state store.

The rule is a fold over each track's reports in offset order, report by report:

* the first report of a track (no state) starts it: no motion, no fence transitions;
* a report *newer* than the state (event time strictly greater) moves the track: its distance, speed and
  heading are measured from the state's point, its fence set is compared with the state's (entered, exited),
  and it becomes the state;
* a *late* report (event time at or before the state's: older, or a duplicate of the newest time) is still
  stored as an observation with its own fences, but it does not move the track: null distance, speed and
  heading, no fence transitions, the state unchanged. Its document is written create-only
  (:data:`agents.core.bulk.LATE_OP`): a report re-sent after its track moved on (a file replayed again, a
  device re-sending, a dead letter redriven) finds its observation already stored, with the motion it had, and
  leaves it as it is; a late report never seen before is stored with null motion. Nor is a late report ever a
  track's latest position or live record: the state's report, as new or newer, already is.

Because each report's result depends only on the state the previous reports of its track left, cutting the
same offsets into batches at any points gives the same motion, alerts and states (a property test holds it).
A batch redelivered after a crash computes the same motion as the first time only if it meets the state as of
its start: the worker commits states and offsets in one Kafka transaction for that. A state that had already
been saved (states ahead of offsets) would make the redelivered reports late, with null motion: the history
of points that used to cover that case is gone with the rule.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

EARTH_RADIUS_M = 6_371_008.8  # mean Earth radius (IUGG)
NO_FENCES: tuple[str, ...] = ()
FENCE_SETS_KEPT = 1 << 16  # distinct fence sets shared before the table starts afresh


class State(NamedTuple):
    """A track's state: its newest report's event time (epoch ms) and point, and the sorted ids of the
    fences that point was in (a shared tuple, :func:`fence_set`)."""

    t: int
    lon: float
    lat: float
    fences: tuple[str, ...]


# What ``get_state`` may give: a State, or any tuple whose first four items are a State's (the track table's
# rows carry two more fields after them).
StateLike = Sequence[Any]

_fence_sets: dict[tuple[str, ...], tuple[str, ...]] = {NO_FENCES: NO_FENCES}


def fence_set(ids: Iterable[str]) -> tuple[str, ...]:
    """The shared tuple of these sorted fence ids: a million tracks in a few fences hold a few tuples, not a
    million. The table is bounded; when full it starts afresh (sharing is lost for a while, nothing else)."""
    key = ids if type(ids) is tuple else tuple(ids)
    shared = _fence_sets.get(key)
    if shared is None:
        if len(_fence_sets) >= FENCE_SETS_KEPT:
            _fence_sets.clear()
            _fence_sets[NO_FENCES] = NO_FENCES
        shared = _fence_sets[key] = key
    return shared


def haversine_m(lon1: float, lat1: float, lon2: float, lat2: float) -> float:
    """Great-circle distance in metres."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(a)))


def bearing_deg(lon1: float, lat1: float, lon2: float, lat2: float) -> float:
    """Initial bearing from point 1 to point 2, degrees clockwise from north in [0, 360)."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dl = math.radians(lon2 - lon1)
    x = math.sin(dl) * math.cos(p2)
    y = math.cos(p1) * math.sin(p2) - math.sin(p1) * math.cos(p2) * math.cos(dl)
    return math.degrees(math.atan2(x, y)) % 360.0


@dataclass(frozen=True, slots=True)
class Motion:
    distance_m: float | None
    speed_mps: float | None
    heading_deg: float | None
    moved: bool  # the report advanced the track (newer than its state)
    entered: tuple[str, ...] = ()
    exited: tuple[str, ...] = ()


def motion_between(t0: int, lon0: float, lat0: float, t1: int, lon1: float, lat1: float) -> tuple[float, float | None, float | None]:
    """(distance, speed, heading) from an earlier point to a later one; heading is None when not moving."""
    distance = haversine_m(lon0, lat0, lon1, lat1)
    dt = (t1 - t0) / 1000.0
    speed = distance / dt if dt > 0 else None
    heading = bearing_deg(lon0, lat0, lon1, lat1) if distance > 0 else None
    return distance, speed, heading


@dataclass(slots=True)
class BatchMotion:
    """Motion of every report of a batch, its fence transitions, and the tracks' new states."""

    distance_m: list[float | None]
    speed_mps: list[float | None]
    heading_deg: list[float | None]
    transitions: dict[int, tuple[tuple[str, ...], tuple[str, ...]]]  # report index -> (entered, exited)
    states: dict[str, tuple[int, State]]  # track -> (index of the last report that moved it, new state)
    late: list[int]  # indices of the late reports (a state at or after their time), ascending


def advance_batch(tracks: Sequence[str], times: Sequence[int], lons: Sequence[float], lats: Sequence[float],
                  fences: Sequence[tuple[str, ...]], get_state: Callable[[str], StateLike | None]) -> BatchMotion:
    """The motion of every report of a batch, in order, and each moved track's new state (the module's rule).

    One Python pass finds each moving report's previous point and its transitions, numpy computes the
    trigonometry of all of them at once."""
    n = len(tracks)
    # Reports that moved a track: their index and the point they moved from (Python lists: numpy item stores cost more).
    idx_l: list[int] = []
    t0_l: list[int] = []
    lon0_l: list[float] = []
    lat0_l: list[float] = []
    changes: dict[int, tuple[tuple[str, ...], tuple[str, ...]]] = {}
    cursors: dict[str, list[Any]] = {}  # track -> [t, lon, lat, fences, index of the last report that moved it]
    late: list[int] = []
    for i in range(n):
        track, t, lon, lat, here = tracks[i], times[i], lons[i], lats[i], fences[i]
        cur = cursors.get(track)
        if cur is None:
            state = get_state(track)
            if state is None:
                cursors[track] = [t, lon, lat, here, i]
                continue
            cur = cursors[track] = [state[0], state[1], state[2], state[3], -1]
        if t > cur[0]:
            idx_l.append(i)
            t0_l.append(cur[0])
            lon0_l.append(cur[1])
            lat0_l.append(cur[2])
            if here != cur[3]:
                before, after = set(cur[3]), set(here)
                if before != after:
                    changes[i] = (tuple(sorted(after - before)), tuple(sorted(before - after)))
            cur[0], cur[1], cur[2], cur[3], cur[4] = t, lon, lat, here, i
        else:  # a late report, stored without motion; the state stays
            late.append(i)

    distance: list[float | None] = [None] * n
    speed: list[float | None] = [None] * n
    heading: list[float | None] = [None] * n
    if idx_l:
        idx = np.asarray(idx_l, dtype=np.intp)
        t0 = np.asarray(t0_l, dtype=np.int64)
        lon0 = np.asarray(lon0_l, dtype=np.float64)
        lat0 = np.asarray(lat0_l, dtype=np.float64)
        lon1 = np.asarray(lons, dtype=np.float64)[idx]
        lat1 = np.asarray(lats, dtype=np.float64)[idx]
        t1 = np.asarray(times, dtype=np.int64)[idx]
        p1, p2 = np.radians(lat0), np.radians(lat1)
        dp, dl = p2 - p1, np.radians(lon1 - lon0)
        a = np.sin(dp / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
        dist = 2 * EARTH_RADIUS_M * np.arcsin(np.minimum(1.0, np.sqrt(a)))
        dt = (t1 - t0) / 1000.0
        spd = dist / dt  # dt > 0: only newer reports move a track
        x = np.sin(dl) * np.cos(p2)
        y = np.cos(p1) * np.sin(p2) - np.sin(p1) * np.cos(p2) * np.cos(dl)
        head = np.degrees(np.arctan2(x, y)) % 360.0
        for k, d, s, h in zip(idx_l, dist.tolist(), spd.tolist(), head.tolist()):
            distance[k] = d
            speed[k] = s
            heading[k] = h if d > 0 else None

    states: dict[str, tuple[int, State]] = {}
    for track, cur in cursors.items():
        if cur[4] >= 0:
            states[track] = (cur[4], State(cur[0], cur[1], cur[2], fence_set(cur[3])))
    return BatchMotion(distance, speed, heading, changes, states, late)
