"""The aiohttp application: state, middlewares, Elasticsearch client and alerts consumer lifecycles.

Layout follows aio-libs' demos: ``init_app(settings)`` builds the app; resources that need closing live
in ``cleanup_ctx``; the API's routes are in ``web.routes``, the typed state keys both share in ``web.keys``
(imports run one way: app -> routes -> keys); the HTTP server around it is ``web.server``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import hdrs, web
from aiohttp.web_response import ContentCoding
from elasticsearch import ApiError, AsyncElasticsearch, ConnectionTimeout, TransportError
from elasticsearch.serializer import OrjsonSerializer

from geoiot.config import Settings
from geoiot.malloc import release_freed_heap
from geoiot.schema import load_preset
from web import alerts, assets, events, fences, ogc, routes
from web.cache import TTLCache
from web.keys import ALERTS, CACHE, ES, HUB, LIMITER, METRICS, PRESET, RAW_ES, SETTINGS
from web.limiter import Busy, Limiter
from web.metrics import Metrics
from web.params import BadRequest
from web.responses import error_response

log = logging.getLogger("web")

# The map's files: web/bundled/ of an installed wheel, else the checkout (web.assets owns the layout).
ROOT = assets.asset_root()
STATIC_DIR = ROOT / assets.STATIC
NODE_MODULES = ROOT / assets.NODE_MODULES
VENDOR = assets.VENDOR
_COMPRESSIBLE = ("application/json", "text/", "application/javascript", "image/svg+xml")
# zlib level 1: a 230-cell GeoJSON (85 kB) compresses in about a third of the time of the default level 6,
# to a body ~25 % larger (12 kB instead of 10 kB), which is the better trade on a local network.
GZIP_LEVEL = 1
_MIN_COMPRESS = 512
# Concurrent connections to Elasticsearch (the client's default is 10, which queues a busy server's searches);
# the searches themselves are bounded by WEB_ES_CONCURRENCY (web.limiter), below this.
ES_CONNECTIONS = 32
# Seconds one Elasticsearch request may take; a timeout is answered 504, not "unreachable".
ES_TIMEOUT = 10
# What a shed request is told to wait before retrying (seconds).
RETRY_AFTER = 1

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
    """One structured log line, the Prometheus series and a Server-Timing header per request."""
    began = time.perf_counter()
    response = await handler(request)
    elapsed = time.perf_counter() - began
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    metrics = request.app[METRICS]
    metrics.requests.labels(route, request.method, str(response.status)).inc()
    metrics.latency.labels(route).observe(elapsed)
    if not response.prepared:  # the server's own time, so a client can tell it from the network's
        response.headers["Server-Timing"] = f"app;dur={elapsed * 1000:.2f}"
    if log.isEnabledFor(logging.INFO):
        log.info(json.dumps({"event": "http", "method": request.method, "path": request.path, "route": route,
                             "status": response.status, "ms": round(elapsed * 1000, 2)}))
    return response


def gzip_body(body: bytes, coding: str) -> bytes:
    """``body`` compressed at GZIP_LEVEL as gzip (wbits 31) or zlib-wrapped deflate (wbits 15, as HTTP wants)."""
    compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31 if coding == "gzip" else 15)
    return compressor.compress(body) + compressor.flush()


@web.middleware
async def compress(request: web.Request, handler: Handler) -> web.StreamResponse:
    """gzip (else deflate) for text-like responses when the client accepts it; small bodies go as they are."""
    response = await handler(request)
    ctype = response.content_type or ""
    if response.status >= 300 or not ctype.startswith(_COMPRESSIBLE) or ctype == "text/event-stream":
        return response
    accept = request.headers.get(hdrs.ACCEPT_ENCODING, "").lower()
    coding = "gzip" if "gzip" in accept else "deflate" if "deflate" in accept else None
    if coding is None:
        return response
    if isinstance(response, web.Response) and isinstance(response.body, bytes):
        # in memory: compress here, in one call at a cheap level (aiohttp would use level 6)
        if len(response.body) >= _MIN_COMPRESS:
            response.body = gzip_body(response.body, coding)
            response.headers[hdrs.CONTENT_ENCODING] = coding
            response.headers[hdrs.VARY] = hdrs.ACCEPT_ENCODING
        return response
    response.enable_compression(ContentCoding.gzip if coding == "gzip" else ContentCoding.deflate)
    return response


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure as JSON: 400 bad input, 404/405, 503 busy (shed) or Elasticsearch unreachable, 504
    Elasticsearch too slow, never a trace."""
    try:
        response = await handler(request)
        if isinstance(response, web.FileResponse) and not _static_file_exists(request):
            # aiohttp finds a missing file only while sending, and then sends an empty octet-stream 404
            raise web.HTTPNotFound()
        return response
    except BadRequest as exc:
        return error_response(400, str(exc))
    except Busy as exc:
        request.app[METRICS].shed.labels(exc.reason).inc()
        return error_response(503, str(exc), {hdrs.RETRY_AFTER: str(RETRY_AFTER)})
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = error_response(exc.status, exc.reason if exc.text is None or exc.text.startswith(str(exc.status))
                                  else exc.text)
        for name in (hdrs.ALLOW,):
            if name in exc.headers:
                response.headers[name] = exc.headers[name]
        return response
    except ApiError as exc:
        status = exc.meta.status
        log.warning(json.dumps({"event": "es_error", "path": request.path, "status": status, "error": str(exc)[:300]}))
        if status == 429 or status >= 500:
            return error_response(503, f"elasticsearch unavailable (HTTP {status})")
        return error_response(502, f"elasticsearch refused the query (HTTP {status})")
    except ConnectionTimeout as exc:  # it may well be up, only slow: say what happened
        log.warning(json.dumps({"event": "es_timeout", "path": request.path, "error": str(exc)[:300]}))
        return error_response(504, f"elasticsearch did not answer within {ES_TIMEOUT} s",
                              {hdrs.RETRY_AFTER: str(RETRY_AFTER)})
    except TransportError as exc:
        log.warning(json.dumps({"event": "es_unreachable", "path": request.path, "error": str(exc)[:300]}))
        return error_response(503, "elasticsearch unreachable", {hdrs.RETRY_AFTER: str(RETRY_AFTER)})
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("unhandled error on %s", request.path)
        return error_response(500, "internal error")


