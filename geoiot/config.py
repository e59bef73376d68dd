"""The one place that defines configuration: environment variables with defaults, mirrored by CLI flags.

Every component (replay, agents, web, the Spark job, the Marathon apps) reads its settings through
:func:`load`, so a variable means the same thing everywhere and the README table is generated from
:data:`SETTINGS`.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

PACKAGE_DIR = Path(__file__).resolve().parent
DEFAULT_GEOFENCES = PACKAGE_DIR / "presets" / "geofences-jfk.geojson"


@dataclass(frozen=True)
class Setting:
    """One configuration value: its environment variable, default, type and meaning."""

    env: str
    default: Any
    help: str
    type: type = str
    cli: str | None = None  # flag name when it differs from the variable without its IOT_ prefix

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
            raise ValueError(f"{self.env}={raw!r} is not a boolean (use true or false)")
        if self.type is int:
            try:
                return int(raw)
            except ValueError:
                raise ValueError(f"{self.env}={raw!r} is not an integer") from None
        if self.type is float:
            try:
                return float(raw)
            except ValueError:
                raise ValueError(f"{self.env}={raw!r} is not a number") from None
        return raw


SETTINGS: tuple[Setting, ...] = (
    Setting("KAFKA_BOOTSTRAP", "localhost:9092", "Kafka bootstrap servers (host:port[,host:port])", str, "--bootstrap"),
    Setting("ES_URL", "http://localhost:9200", "Elasticsearch URL (comma-separated for several nodes)"),
    Setting("IOT_APP_ID", "geoiot", "Faust app id, also the Kafka consumer group of the agents"),
    Setting("IOT_SCHEMA", "taxi", "Schema preset: a shipped name (taxi) or a path to a .toml/.json preset"),
    Setting("IOT_TOPIC", "taxi", "Source topic of position reports"),
    Setting("IOT_INDEX", "taxi", "Elasticsearch index (alias) for observations"),
    Setting("IOT_DLQ_TOPIC", "taxi-dlq", "Dead-letter topic for invalid events, with their reason"),
    Setting("IOT_ALERTS_TOPIC", "taxi-alerts", "Topic of geofence enter/exit alerts"),
    Setting("IOT_GEOFENCES", str(DEFAULT_GEOFENCES), "GeoJSON FeatureCollection of geofences"),
    Setting("IOT_GEOFENCE_FILTER", False, "Keep only observations inside some geofence", bool),
    Setting("IOT_WEBHOOK_URL", "", "POST every geofence alert to this URL when set"),
    Setting("IOT_SINKS", "elasticsearch", "Comma-separated sinks of the agents: elasticsearch, stdout"),
    Setting("IOT_PARTITIONS", 3, "Partitions of topics created by the tools", int),
    Setting("IOT_REPLICATION", 1, "Replication factor of topics created by the tools", int),
    Setting("IOT_INDEX_SHARDS", 1, "Primary shards of the observation index", int),
    Setting("IOT_INDEX_REPLICAS", 0, "Replicas of the observation index", int),
    Setting("IOT_INDEX_REFRESH", "1s", "Refresh interval of the observation index"),
    Setting("IOT_BULK_SIZE", 2000, "Documents per Elasticsearch bulk request (at most)", int),
    Setting("IOT_BULK_WITHIN", 0.25, "Seconds to wait for a bulk batch to fill", float),
    Setting("IOT_TIMEZONE", "UTC", "Time zone of input times without an offset"),
    Setting("WEB_PORT", 8080, "Port of the web server and map", int, "--port"),
    Setting("WEB_HOST", "127.0.0.1", "Interface the web server binds", str, "--host"),
    Setting("WORKER_WEB_PORT", 6066, "Port of the agents worker's /healthz and /metrics", int),
    Setting("MAP_TILE_URL", "https://tile.openstreetmap.org/{z}/{x}/{y}.png", "Tile URL template of the map"),
    Setting("MAP_REFRESH_MS", 3000, "Map refresh period in milliseconds", int),
    Setting("MAP_MARKER_THRESHOLD", 1000, "Below this many observations in view the map draws symbols", int),
    Setting("SPARK_CHECKPOINT_DIR", "", "Checkpoint directory of the Spark job (empty: .stack/spark-checkpoints/<IOT_APP_ID>)"),
    Setting("IOT_MAX_EVENT_AGE_DAYS", 36525.0, "Events older than this many days are dead letters (replay skips them)", float),
    Setting("IOT_MAX_EVENT_AHEAD_DAYS", 1.0, "Events more than this many days in the future are dead letters", float),
    Setting("IOT_MAX_NEW_INDICES", 10, "Daily indices one batch may create; events for more are dead letters", int),
    Setting("IOT_RETENTION_DAYS", 0, "Daily indices older than this many days are deleted (0: keep all)", int),
    Setting("WEB_ES_CONCURRENCY", 16, "Searches the web server runs on Elasticsearch at once", int),
    Setting("WEB_ES_QUEUE", 512, "Requests that may wait for a search slot; beyond, 503 busy with Retry-After", int),
    Setting("WEB_QUEUE_TIMEOUT", 3.0, "Seconds a request may wait for a search slot before 503 busy", float),
    Setting("WEB_MAX_GRID_CELLS", 65536, "Most geohash cells an aggregation may cover (bbox x precision)", int),
    Setting("WEB_HEADER_TIMEOUT", 15.0, "Seconds a connection may go without a complete request head (idle keep-alive too)", float),
    Setting("WEB_BODY_TIMEOUT", 5.0, "Seconds the web server spends reading a request body it does not use", float),
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
    iot_timezone: str
    web_port: int
    web_host: str
    worker_web_port: int
    map_tile_url: str
    map_refresh_ms: int
    map_marker_threshold: int
    spark_checkpoint_dir: str
    iot_max_event_age_days: float
    iot_max_event_ahead_days: float
    iot_max_new_indices: int
    iot_retention_days: int
    web_es_concurrency: int
    web_es_queue: int
    web_queue_timeout: float
    web_max_grid_cells: int
    web_header_timeout: float
    web_body_timeout: float

    @property
    def es_hosts(self) -> list[str]:
        return [h.strip() for h in self.es_url.split(",") if h.strip()]

    @property
    def sinks(self) -> list[str]:
        return [s.strip() for s in self.iot_sinks.split(",") if s.strip()]


assert [f.name for f in fields(Settings)] == [s.attr for s in SETTINGS], "Settings and SETTINGS disagree"


def load(environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Settings from the environment, then explicit overrides (CLI flags); unset overrides are ignored."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        raw = env.get(setting.env)
        values[setting.attr] = setting.default if raw is None else setting.parse(raw)
    for key, value in overrides.items():
        if key not in values:
            raise TypeError(f"unknown setting {key!r}")
        if value is not None:
            values[key] = value
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


def from_args(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from the environment overridden by whichever mirrored flags were given."""
    known = {s.attr for s in SETTINGS}
    return load(environ, **{k: v for k, v in vars(args).items() if k in known})


def markdown_table() -> str:
    """The README's configuration table, so documentation cannot drift from code."""
    rows = ["| Variable | Flag | Default | Meaning |", "|---|---|---|---|"]
    for s in SETTINGS:
        default = "geoiot/presets/geofences-jfk.geojson" if s.env == "IOT_GEOFENCES" else s.default
        rows.append(f"| `{s.env}` | `{s.flag}` | `{default!s}` | {s.help} |")
    return "\n".join(rows)
