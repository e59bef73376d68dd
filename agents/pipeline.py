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
from agents.tracks import State, advance_batch
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
        observations = [o for _, o in valid]
        motion = advance_batch([o.track for o in observations], [o.time_ms for o in observations],
                               [o.lon for o in observations], [o.lat for o in observations], inside, get_state)
        for track, (i, state) in motion.states.items():
            out.states[track] = (valid[i][0].partition, state)
        now = int(time.time() * 1000)
        changes = motion.transitions
        distance, speed, heading = motion.distance_m, motion.speed_mps, motion.heading_deg
        for i, ((msg, obs), fences) in enumerate(zip(valid, inside)):
            change = changes.get(i)
            if change is not None:
                out.alerts.extend(transitions(obs.track, change[0], change[1], obs.time_ms, obs.lon, obs.lat))
            if self.filter_inside and not fences:
                out.filtered += 1
                continue
            doc = documents.build_values(obs.record, obs.lon, obs.lat, fences, distance[i], speed[i], heading[i], now)
            action = documents.action(self.index, obs.track, obs.time_ms, doc)
            out.actions.append(action)
            out.sources[(action["_index"], action["_id"])] = msg
        return out
