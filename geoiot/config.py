"""The one place that defines configuration: environment variables with defaults, mirrored by CLI flags.

Every component (replay, agents, web, the Spark job, topics, retention, ingest) reads its settings through
:func:`load` with its own name, so a variable means the same thing everywhere, the README table is generated
from :data:`SETTINGS`, and each setting names the components that read it (``uses``): those get it as a flag
(:func:`envs`) and refuse a value outside what it accepts with a :class:`ConfigError` naming the variable,
which each prints as one line before it exits non-zero. Other components are not stopped by it.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from geoiot.timeparse import zone

PACKAGE_DIR = Path(__file__).resolve().parent
DEFAULT_GEOFENCES = PACKAGE_DIR / "presets" / "geofences-jfk.geojson"
SINKS = ("elasticsearch", "stdout")  # what IOT_SINKS may name
# Below this the worker's fetch wait (whole milliseconds) rounds to nothing or to a few, and an idle
# worker polls Kafka hundreds of times per second: IOT_BULK_WITHIN=0 busy-spun its event loop so that
# /healthz and SIGTERM went unanswered. 10 ms keeps idle polling at most 100 per second and is far
# below any useful batching window.
# What reads settings: each validates only the settings that name it (Setting.uses), so a bad setting of one
# component never stops another (a bad IOT_WEBHOOK_URL does not stop the web server).
COMPONENTS = ("agents", "spark", "web", "replay", "topics", "retention", "ingest")
MIN_BULK_WITHIN = 0.01
MAX_BULK_WITHIN = 60.0  # far below the consumer's max.poll.interval; a batch never waits longer
# Batches a worker stores at once: more lets one worker run more bulk requests per Elasticsearch round trip
# (a third measured no faster on the shared 2-core machine, docs/BENCHMARKS.md "the analytics core in
# batches"); each one more keeps another batch in memory and is re-delivered after a crash (at least once;
# documents are idempotent).
DEFAULT_BATCHES_IN_FLIGHT = 2


def _number(value: float) -> str:
    return f"{int(value)}" if float(value).is_integer() else f"{value:g}"


class ConfigError(ValueError):
    """A setting has a value outside what it accepts; the message names the variable and the rule."""


Check = Callable[[Any], "str | None"]  # None when the value is acceptable, else what is wrong with it


def _text(value: str) -> str | None:
    """not empty"""
    return None if value.strip() else "must not be empty"


def _any_text(value: str) -> str | None:
    """any text"""
    return None


def _host_ports(value: str) -> str | None:
    """host:port, comma-separated"""
    hosts = [h.strip() for h in value.split(",")]
    for host in hosts:
        name, sep, port = host.rpartition(":")
        if not sep or not name or not port.isdigit() or not 1 <= int(port) <= 65535:
            return f"must be host:port[,host:port...] with ports 1-65535 (got {host!r})"
    return None


def _http_urls(value: str) -> str | None:
    """http(s) URLs, comma-separated"""
    for url in (u.strip() for u in value.split(",")):
        parsed = urlparse(url)
        try:
            port = parsed.port
        except ValueError:
            port = -1
        if parsed.scheme not in ("http", "https") or not parsed.hostname or port == -1 or port == 0:
            return f"must be http(s)://host[:port] URLs, comma-separated (got {url!r})"
    return None


def _optional_url(value: str) -> str | None:
    """empty or an http(s) URL"""
    return None if not value else _http_urls(value)


_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}")


def _mqtt_url(value: str) -> str | None:
    """empty or mqtt[s]://[user:password@]host[:port]"""
    if not value:
        return None
    parsed = urlparse(value)
    try:
        port = parsed.port
    except ValueError:
        port = -1
    if parsed.scheme not in ("mqtt", "mqtts") or not parsed.hostname or port in (-1, 0):
        return f"must be empty or mqtt[s]://[user:password@]host[:port] (got {value!r})"
    return None


def _topic(value: str) -> str | None:
    """Kafka topic name"""
    if not _TOPIC.fullmatch(value) or value in (".", ".."):
        return "must be a Kafka topic name: 1-249 of the characters A-Z a-z 0-9 . _ -"
    return None


def _optional_topic(value: str) -> str | None:
    """empty or a Kafka topic name"""
    return None if not value else _topic(value)


