"""Prometheus metrics of the web server, in a registry of its own so several apps can share a process."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.requests = Counter("geoiot_web_requests_total", "HTTP requests answered",
                                ["route", "method", "status"], registry=r)
        self.latency = Histogram("geoiot_web_request_duration_seconds", "HTTP request latency",
                                 ["route"], buckets=_LATENCY_BUCKETS, registry=r)
        self.es_latency = Histogram("geoiot_web_es_query_duration_seconds", "Elasticsearch query latency",
                                    ["query"], buckets=_LATENCY_BUCKETS, registry=r)
        self.es_errors = Counter("geoiot_web_es_errors_total", "Elasticsearch requests that failed",
                                 ["query", "kind"], registry=r)
        self.cache = Counter("geoiot_web_aggregate_cache_total", "Aggregation cache lookups",
                             ["result"], registry=r)
        self.compression = Counter("geoiot_web_compressed_bodies_total", "Compressed answers: compressed, or "
                                   "reused from the memo of identical bodies (web.compression)", ["result"], registry=r)
        self.latest_cache = Counter("geoiot_web_latest_cache_total", "/api/latest answer cache lookups",
                                    ["result"], registry=r)
        self.alerts = Counter("geoiot_web_alerts_received_total", "Alerts read from the alerts topic",
                              registry=r)
        self.alerts_bad = Counter("geoiot_web_alerts_invalid_total", "Alert messages that were not JSON objects",
                                  registry=r)
        self.shed = Counter("geoiot_web_shed_total", "Requests refused with 503 busy before reaching Elasticsearch",
                            ["reason"], registry=r)
        self.queued = Gauge("geoiot_web_es_queued", "Requests waiting for a search slot", registry=r)
        self.in_flight = Gauge("geoiot_web_es_in_flight", "Searches running on Elasticsearch", registry=r)
        self.queue_wait = Histogram("geoiot_web_es_queue_wait_seconds", "Time a search waited for a slot",
                                    buckets=_LATENCY_BUCKETS, registry=r)
        self.sse_clients = Gauge("geoiot_web_sse_clients", "Open /api/events streams", registry=r)
        self.sse_views = Gauge("geoiot_web_sse_views", "Distinct views the /api/events streams watch", registry=r)
        self.sse_features = Gauge("geoiot_web_sse_features", "Features the /api/events views hold (at most "
                                  "WEB_SSE_FEATURE_BUDGET)", registry=r)
        self.sse_searches = Counter("geoiot_web_sse_searches_total",
                                    "Searches of /api/events views (one per view per refresh period)", registry=r)
        self.sse_search_errors = Counter("geoiot_web_sse_search_errors_total",
                                         "Searches of /api/events views that failed", registry=r)
        self.sse_dropped = Counter("geoiot_web_sse_dropped_total",
                                   "Events dropped from a slow client's full queue (its oldest)", ["kind"], registry=r)
        self.ogc_scans = Gauge("geoiot_web_ogc_scans_in_flight", "OGC API items searches running", registry=r)
        self.ogc_prefetch = Counter("geoiot_web_ogc_prefetch_total", "OGC API next pages: fetched ahead (hit), "
                                    "not (miss), first pages (none)", ["result"], registry=r)
        self.live_tracks = Gauge("geoiot_web_live_tracks", "Tracks the live-layer mirror holds", registry=r)
        self.live_records = Gauge("geoiot_web_live_records_read", "Live-topic records the mirror read", registry=r)
        self.live_lag = Gauge("geoiot_web_live_lag", "Live-topic records committed and not read yet", registry=r)
        self.live_synced = Gauge("geoiot_web_live_synced", "1 once the mirror read the topic to its end at start",
                                 registry=r)
        self.alerts_up = Gauge("geoiot_web_alerts_consumer_up", "1 while the alerts consumer is connected",
                               registry=r)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
