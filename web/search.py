"""The web server's one door to Elasticsearch: its clients, the limiter every search waits in (web.limiter)
and the search metrics. Handlers and the OGC API all search through the
:class:`Search` on the app (web.keys.SEARCH), so a test can put an in-process fake client under it."""

from __future__ import annotations

import time
from typing import Any

from elasticsearch import AsyncElasticsearch
from elasticsearch.serializer import OrjsonSerializer

from geoiot.config import Settings
from geoiot.schema import Preset
from web.limiter import Limiter
from web.metrics import Metrics

# Concurrent connections to Elasticsearch (the client's default is 10, which queues a busy server's searches);
# the searches themselves are bounded by WEB_ES_CONCURRENCY (the limiter), below this.
ES_CONNECTIONS = 32
# Seconds one Elasticsearch request may take; a timeout is answered 504, not "unreachable".
ES_TIMEOUT = 10


class RawJson(OrjsonSerializer):
    """Requests as JSON, answers left as their bytes."""

    def loads(self, data: bytes) -> bytes:  # type: ignore[override]
        return bytes(data)


RAW_SERIALIZERS = {"application/json": RawJson(), "application/vnd.elasticsearch+json": RawJson()}


def clients(settings: Settings) -> tuple[AsyncElasticsearch, AsyncElasticsearch]:
    """Two clients of the cluster: answers parsed, and answers as bytes (web.ogc.shape reads those). Few
    retries, so an outage answers 503 quickly instead of hanging."""
    options: dict[str, Any] = {"request_timeout": ES_TIMEOUT, "max_retries": 1, "retry_on_timeout": False,
                               "connections_per_node": ES_CONNECTIONS}
    return (AsyncElasticsearch(settings.es_hosts, serializer=OrjsonSerializer(), **options),
            AsyncElasticsearch(settings.es_hosts, serializers=RAW_SERIALIZERS, **options))


class Search:
    """Searches of the observation index alias (or a named index) in a limiter slot, timed per query kind.

    ``client`` and ``raw`` need only ``search(index=..., **body)`` (an answer with ``.body``) and
    ``cluster.health``: an AsyncElasticsearch, or an in-process fake in handler tests."""

    def __init__(self, client: Any, raw: Any, *, limiter: Limiter, metrics: Metrics, preset: Preset,
                 index: str) -> None:
        self.client, self.raw = client, raw
        self.limiter, self.metrics = limiter, metrics
        self.preset, self.index = preset, index
        metrics.queued.set_function(lambda: limiter.queued)
        metrics.in_flight.set_function(lambda: limiter.in_flight)

    async def search(self, name: str, body: dict[str, Any], index: str | None = None, *,
                     raw: bool = False) -> Any:
        """The answer's body (bytes when ``raw``); raises web.limiter.Busy when no slot comes soon."""
        metrics = self.metrics
        queued = time.perf_counter()
        async with self.limiter.slot():
            began = time.perf_counter()
            metrics.queue_wait.observe(began - queued)
            try:
                response = await (self.raw if raw else self.client).search(index=index or self.index, **body)
            except Exception as exc:
                metrics.es_errors.labels(name, type(exc).__name__).inc()
                raise
            finally:
                metrics.es_latency.labels(name).observe(time.perf_counter() - began)
        return response.body

    async def health(self) -> tuple[bool, str | None]:
        """(up, the cluster's status or the error's type). Cluster health, not ping: HEAD / is refused by some
        proxies, and a failed ping would put the client's only node on a dead-node timeout."""
        try:
            health = (await self.client.cluster.health(timeout="2s")).body
            return True, health.get("status")
        except Exception as exc:  # any failure to answer means unhealthy
            return False, type(exc).__name__

    async def close(self) -> None:
        await self.client.close()
        if self.raw is not self.client:
            await self.raw.close()
