"""Motion of one report at a time: the row-by-row reference the batch path (agents.core.motion.advance_batch)
is held equal to, and a quick way for tests and benchmarks to build track states."""

from __future__ import annotations

from bisect import bisect_left

from agents.core.motion import HISTORY, Motion, State, motion_between


def advance(state: State | None, time_ms: int, lon: float, lat: float, fences: tuple[str, ...]) -> tuple[State | None, Motion]:
    """The new state (the same object when unchanged) and the motion of this report.

    The first report of a track has no motion and no transitions: transitions are changes of the
    fence set between consecutive reports.
    """
    if state is None:
        new = {"t": time_ms, "lon": lon, "lat": lat, "fences": list(fences), "hist": [[time_ms, lon, lat]]}
        return new, Motion(None, None, None, True)
    if time_ms > state["t"]:
        distance, speed, heading = motion_between(state["t"], state["lon"], state["lat"], time_ms, lon, lat)
        before = set(state["fences"])
        after = set(fences)
        hist = state.get("hist") or [[state["t"], state["lon"], state["lat"]]]
        hist = (hist + [[time_ms, lon, lat]])[-HISTORY:]
        new = {"t": time_ms, "lon": lon, "lat": lat, "fences": list(fences), "hist": hist}
        return new, Motion(distance, speed, heading, True, tuple(sorted(after - before)), tuple(sorted(before - after)))
    # Older or duplicate: the state stays; motion against the latest kept point strictly before it.
    hist = state.get("hist") or []
    i = bisect_left([h[0] for h in hist], time_ms)
    if i == 0:
        return state, Motion(None, None, None, False)
    t0, lon0, lat0 = hist[i - 1]
    distance, speed, heading = motion_between(t0, lon0, lat0, time_ms, lon, lat)
    return state, Motion(distance, speed, heading, False)