def _app_id(value: str) -> str | None:
    """1-200 of A-Z a-z 0-9 . _ -"""
    # It names the consumer group and the changelog topic "<IOT_APP_ID>-tracks-changelog".
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,200}", value):
        return "must be 1-200 of the characters A-Z a-z 0-9 . _ - (it names a Kafka group and topic)"
    return None


def _index(value: str) -> str | None:
    """Elasticsearch index name, lower case"""
    # Elasticsearch's index name rules, leaving room for the daily suffix "-YYYY.MM.DD".
    if (not value or value != value.lower() or value[0] in "-_+." or len(value.encode()) > 240
            or any(c in value for c in '\\/*?"<>| ,#:')):
        return ("must be an Elasticsearch index name: lower case, at most 240 bytes, not starting with - _ + ., "
                'without spaces or any of \\ / * ? " < > | , # :')
    return None


def _sinks(value: str) -> str | None:
    names = [n.strip() for n in value.split(",") if n.strip()]
    if not names or any(n not in SINKS for n in names):
        return f"must name one or more of {', '.join(SINKS)}, comma-separated"
    return None


_sinks.__doc__ = ", ".join(SINKS)


def _es_time(value: str) -> str | None:
    """Elasticsearch time value (1s, 500ms, -1)"""
    if value == "-1" or re.fullmatch(r"\d+(nanos|micros|ms|s|m|h|d)", value):
        return None
    return "must be an Elasticsearch time value such as 1s, 500ms or 30s (or -1 to turn refresh off)"


def _time_zone(value: str) -> str | None:
    """IANA time zone name"""
    try:
        zone(value)
    except ValueError as exc:
        return str(exc)
    return None


def _tile_url(value: str) -> str | None:
    """empty (no tiles) or a URL template with {z} {x} {y}"""
    if value and not all(part in value for part in ("{z}", "{x}", "{y}")):
        return "must be empty (no tiles) or a tile URL template with {z}, {x} and {y}"
    return None


@dataclass(frozen=True)
class Setting:
    """One configuration value: its environment variable, default, type and meaning."""

    env: str
    default: Any
    help: str
    type: type = str
    cli: str | None = None  # flag name when it differs from the variable without its IOT_ prefix
    minimum: float | None = None
    maximum: float | None = None
    check: Check | None = None  # for strings: the format; numbers use minimum/maximum
    uses: str = ""  # the COMPONENTS that read it, space-separated: only they validate it

    @property
    def components(self) -> frozenset[str]:
        return frozenset(self.uses.split())

    @property
    def allowed(self) -> str:
        """The accepted values, in words (the README table's column)."""
        if self.type is bool:
            return "true / false"
        if self.minimum is not None and self.maximum is not None:
            return f"{_number(self.minimum)} to {_number(self.maximum)}"
        if self.minimum is not None:
            return f"at least {_number(self.minimum)}"
        if self.maximum is not None:
            return f"at most {_number(self.maximum)}"
        return (self.check.__doc__ or "").strip() if self.check is not None else ""

    def validate(self, value: Any) -> Any:
        """``value`` when it is acceptable; a :class:`ConfigError` naming the variable otherwise."""
        problem: str | None = None
        if self.type in (int, float) and not isinstance(value, bool):
            if self.type is float and value != value:
                problem = "must be a number"
            elif self.minimum is not None and value < self.minimum:
                problem = f"must be at least {_number(self.minimum)}"
            elif self.maximum is not None and value > self.maximum:
                problem = f"must be at most {_number(self.maximum)}"
        elif self.check is not None:
            problem = self.check(value)
        if problem:
            raise ConfigError(f"{self.env}={value!r} {problem}")
        return value

    @property
    def attr(self) -> str:
        return self.env.lower()

    @property
    def flag(self) -> str:
        if self.cli:
            return self.cli
        return "--" + self.env.lower().removeprefix("iot_").replace("_", "-")

    def parse(self, raw: str) -> Any:
        if self.type is bool:
            value = raw.strip().lower()
            if value in {"1", "true", "yes", "on"}:
                return True
            if value in {"0", "false", "no", "off", ""}:
                return False
            raise ConfigError(f"{self.env}={raw!r} is not a boolean (use true or false)")
        if self.type is int:
            try:
                return int(raw)
            except ValueError:
                raise ConfigError(f"{self.env}={raw!r} is not an integer") from None
        if self.type is float:
            try:
                return float(raw)
            except ValueError:
                raise ConfigError(f"{self.env}={raw!r} is not a number") from None
        return raw


