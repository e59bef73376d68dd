"""Counters of a replay run and the summary printed at its end (human text and one JSON line)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from geoiot.timeparse import BOUNDS_REASON_PREFIX
from replay.reader import Rejected

MAX_REPORTED_REJECTS = 5


@dataclass
class Stats:
    mode: str
    topic: str
    requested_rate: float | None = None  # events/s; None = as fast as possible
    queued: int = 0
    skipped: int = 0
    skip_reasons: dict[str, int] = field(default_factory=dict)
    first_rejects: list[Rejected] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None
    paced_seconds: float | None = None  # constant mode: schedule time covered by the batches sent
    interrupted: bool = False
    behind_warnings: int = 0
    last_line: int = 0  # file line of the last row taken (sent, skipped or failed); of the last pass with --loop
    error: str | None = None  # why the run ended early on the input side (a damaged file)

    core: tuple[str, str, str, str] = ("track", "time", "lon", "lat")  # the preset's core field names

    def reject(self, rejected: Rejected) -> bool:
        """Count a bad row; True when it is one of the first few that get reported."""
        self.skipped += 1
        kind = rejected.kind or reason_kind(rejected.reason, self.core)
        self.skip_reasons[kind] = self.skip_reasons.get(kind, 0) + 1
        if len(self.first_rejects) < MAX_REPORTED_REJECTS:
            self.first_rejects.append(rejected)
            return True
        return False

    def elapsed(self) -> float:
        return (self.finished or time.monotonic()) - self.started


def reason_kind(reason: str, core: tuple[str, str, str, str]) -> str:
    """Category of a rejection reason for per-kind counts: columns, json, track, time, longitude, latitude,
    bounds (an event time outside :class:`geoiot.timeparse.EventTimeBounds`); rows rejected for other causes
    name their kind in ``Rejected.kind``: size, incomplete."""
    if reason.startswith(BOUNDS_REASON_PREFIX) and "IOT_" in reason:
        return "bounds"
    if "columns" in reason:
        return "columns"
    if "JSON" in reason:
        return "json"
    first = reason.split(" ", 1)[0].rstrip(":")
    for name, kind in zip(core, ("track", "time", "longitude", "latitude")):
        if first == name:
            return kind
    return "other"


def build_summary(stats: Stats, acked: dict[int, int], failed: int) -> dict[str, Any]:
    """The JSON summary: ``sent`` counts only messages Kafka acknowledged."""
    seconds = stats.elapsed()
    sent = sum(acked.values())
    summary: dict[str, Any] = {
        "mode": stats.mode,
        "topic": stats.topic,
        "sent": sent,
        "skipped": stats.skipped,
        "failed": failed,
        "seconds": round(seconds, 3),
        "events_per_s": round(sent / seconds, 1) if seconds > 0 else 0.0,
        "partitions": {str(p): acked[p] for p in sorted(acked)},
        "skip_reasons": dict(sorted(stats.skip_reasons.items())),
        "rejects": [{"line": r.line_no, "reason": r.reason} for r in stats.first_rejects],
        "interrupted": stats.interrupted,
        "last_line": stats.last_line,
    }
    if stats.mode == "constant":
        summary["requested_rate"] = stats.requested_rate  # None = max rate
        span = stats.paced_seconds if stats.requested_rate and stats.paced_seconds else seconds
        summary["achieved_rate"] = round(stats.queued / span, 1) if span > 0 else 0.0
    return summary


def human(summary: dict[str, Any]) -> str:
    parts = ", ".join(f"p{p}={n}" for p, n in summary["partitions"].items()) or "none"
    text = (f"{summary['mode']} replay to {summary['topic']}: sent {summary['sent']}, skipped {summary['skipped']}, "
            f"failed {summary['failed']} in {summary['seconds']:.2f}s ({summary['events_per_s']:.0f} events/s); "
            f"partitions {parts}")
    if summary.get("requested_rate"):
        text += f"; requested {summary['requested_rate']:g}/s, achieved {summary['achieved_rate']:g}/s"
    if summary["interrupted"]:
        text += " (interrupted)"
    return text


def to_json(summary: dict[str, Any]) -> str:
    return orjson.dumps(summary).decode()
