"""Motion of one report at a time: the row-by-row reference the batch path (agents.core.motion.advance_batch)
is held equal to, and a quick way for tests and benchmarks to build track states."""

from __future__ import annotations

from agents.core.motion import Motion, State, StateLike, fence_set, motion_between


def advance(state: StateLike | None, time_ms: int, lon: float, lat: float,
            fences: tuple[str, ...]) -> tuple[StateLike | None, Motion]:
    """The new state (the same object when unchanged) and the motion of this report (agents.core.motion's rule).

    The first report of a track has no motion and no transitions: transitions are changes of the
    fence set between consecutive reports. A late report (not newer than the state) has neither either.
    """
    if state is None:
        return State(time_ms, lon, lat, fence_set(fences)), Motion(None, None, None, True)
    if time_ms > state[0]:
        distance, speed, heading = motion_between(state[0], state[1], state[2], time_ms, lon, lat)
        before, after = set(state[3]), set(fences)
        new = State(time_ms, lon, lat, fence_set(fences))
        return new, Motion(distance, speed, heading, True, tuple(sorted(after - before)), tuple(sorted(before - after)))
    return state, Motion(None, None, None, False)