SETTINGS: tuple[Setting, ...] = (
    Setting("KAFKA_BOOTSTRAP", "localhost:9092", "Kafka bootstrap servers (host:port[,host:port])", str, "--bootstrap",
            check=_host_ports, uses="agents spark web replay topics ingest"),
    Setting("ES_URL", "http://localhost:9200", "Elasticsearch URL (comma-separated for several nodes)",
            check=_http_urls, uses="agents spark web retention"),
    Setting("IOT_APP_ID", "geoiot", "Faust app id, also the Kafka consumer group of the agents", check=_app_id,
            uses="agents spark topics"),
    Setting("IOT_SCHEMA", "taxi", "Schema preset: a shipped name (taxi) or a path to a .toml/.json preset",
            check=_text, uses="agents spark web replay retention ingest"),
    Setting("IOT_TOPIC", "taxi", "Source topic of position reports", check=_topic,
            uses="agents spark web replay topics ingest"),
    Setting("IOT_INDEX", "taxi", "Elasticsearch index (alias) for observations", check=_index,
            uses="agents spark web retention"),
    Setting("IOT_DLQ_TOPIC", "taxi-dlq", "Dead-letter topic for invalid events, with their reason", check=_topic,
            uses="agents spark replay topics ingest"),
    Setting("IOT_ALERTS_TOPIC", "taxi-alerts", "Topic of geofence enter/exit alerts", check=_topic,
            uses="agents spark web topics"),
    Setting("IOT_GEOFENCES", str(DEFAULT_GEOFENCES), "GeoJSON FeatureCollection of geofences", check=_text,
            uses="agents spark web"),
    Setting("IOT_GEOFENCE_FILTER", False, "Keep only observations inside some geofence", bool, uses="agents spark"),
    Setting("IOT_WEBHOOK_URL", "", "POST every geofence alert to this URL when set", check=_optional_url,
            uses="agents spark"),
    Setting("IOT_SINKS", "elasticsearch", "Comma-separated sinks of the agents: elasticsearch, stdout", check=_sinks,
            uses="agents"),
    Setting("IOT_PARTITIONS", 3, "Partitions of topics created by the tools", int, minimum=1, maximum=10000,
            uses="replay topics ingest"),
    Setting("IOT_REPLICATION", 1, "Replication factor of topics created by the tools", int, minimum=1, maximum=32767,
            uses="agents replay topics ingest"),
    Setting("IOT_INDEX_SHARDS", 1, "Primary shards of the observation index", int, minimum=1, maximum=1024,
            uses="agents spark"),
    Setting("IOT_INDEX_REPLICAS", 0, "Replicas of the observation index", int, minimum=0, maximum=100,
            uses="agents spark"),
    Setting("IOT_INDEX_REFRESH", "1s", "Refresh interval of the observation index", check=_es_time,
            uses="agents spark"),
    Setting("IOT_BULK_SIZE", 2000, "Documents per Elasticsearch bulk request (at most)", int, minimum=1,
            maximum=100_000, uses="agents spark"),
    Setting("IOT_BULK_WITHIN", 0.25, "Seconds to wait for a bulk batch to fill", float, minimum=MIN_BULK_WITHIN,
            maximum=MAX_BULK_WITHIN, uses="agents"),
    Setting("IOT_BATCHES_IN_FLIGHT", DEFAULT_BATCHES_IN_FLIGHT, "Batches a worker writes to Elasticsearch at once, "
            "one more may be committing (more: higher rate over the bulk round trip, more memory and more "
            "re-delivered after a crash)", int, minimum=1, maximum=16, uses="agents"),
    Setting("IOT_TIMEZONE", "UTC", "Time zone of input times without an offset", check=_time_zone,
            uses="agents spark replay"),
    Setting("WEB_PORT", 8080, "Port of the web server and map", int, "--port", minimum=1, maximum=65535, uses="web"),
    Setting("WEB_HOST", "127.0.0.1", "Interface the web server binds", str, "--host", check=_text, uses="web"),
    Setting("WORKER_WEB_PORT", 6066, "Port of the agents worker's /healthz and /metrics", int, minimum=1,
            maximum=65535, uses="agents"),
    Setting("MAP_TILE_URL", "https://tile.openstreetmap.org/{z}/{x}/{y}.png", "Tile URL template of the map",
            check=_tile_url, uses="web"),
    Setting("MAP_REFRESH_MS", 3000, "Map refresh period in milliseconds", int, minimum=100, maximum=3_600_000,
            uses="web"),
    Setting("MAP_MARKER_THRESHOLD", 1000, "Below this many observations in view the map draws symbols", int,
            minimum=0, maximum=1_000_000, uses="web"),
    Setting("MAP_STALE_MS", 300_000, "The map fades a track with no report for this many milliseconds", int,
            minimum=1000, maximum=31_622_400_000, uses="web"),  # up to a leap year
    Setting("SPARK_CHECKPOINT_DIR", "", "Checkpoint directory of the Spark job (empty: .stack/spark-checkpoints/<IOT_APP_ID>)",
            check=_any_text, uses="spark"),
    Setting("IOT_MAX_EVENT_AGE_DAYS", 36525.0, "Events older than this many days are dead letters (replay skips them)", float,
            minimum=0.01, maximum=3_652_059, uses="agents spark replay ingest"),  # years 1-9999
    Setting("IOT_MAX_EVENT_AHEAD_DAYS", 1.0, "Events more than this many days in the future are dead letters", float,
            minimum=0, maximum=3_652_059, uses="agents spark replay ingest"),
    Setting("IOT_MAX_NEW_INDICES", 10, "Daily indices one batch may create; events for more are dead letters", int,
            minimum=1, maximum=1000, uses="agents spark"),  # Elasticsearch's default shard limit is 1000 per data node
    Setting("IOT_RETENTION_DAYS", 0, "Daily indices older than this many days are deleted (0: keep all)", int,
            minimum=0, maximum=3_652_059, uses="agents spark replay retention ingest"),
    Setting("IOT_TRACK_IDLE_TIMEOUT", 86400.0, "Seconds (processing time) after its last update that a track's state ends "
            "(0: never; see agents/core/idle.py)", float, minimum=0, maximum=31_536_000, uses="agents spark"),
    Setting("WEB_ES_CONCURRENCY", 16, "Searches the web server runs on Elasticsearch at once", int,
            minimum=1, maximum=1024, uses="web"),
    Setting("WEB_ES_QUEUE", 512, "Requests that may wait for a search slot; beyond, 503 busy with Retry-After", int,
            minimum=0, maximum=100_000, uses="web"),
    Setting("WEB_QUEUE_TIMEOUT", 3.0, "Seconds a request may wait for a search slot before 503 busy", float,
            minimum=0, maximum=60, uses="web"),
    Setting("WEB_MAX_GRID_CELLS", 65536, "Most geohash cells an aggregation may cover (bbox x precision)", int,
            minimum=1, maximum=10_000_000, uses="web"),
    Setting("WEB_HEADER_TIMEOUT", 15.0, "Seconds a connection may go without a complete request head (idle keep-alive too)", float,
            minimum=0.1, maximum=3600, uses="web"),
    Setting("WEB_BODY_TIMEOUT", 5.0, "Seconds the web server spends reading a request body it does not use", float,
            minimum=0.1, maximum=3600, uses="web"),
    Setting("WEB_SSE_REFRESH", 1.0, "Seconds between two searches of one /api/events view (shared by its clients)",
            float, minimum=0.1, maximum=3600, uses="web"),
    Setting("WEB_SSE_QUEUE", 64, "Events one /api/events client may have waiting; beyond, its oldest are dropped",
            int, minimum=1, maximum=100_000, uses="web"),
    Setting("WEB_SSE_RING", 1000, "Recent alerts kept for /api/alerts and Last-Event-ID resumes of /api/events",
            int, minimum=1, maximum=1_000_000, uses="web"),
    Setting("WEB_SSE_PING", 15.0, "Seconds between keep-alive comments on /api/events", float,
            minimum=0.1, maximum=3600, uses="web"),
    Setting("WEB_SSE_MAX_CLIENTS", 10_000, "Open /api/events streams at most; beyond, 503 busy with Retry-After",
            int, minimum=1, maximum=1_000_000, uses="web"),
    Setting("WEB_SSE_MAX_VIEWS", 100, "Distinct views the /api/events streams may watch (each a search per period)",
            int, minimum=1, maximum=100_000, uses="web"),
    Setting("IOT_TOKENS_FILE", "", "Bearer tokens of the HTTP writes (ingest, fences): one '<token> <scope> [<track prefix>]' "
            "per line (geoiot/tokens.py); empty: no tokens", check=_any_text, uses="web ingest"),
    Setting("IOT_WEBHOOK_CONCURRENCY", 8, "Webhook POSTs in flight at once", int, minimum=1, maximum=1000,
            uses="agents spark"),
    Setting("IOT_WEBHOOK_MAX_AGE", 60.0, "Seconds an alert may wait for the webhook; older ones are not sent "
            "(counted expired)", float, minimum=1, maximum=86400, uses="agents spark"),
    Setting("IOT_WEBHOOK_COOLDOWN", 5.0, "Seconds the webhook target gets no request after 5 failed attempts in a row, "
            "before one probe (circuit breaker)", float, minimum=0.1, maximum=3600, uses="agents spark"),
    Setting("WEB_SSE_VIEW_FEATURES", 2000, "Features one /api/events view holds and pushes at most (a larger limit "
            "is cut to it)", int, minimum=1, maximum=10_000, uses="web"),
    Setting("WEB_SSE_FEATURE_BUDGET", 20_000, "Features all /api/events views together may hold (each reserves its "
            "limit); a new view beyond is 503 busy", int, minimum=1, maximum=10_000_000, uses="web"),
    Setting("IOT_METADATA_MAX_AGE", 30.0, "Seconds at most before a worker sees partitions added to the source topic "
            "(it then rebalances and grows the changelog)", float, minimum=1, maximum=3600, uses="agents"),
    Setting("IOT_STALL_TIMEOUT", 60.0, "Seconds a worker may be behind its partitions without committing before "
            "/healthz says stalled (503)", float, minimum=1, maximum=86400, uses="agents"),
    Setting("WEB_OGC_SCANS", 4, "OGC API items searches (pages of a scan) running at once; beyond, they queue like "
            "other searches and are shed with 503 busy", int, minimum=1, maximum=1024, uses="web"),
    Setting("WEB_OGC_CURSOR_SECRET", "", "Key that signs the OGC API's next-page cursors (give every web instance "
            "behind one address the same); empty: a random key per process", check=_any_text, uses="web"),
    Setting("IOT_FENCES_TOPIC", "", "Compacted topic of the live geofences (geoiot/fences.py); empty: <IOT_TOPIC>-fences",
            check=_optional_topic, uses="agents spark web topics"),
    Setting("IOT_LATEST_TOPIC", "", "Compacted topic of each track's newest document, the live layer the web servers "
            "mirror (geoiot/live.py); empty: <IOT_TOPIC>-latest", check=_optional_topic, uses="agents spark web topics"),
    Setting("INGEST_PORT", 8090, "Port of the ingest gateway (POST /v1/positions, the OsmAnd protocol on /)", int,
            "--port", minimum=1, maximum=65535, uses="ingest"),
    Setting("INGEST_HOST", "127.0.0.1", "Interface the ingest gateway binds", str, "--host", check=_text, uses="ingest"),
    Setting("INGEST_INSECURE", False, "Run the ingest gateway without tokens (every client may write every track; "
            "the local demo)", bool, "--insecure", uses="ingest"),
    Setting("INGEST_TLS_CERT", "", "PEM certificate of the ingest gateway's HTTPS (with INGEST_TLS_KEY; empty: HTTP)",
            check=_any_text, uses="ingest"),
    Setting("INGEST_TLS_KEY", "", "PEM private key of INGEST_TLS_CERT", check=_any_text, uses="ingest"),
    Setting("INGEST_MAX_BODY", 4 * 1024 * 1024, "Bytes of one ingest request body at most, after decompression "
            "too (beyond: 413)", int, minimum=1024, maximum=1024 * 1024 * 1024, uses="ingest"),
    Setting("INGEST_IN_FLIGHT_BYTES", 64 * 1024 * 1024, "Request bytes the gateway holds until Kafka acknowledges "
            "them; beyond, 503 with Retry-After", int, minimum=1024, maximum=16 * 1024 * 1024 * 1024, uses="ingest"),
    Setting("INGEST_ACK_TIMEOUT", 10.0, "Seconds a request waits for Kafka's acknowledgement before 503 (and the "
            "gateway sheds while Kafka is silent that long)", float, minimum=0.1, maximum=600, uses="ingest"),
    Setting("INGEST_BODY_TIMEOUT", 10.0, "Seconds the gateway waits for a request body (beyond: 408)", float,
            minimum=0.1, maximum=3600, uses="ingest"),
    Setting("INGEST_LINGER_MS", 5, "Milliseconds positions of concurrent requests wait to share a Kafka batch", int,
            minimum=0, maximum=1000, uses="ingest"),
    Setting("MQTT_URL", "", "MQTT broker of the gateway, mqtt[s]://[user:password@]host[:port] (empty: no MQTT)",
            check=_mqtt_url, uses="ingest"),
    Setting("MQTT_TOPIC", "devices/+/position", "MQTT topic filter; the level of its first + is the track id (none: "
            "from the payload)", check=_text, uses="ingest"),
    Setting("MQTT_CLIENT_ID", "geoiot-ingest", "MQTT client id of the gateway's persistent session", check=_text, uses="ingest"),
    Setting("MQTT_SHARE_GROUP", "", "MQTT 5 shared subscription group: gateways of one group split the topic "
            "(empty: none)", check=_any_text, uses="ingest"),
    Setting("MQTT_QUEUE", 1000, "MQTT messages the gateway holds unacknowledged at most (its receive maximum)", int,
            minimum=1, maximum=65535, uses="ingest"),
    Setting("IOT_ES_LATEST", False, "Also keep each track's newest document in Elasticsearch's <IOT_INDEX>_latest "
            "index, for Kibana (the web servers read the live topic; off: Elasticsearch spends less per event)",
            bool, uses="agents"),
    Setting("IOT_TRANSACTIONAL_ID", "", "Kafka transactional id of a worker, stable across its restarts so a "
            "restarted worker fences its predecessor; empty: <IOT_APP_ID>-<host name>-<WORKER_WEB_PORT>",
            check=_any_text, uses="agents"),
    Setting("MQTT_CA_FILE", "", "PEM CA bundle that verifies the MQTT broker's certificate for mqtts:// (only "
            "these CAs are trusted; empty: the system's CAs)", check=_any_text, uses="ingest"),
    Setting("MQTT_TLS_CERT", "", "PEM client certificate the gateway shows an mqtts:// broker that requires one "
            "(with MQTT_TLS_KEY; empty: none)", check=_any_text, uses="ingest"),
    Setting("MQTT_TLS_KEY", "", "PEM private key of MQTT_TLS_CERT", check=_any_text, uses="ingest"),
)

