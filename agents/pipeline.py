"""One batch of raw messages -> bulk actions, alerts, dead letters and new track states.

Faust-free (the agent in :mod:`agents.app` does the I/O), so the whole per-event logic is unit
tested without Kafka. Geofences are computed for the whole batch at once; track state is advanced
in arrival order, which per track is offset order because messages are keyed by track id.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timezone, tzinfo
from typing import Any

import numpy as np

from agents import documents
from agents.alerts import transitions
from agents.geofence import Geofences
from agents.tracks import State, advance
from agents.validate import Observation, decode
from geoiot.schema import InvalidRecord, Preset


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


@dataclass
class Pipeline:
    preset: Preset
    fences: Geofences
    index: str
    tz: tzinfo = timezone.utc
    filter_inside: bool = False

    def process(self, messages: Sequence[Incoming], get_state: Callable[[str], State | None]) -> BatchResult:
        out = BatchResult()
        valid: list[tuple[Incoming, Observation]] = []
        for msg in messages:
            try:
                obs = decode(self.preset, msg.value, self.tz)
            except InvalidRecord as exc:
                out.dead.append((msg, exc.reason))
                continue
            valid.append((msg, obs))
            out.nulled += len(obs.nulled)
        out.valid = len(valid)
        if not valid:
            return out
        lon = np.fromiter((o.lon for _, o in valid), dtype=np.float64, count=len(valid))
        lat = np.fromiter((o.lat for _, o in valid), dtype=np.float64, count=len(valid))
        inside = self.fences.containing(lon, lat)
        now = int(time.time() * 1000)
        states: dict[str, State | None] = {}
        for (msg, obs), fences in zip(valid, inside):
            track = obs.track
            state = states[track] if track in states else get_state(track)
            new, motion = advance(state, obs.time_ms, obs.lon, obs.lat, fences)
            states[track] = new
            if new is not state:
                out.states[track] = (msg.partition, new)  # type: ignore[assignment]
            if motion.entered or motion.exited:
                out.alerts.extend(transitions(track, motion.entered, motion.exited, obs.time_ms, obs.lon, obs.lat))
            if self.filter_inside and not fences:
                out.filtered += 1
                continue
            doc = documents.build(obs.record, obs.lon, obs.lat, fences, motion, now)
            action = documents.action(self.index, track, obs.time_ms, doc)
            out.actions.append(action)
            out.sources[(action["_index"], action["_id"])] = msg
        return out
