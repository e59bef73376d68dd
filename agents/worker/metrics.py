"""Prometheus metrics of the agents (served at /metrics on the worker's web port)."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

EVENTS = Counter("geoiot_agent_events_total", "Messages consumed from the source topic")
INDEXED = Counter("geoiot_agent_indexed_total", "Documents acknowledged by a sink", ["sink"])
INVALID = Counter("geoiot_agent_invalid_total", "Messages that failed validation")
DEAD_LETTERED = Counter("geoiot_agent_dead_lettered_total", "Messages written to the dead-letter topic")
NULLED = Counter("geoiot_agent_nulled_attributes_total", "Attributes stored as null because they could not be coerced")
KEY_MISMATCH = Counter("geoiot_agent_key_mismatch_total",
                       "Events whose Kafka key differs from their track id (stored under the value's track id)")
FILTERED = Counter("geoiot_agent_filtered_total", "Valid events dropped by the geofence filter")
ALERTS = Counter("geoiot_agent_alerts_total", "Geofence alerts emitted", ["event"])
WEBHOOK = Counter("geoiot_agent_webhook_total", "Webhook deliveries by outcome", ["outcome"])
WEBHOOK_CIRCUIT = Gauge("geoiot_agent_webhook_circuit_open", "1 while the webhook's circuit breaker holds requests back")
LATEST_STALE = Counter("geoiot_agent_latest_stale_total",
                       "Latest-position writes Elasticsearch refused as not newer (version conflict)")
ALREADY_STORED = Counter("geoiot_agent_already_stored_total",
                         "Late reports whose observation Elasticsearch already held (create-only: the stored one stays)")
LATEST_REFUSED = Counter("geoiot_agent_latest_refused_total",
                         "Latest-position writes a sink refused for good (the observation's own outcome stands)")
SINK_RETRIES = Counter("geoiot_agent_sink_retries_total", "Sink attempts that failed and were retried", ["sink"])
BULK_SECONDS = Histogram("geoiot_agent_bulk_duration_seconds", "Duration of one sink write", ["sink"],
                         buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
BATCH_SIZE = Histogram("geoiot_agent_batch_size", "Messages per processed batch",
                       buckets=(1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000))
LAG = Gauge("geoiot_agent_consumer_lag", "Messages behind the end of a source partition", ["topic", "partition"])
TRACKS = Gauge("geoiot_agent_tracks", "Tracks in this worker's state table")
FENCES = Gauge("geoiot_agent_fences", "Geofences in force (agents.worker.fence_follower)")
FENCE_BUILD = Histogram("geoiot_agent_fence_build_seconds", "Time to build the geofence index after a change",
                        buckets=(0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))


def exposition() -> tuple[bytes, str]:
    """The metrics page and its content type (without the charset parameter, which aiohttp refuses there)."""
    return generate_latest(), CONTENT_TYPE_LATEST.split(";  charset")[0].split("; charset")[0]