_BY_ENV = {s.env: s for s in SETTINGS}


@dataclass(frozen=True)
class Settings:
    """Resolved configuration; attribute names are the lower-cased variable names."""

    kafka_bootstrap: str
    es_url: str
    iot_app_id: str
    iot_schema: str
    iot_topic: str
    iot_index: str
    iot_dlq_topic: str
    iot_alerts_topic: str
    iot_geofences: str
    iot_geofence_filter: bool
    iot_webhook_url: str
    iot_sinks: str
    iot_partitions: int
    iot_replication: int
    iot_index_shards: int
    iot_index_replicas: int
    iot_index_refresh: str
    iot_bulk_size: int
    iot_bulk_within: float
    iot_batches_in_flight: int
    iot_timezone: str
    web_port: int
    web_host: str
    worker_web_port: int
    map_tile_url: str
    map_refresh_ms: int
    map_marker_threshold: int
    map_stale_ms: int
    spark_checkpoint_dir: str
    iot_max_event_age_days: float
    iot_max_event_ahead_days: float
    iot_max_new_indices: int
    iot_retention_days: int
    iot_track_idle_timeout: float
    web_es_concurrency: int
    web_es_queue: int
    web_queue_timeout: float
    web_max_grid_cells: int
    web_header_timeout: float
    web_body_timeout: float
    web_sse_refresh: float
    web_sse_queue: int
    web_sse_ring: int
    web_sse_ping: float
    web_sse_max_clients: int
    web_sse_max_views: int
    iot_tokens_file: str
    iot_webhook_concurrency: int
    iot_webhook_max_age: float
    iot_webhook_cooldown: float
    web_sse_view_features: int
    web_sse_feature_budget: int
    iot_metadata_max_age: float
    iot_stall_timeout: float
    web_ogc_scans: int
    web_ogc_cursor_secret: str
    iot_fences_topic: str
    iot_latest_topic: str
    ingest_port: int
    ingest_host: str
    ingest_insecure: bool
    ingest_tls_cert: str
    ingest_tls_key: str
    ingest_max_body: int
    ingest_in_flight_bytes: int
    ingest_ack_timeout: float
    ingest_body_timeout: float
    ingest_linger_ms: int
    mqtt_url: str
    mqtt_topic: str
    mqtt_client_id: str
    mqtt_share_group: str
    mqtt_queue: int
    iot_es_latest: bool
    iot_transactional_id: str
    mqtt_ca_file: str
    mqtt_tls_cert: str
    mqtt_tls_key: str

    @property
    def es_hosts(self) -> list[str]:
        return [h.strip() for h in self.es_url.split(",") if h.strip()]

    @property
    def fences_topic(self) -> str:
        """IOT_FENCES_TOPIC, derived from the source topic when unset (so each source has its own fences)."""
        return self.iot_fences_topic or f"{self.iot_topic}-fences"

    @property
    def latest_topic(self) -> str:
        """IOT_LATEST_TOPIC, derived from the source topic when unset (geoiot.live)."""
        return self.iot_latest_topic or f"{self.iot_topic}-latest"

    @property
    def sinks(self) -> list[str]:
        return [s.strip() for s in self.iot_sinks.split(",") if s.strip()]


