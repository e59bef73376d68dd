"""Geofence enter/exit alerts of one report, in a stable order (exits first, ids sorted)."""

from __future__ import annotations

from typing import Any


def transitions(track: str, entered: tuple[str, ...], exited: tuple[str, ...], time_ms: int,
                lon: float, lat: float) -> list[dict[str, Any]]:
    """The alerts of one report: exits first (leaving one fence for another reads naturally), ids sorted."""
    return ([{"track": track, "fence": f, "event": "exit", "time": time_ms, "lon": lon, "lat": lat} for f in exited]
            + [{"track": track, "fence": f, "event": "enter", "time": time_ms, "lon": lon, "lat": lat} for f in entered])
