"""Per-track motion state: distance, speed and heading from the previous report; fence transitions.

The state is a small JSON-able dict (kept per source partition by :mod:`agents.worker.track_table`, backed by a changelog topic)::

    {"t": time_ms, "lon": .., "lat": .., "fences": [ids], "hist": [[t, lon, lat], ...]}

Rule: only a report newer than the state's time moves the track. An older or duplicate report never
moves it backwards; its motion is computed against the latest earlier point kept in ``hist`` (the
last :data:`HISTORY` accepted points), so a report redelivered after a crash (when the state had
already been saved) gets the same speed/heading/distance as the first time, not nulls.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

EARTH_RADIUS_M = 6_371_008.8  # mean Earth radius (IUGG)
HISTORY = 32

State = dict[str, Any]


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


def advance_batch(tracks: Sequence[str], times: Sequence[int], lons: Sequence[float], lats: Sequence[float],
                  fences: Sequence[tuple[str, ...]], get_state: Callable[[str], State | None]) -> BatchMotion:
    """The motion of every report of a batch, in order, and each moved track's new state.

    The first report of a track has no motion and no transitions (they are changes of the fence set between
    consecutive reports); an older or duplicate report keeps the state and gets its motion against the
    latest kept point before it. One Python pass finds the previous points, numpy computes the trigonometry.
    """
    n = len(tracks)
    # Reports with a previous point: their index and that point (Python lists: numpy item stores cost more).
    idx_l: list[int] = []
    t0_l: list[int] = []
    lon0_l: list[float] = []
    lat0_l: list[float] = []
    changes: dict[int, tuple[tuple[str, ...], tuple[str, ...]]] = {}
    # track -> [t, lon, lat, fences, saved state, hist to extend, indices of the reports appended, last moving
    # index]; points are built only for the kept history (fewer objects for the cyclic GC to scan)
    cursors: dict[str, list[Any]] = {}
    for i in range(n):
        track, t, lon, lat, here = tracks[i], times[i], lons[i], lats[i], fences[i]
        cur = cursors.get(track)
        if cur is None:
            state = get_state(track)
            if state is None:
                cursors[track] = [t, lon, lat, here, None, [], [i], i]
                continue
            cur = cursors[track] = [state["t"], state["lon"], state["lat"], tuple(state["fences"]), state,
                                    state.get("hist") or [[state["t"], state["lon"], state["lat"]]], [], -1]
        if t > cur[0]:
            idx_l.append(i)
            t0_l.append(cur[0])
            lon0_l.append(cur[1])
            lat0_l.append(cur[2])
            if here != cur[3]:
                before, after = set(cur[3]), set(here)
                if before != after:
                    changes[i] = (tuple(sorted(after - before)), tuple(sorted(before - after)))
            cur[0], cur[1], cur[2], cur[3] = t, lon, lat, here
            cur[6].append(i)
            cur[7] = i
            continue
        # Older or duplicate: motion against the latest kept point strictly before it.
        hist = _history(cur, times, lons, lats) if cur[6] else ((cur[4] or {}).get("hist") or [])
        j = bisect_left([h[0] for h in hist], t)
        if j > 0:
            h = hist[j - 1]
            idx_l.append(i)
            t0_l.append(h[0])
            lon0_l.append(h[1])
            lat0_l.append(h[2])

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
        with np.errstate(divide="ignore", invalid="ignore"):
            spd = np.where(dt > 0, dist / np.where(dt > 0, dt, 1.0), np.nan)
        x = np.sin(dl) * np.cos(p2)
        y = np.cos(p1) * np.sin(p2) - np.sin(p1) * np.cos(p2) * np.cos(dl)
        head = np.degrees(np.arctan2(x, y)) % 360.0
        for k, d, s, h in zip(idx_l, dist.tolist(), spd.tolist(), head.tolist()):
            distance[k] = d
            speed[k] = None if s != s else s  # NaN: no time elapsed
            heading[k] = h if d > 0 else None

    states: dict[str, tuple[int, State]] = {}
    for track, cur in cursors.items():
        if cur[6]:
            states[track] = (cur[7], {"t": cur[0], "lon": cur[1], "lat": cur[2], "fences": list(cur[3]),
                                      "hist": _history(cur, times, lons, lats)})
    return BatchMotion(distance, speed, heading, changes, states)


def _history(cur: list[Any], times: Sequence[int], lons: Sequence[float], lats: Sequence[float]) -> list[list[Any]]:
    """The last HISTORY points: the saved history extended by the reports appended in this batch."""
    added = [[times[k], lons[k], lats[k]] for k in cur[6][-HISTORY:]]
    return (cur[5] + added)[-HISTORY:] if len(added) < HISTORY else added
