"""The middlewares of every request: a log line and metrics (``observe``), compression (``compress``) and
every failure as the API's JSON error (``errors``)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import hdrs, web
from aiohttp.web_response import ContentCoding
from elasticsearch import ApiError, ConnectionTimeout, TransportError

from web.compression import MIN_COMPRESS
from web.keys import COMPRESSED, METRICS
from web.limiter import Busy
from web.params import BadRequest
from web.responses import error_response
from web.search import ES_TIMEOUT

log = logging.getLogger("web")

_COMPRESSIBLE = ("application/json", "text/", "application/javascript", "image/svg+xml")
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
        if len(response.body) >= MIN_COMPRESS:
            response.body, reused = request.app[COMPRESSED].compress(response.body, coding)
            request.app[METRICS].compression.labels("reused" if reused else "compressed").inc()
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