def _static_file_exists(request: web.Request) -> bool:
    resource = request.match_info.route.resource
    if isinstance(resource, web.StaticResource):
        return (Path(resource.get_info()["directory"]) / request.match_info["filename"]).is_file()
    return True  # our own FileResponses (the index page) name a file that exists when the app starts


async def es_ctx(app: web.Application) -> AsyncIterator[None]:
    """One Elasticsearch client per app; few retries, so an outage answers 503 quickly instead of hanging."""
    settings = app[SETTINGS]
    client = AsyncElasticsearch(settings.es_hosts, request_timeout=ES_TIMEOUT, max_retries=1, retry_on_timeout=False,
                                connections_per_node=ES_CONNECTIONS, serializer=OrjsonSerializer())
    app[ES] = client
    app[RAW_ES] = raw = AsyncElasticsearch(settings.es_hosts, request_timeout=ES_TIMEOUT, max_retries=1,
                                           retry_on_timeout=False, connections_per_node=ES_CONNECTIONS,
                                           serializers=ogc.RAW_SERIALIZERS)
    log.info(json.dumps({"event": "es_client", "hosts": settings.es_hosts, "index": settings.iot_index}))
    yield
    await client.close()
    await raw.close()


async def alerts_ctx(app: web.Application) -> AsyncIterator[None]:
    """The alerts consumer as a background task, cancelled at shutdown."""
    settings = app[SETTINGS]
    task = asyncio.create_task(alerts.consume(settings.kafka_bootstrap, settings.iot_alerts_topic,
                                              app[ALERTS], app[METRICS]), name="alerts-consumer")
    yield
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass


async def hub_ctx(app: web.Application) -> AsyncIterator[None]:
    """The event streams' fan-out (web.events): its views search through the app's limiter and client."""

    async def fetch(p: Any) -> tuple[int, list[dict[str, Any]]]:
        return await routes.latest_features(app, p, "sse_view")

    settings, metrics = app[SETTINGS], app[METRICS]
    hub = app[HUB] = events.Hub(fetch, app[ALERTS], period=settings.web_sse_refresh,
                                queue_size=settings.web_sse_queue, max_clients=settings.web_sse_max_clients,
                                max_views=settings.web_sse_max_views,
                                counters=events.Counters(metrics), view_features=settings.web_sse_view_features,
                                feature_budget=settings.web_sse_feature_budget, release=release_freed_heap)
    metrics.sse_clients.set_function(lambda: hub.clients)
    metrics.sse_views.set_function(lambda: len(hub.views))
    metrics.sse_features.set_function(lambda: hub.held)
    yield
    await hub.close()


async def close_streams(app: web.Application) -> None:
    """At shutdown, end the event streams at once (else the server would wait for them to time out)."""
    if HUB in app:
        await app[HUB].close()


def init_app(settings: Settings, *, cache_ttl: float = 1.0, consume_alerts: bool = True,
             alerts_maxlen: int | None = None) -> web.Application:
    """The web application for ``settings``; ``cache_ttl=0`` disables the aggregation cache (benchmarks)."""
    app = web.Application(middlewares=[observe, compress, errors])
    app[SETTINGS] = settings
    app[PRESET] = load_preset(settings.iot_schema)
    app[METRICS] = metrics = Metrics()
    app[LIMITER] = limiter = Limiter(settings.web_es_concurrency, settings.web_es_queue, settings.web_queue_timeout)
    metrics.queued.set_function(lambda: limiter.queued)
    metrics.in_flight.set_function(lambda: limiter.in_flight)
    app[CACHE] = TTLCache(cache_ttl)
    app[ALERTS] = alerts.AlertBuffer(alerts_maxlen or settings.web_sse_ring)
    app.cleanup_ctx.append(es_ctx)
    if consume_alerts:
        app.cleanup_ctx.append(alerts_ctx)
    app.cleanup_ctx.append(hub_ctx)
    app.on_shutdown.append(close_streams)
    routes.setup(app)
    fences.setup(app, settings)
    ogc.setup(app)
    add_static_routes(app)
    return app


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "index.html")


def add_static_routes(app: web.Application) -> None:
    """The map's page, its files and the vendored Leaflet (found next to the package, see STATIC_DIR)."""
    r = app.router
    r.add_get("/", index)
    if STATIC_DIR.is_dir():
        r.add_static("/static", STATIC_DIR)
    for prefix, folder in VENDOR.items():
        path = NODE_MODULES / folder
        if path.is_dir():
            r.add_static(prefix, path)
        else:
            log.warning(json.dumps({"event": "vendor_missing", "path": str(path),
                                    "hint": "run `npm ci` at the repository root; the map needs Leaflet"}))