assert [f.name for f in fields(Settings)] == [s.attr for s in SETTINGS], "Settings and SETTINGS disagree"
assert all(s.components and s.components <= set(COMPONENTS) for s in SETTINGS), "a setting no known component reads"


def envs(component: str) -> tuple[str, ...]:
    """The variables ``component`` reads, in table order: its CLI flags."""
    if component not in COMPONENTS:
        raise ValueError(f"unknown component {component!r} (one of {', '.join(COMPONENTS)})")
    return tuple(s.env for s in SETTINGS if component in s.components)


def _lenient(setting: Setting, raw: str | None) -> Any:
    """A setting another component reads: its value when acceptable, else its default (never an error here)."""
    if raw is None:
        return setting.default
    try:
        return setting.validate(setting.parse(raw))
    except ConfigError:
        return setting.default


def load(environ: Mapping[str, str] | None = None, component: str | None = None, **overrides: Any) -> Settings:
    """Settings from the environment, then explicit overrides (CLI flags); unset overrides are ignored.

    With a ``component``, only the settings it reads are parsed strictly and validated; without one, all are."""
    env = os.environ if environ is None else environ
    mine = set(envs(component)) if component is not None else set(_BY_ENV)
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        raw = env.get(setting.env)
        if setting.env not in mine:
            values[setting.attr] = _lenient(setting, raw)
        else:
            values[setting.attr] = setting.default if raw is None else setting.parse(raw)
    for key, value in overrides.items():
        if key not in values:
            raise TypeError(f"unknown setting {key!r}")
        if value is not None:
            values[key] = value
    for setting in SETTINGS:
        if setting.env in mine:
            setting.validate(values[setting.attr])
    return Settings(**values)


