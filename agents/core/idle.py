"""When a track's state ends: the idle timeout (IOT_TRACK_IDLE_TIMEOUT), one rule for the worker and Spark.

A track's state is *expired* when it was last updated more than ``timeout_s`` seconds of processing
(wall-clock) time ago: the next report of that track is then its first (no motion, no transitions,
so a track that left a fence while silent gives no exit alert), and the state may be dropped.

Processing time, not event time, because what the timeout bounds is memory held for tracks that
stopped reporting, and because the check sits at the ``get_state(track)`` boundary of
:meth:`agents.core.pipeline.Pipeline.process`, where the report's event time is not known. The "last
updated" time is the worker's put time (after a restart: the changelog record's timestamp) and, on
Spark, the batch timestamp of the micro-batch that updated it (``GroupState.getCurrentProcessingTimeMs``),
which Spark's ``ProcessingTimeTimeout`` also uses; both are checked here against the time of the
batch that reads the state. The boundary is exclusive: exactly ``timeout_s`` after the update the
state is still alive, one millisecond later it is expired (Spark times a group out when its timeout
timestamp is strictly below the batch timestamp).
"""

from __future__ import annotations


def timeout_ms(timeout_s: float) -> int:
    """The timeout in whole milliseconds (0: never)."""
    return max(0, int(round(timeout_s * 1000)))


def expired(updated_ms: int | None, now_ms: int, timeout_s: float) -> bool:
    """Whether a state last updated at ``updated_ms`` has ended by ``now_ms`` (never when the timeout is 0)."""
    limit = timeout_ms(timeout_s)
    return limit > 0 and updated_ms is not None and now_ms - updated_ms > limit


def ends_at(updated_ms: int, timeout_s: float) -> int | None:
    """The last millisecond at which the state is still alive (None: never ends)."""
    limit = timeout_ms(timeout_s)
    return None if limit == 0 else updated_ms + limit
