"""Prometheus metrics of the gateway, in a registry of its own (several gateways may share a test process)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.accepted = Counter("geoiot_ingest_accepted_total", "Positions acknowledged by Kafka", ["source"],
                                registry=r)
        self.rejected = Counter("geoiot_ingest_rejected_total", "Positions refused, by reason", ["source", "reason"],
                                registry=r)
        self.shed = Counter("geoiot_ingest_shed_total", "Requests answered 503 with Retry-After", ["reason"],
                            registry=r)
        self.requests = Counter("geoiot_ingest_requests_total", "HTTP requests answered", ["route", "status"],
                                registry=r)
        self.produce = Histogram("geoiot_ingest_produce_seconds", "From a request's or message's records queued "
                                 "to Kafka's acknowledgement", ["source"], buckets=_LATENCY, registry=r)
        self.in_flight = Gauge("geoiot_ingest_in_flight_bytes", "Request bytes held until Kafka acknowledges them",
                               registry=r)
        self.mqtt_messages = Counter("geoiot_ingest_mqtt_messages_total", "MQTT messages received, by outcome",
                                     ["outcome"], registry=r)
        self.puback_delay = Histogram("geoiot_ingest_puback_delay_seconds", "From an MQTT message's arrival to "
                                      "its PUBACK", buckets=_LATENCY, registry=r)
        self.mqtt_connected = Gauge("geoiot_ingest_mqtt_connected", "1 while connected to the MQTT broker",
                                    registry=r)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST.split(";")[0]