def add_flags(parser: argparse.ArgumentParser, envs: Iterable[str]) -> None:
    """Add CLI flags mirroring the given variables; their defaults stay None so the environment wins."""
    for env in envs:
        setting = _BY_ENV[env]
        kwargs: dict[str, Any] = {"dest": setting.attr, "default": None, "metavar": env}
        if setting.type is bool:
            kwargs.pop("metavar")
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = setting.type
        parser.add_argument(setting.flag, help=f"{setting.help} (env {env}, default {setting.default!r})", **kwargs)


def from_args(args: argparse.Namespace, environ: Mapping[str, str] | None = None,
              component: str | None = None) -> Settings:
    """Settings from the environment overridden by whichever mirrored flags were given."""
    known = {s.attr for s in SETTINGS}
    return load(environ, component, **{k: v for k, v in vars(args).items() if k in known})


def markdown_table() -> str:
    """The README's configuration table, so documentation cannot drift from code."""
    rows = ["| Variable | Flag | Default | Accepts | Meaning | Read by |", "|---|---|---|---|---|---|"]
    for s in SETTINGS:
        default = "geoiot/presets/geofences-jfk.geojson" if s.env == "IOT_GEOFENCES" else s.default
        readers = ", ".join(sorted(s.components))
        rows.append(f"| `{s.env}` | `{s.flag}` | `{default!s}` | {s.allowed} | {s.help} | {readers} |")
    return "\n".join(rows)
