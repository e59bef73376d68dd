"""The gateway's HTTP side: ``POST /v1/positions`` (the preset's own names), the OsmAnd protocol on ``/``,
``/healthz`` (liveness), ``/readyz`` (readiness) and ``/metrics``.

A request is answered only once Kafka acknowledged every position it accepted. Memory is bounded by an
in-flight byte budget: a request's declared size (or the body limit when it declares none) is reserved
before its body is read and released after its answer, and a request that does not fit is shed with 503
and ``Retry-After``; so is any request while Kafka has not acknowledged a batch for ``ack_timeout``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import orjson
from aiohttp import web

from geoiot.convert import FastConverter, message
from geoiot.logs import QuietLog
from geoiot.schema import Preset
from geoiot.timeparse import EventTimeBounds
from geoiot.tokens import Denied, Grant, Tokens
from ingest import osmand
from ingest.metrics import Metrics
from ingest.parse import BadEncoding, Reject, TooLarge, convert, decompress, outside_prefix, split_body
from ingest.producer import AckingProducer, TooLargeForKafka

log = logging.getLogger("ingest")

SCOPE = "ingest"
OPEN = Grant(scope=SCOPE)  # every track, for a gateway told to run without tokens
RETRY_BUSY_S = 1
RETRY_KAFKA_S = 5


@dataclass(frozen=True)
class Limits:
    max_body: int = 4 * 1024 * 1024  # bytes, after decompression too
    in_flight_bytes: int = 64 * 1024 * 1024
    ack_timeout: float = 10.0
    body_timeout: float = 10.0


class Budget:
    """Bytes reserved by requests in flight; never more than ``limit``."""

    def __init__(self, limit: int, gauge: Any) -> None:
        self.limit, self.used, self.gauge = limit, 0, gauge

    def take(self, size: int) -> bool:
        if self.used + size > self.limit:
            return False
        self.used += size
        self.gauge.set(self.used)
        return True

    def give(self, size: int) -> None:
        self.used -= size
        self.gauge.set(self.used)


class Shed(Exception):
    """Answer 503 with Retry-After."""

    def __init__(self, reason: str, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.reason, self.message, self.retry_after = reason, message, retry_after


def json_response(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json", headers=headers)


class Gateway:
    """Turns device messages into acknowledged Kafka records; shared by the HTTP routes and the MQTT loop."""

    def __init__(self, preset: Preset, bounds: EventTimeBounds | None, producer: AckingProducer,
                 tokens: Tokens | None, limits: Limits, metrics: Metrics) -> None:
        self.preset, self.producer, self.tokens, self.limits, self.metrics = preset, producer, tokens, limits, metrics
        self.converter = FastConverter(preset, bounds=bounds)
        self.osmand_preset = osmand.preset()
        self.osmand_converter = FastConverter(self.osmand_preset, bounds=bounds)
        self.budget = Budget(limits.in_flight_bytes, metrics.in_flight)
        self.quiet = QuietLog(log, 10.0)

    # --- the shared core: records to Kafka, acknowledged --------------------------------------

    def kafka_problem(self) -> str | None:
        stalled = self.producer.stalled_for()
        if stalled > self.limits.ack_timeout:
            return f"Kafka has acknowledged nothing for {stalled:.0f}s"
        return None

    async def produce(self, records: list[dict[str, Any]], source: str) -> None:
        """Queue the records and wait until Kafka acknowledged all of them; Shed when it did not in time."""
        started = time.monotonic()
        messages = [message(self.preset, record) for record in records]
        limit = self.producer.max_message
        if any(len(k) + len(v) > limit for k, v in messages):  # before any is queued: all or nothing
            raise TooLargeForKafka(f"a position is over {limit} bytes as a Kafka message")
        futures = {self.producer.append(key, value) for key, value in messages}
        # (asyncio.timeout and a shield, not asyncio.wait/wait_for: no task per request; the batch's future
        # is shared with other requests and must not be cancelled by this one's timeout)
        pending: set[asyncio.Future] = set()
        try:
            async with asyncio.timeout(self.limits.ack_timeout):
                for future in futures:
                    if not future.done():
                        await asyncio.shield(future)
        except asyncio.TimeoutError:
            pending = {f for f in futures if not f.done()}
        except Exception:  # noqa: BLE001 - a failed batch: named below
            pass
        failed = [f for f in futures if f.done() and (f.cancelled() or f.exception() is not None)]
        if pending or failed:
            why = f"Kafka did not acknowledge within {self.limits.ack_timeout:g}s" if pending else \
                f"Kafka refused the batch: {'cancelled' if failed[0].cancelled() else failed[0].exception()}"
            self.quiet.warning("unacknowledged", "%s; answering 503", why)
            raise Shed("kafka", why + "; nothing of this request is acknowledged, send it again", RETRY_KAFKA_S)
        self.metrics.produce.labels(source).observe(time.monotonic() - started)
        self.metrics.accepted.labels(source).inc(len(records))

    def count_rejects(self, rejects: list[Reject], source: str) -> None:
        for reject in rejects:
            self.metrics.rejected.labels(source, reject.kind).inc()

    # --- HTTP ------------------------------------------------------------------------------------

    def authorize(self, request: web.Request, allow_query_token: bool = False) -> Grant:
        if self.tokens is None:
            return OPEN
        header = request.headers.get("Authorization")
        if header is None and allow_query_token and "token" in request.query:
            header = f"Bearer {request.query['token']}"
        result = self.tokens.check(header, SCOPE)
        if isinstance(result, Denied):
            raise _denied(result)
        return result

    async def read_body(self, request: web.Request) -> bytes:
        """The decompressed body, within the size and time limits (413, 408, 415)."""
        limit = self.limits.max_body
        if request.content_length is not None and request.content_length > limit:
            raise _error(413, f"the body is over {limit} bytes")
        try:
            async with asyncio.timeout(self.limits.body_timeout):  # no task per request, as wait_for makes
                raw = await request.read()
        except asyncio.TimeoutError:
            raise _error(408, f"the body did not arrive within {self.limits.body_timeout:g}s") from None
        except web.HTTPRequestEntityTooLarge:
            raise _error(413, f"the body is over {limit} bytes") from None
        try:
            return decompress(raw, request.headers.get("Content-Encoding", ""), limit)
        except TooLarge as exc:
            raise _error(413, str(exc)) from None
        except BadEncoding as exc:
            raise _error(400, str(exc)) from None

    async def admitted(self, request: web.Request, handle: Callable[[], Awaitable[web.Response]]) -> web.Response:
        """Run ``handle`` inside the in-flight budget, or shed the request."""
        problem = self.kafka_problem()
        if problem is not None:
            raise Shed("kafka", f"{problem}; try again later", RETRY_KAFKA_S)
        size = request.content_length if request.content_length is not None else self.limits.max_body
        size = max(min(size, self.limits.max_body), 1)
        if not self.budget.take(size):
            raise Shed("budget", "the gateway's in-flight budget is full; try again shortly", RETRY_BUSY_S)
        try:
            return await handle()
        finally:
            self.budget.give(size)

    async def positions(self, request: web.Request) -> web.Response:
        grant = self.authorize(request)

        async def handle() -> web.Response:
            body = await self.read_body(request)
            records: list[dict[str, Any]] = []
            rejects: list[Reject] = []
            for row, value in split_body(body):
                out = convert(self.converter, row, value)
                if isinstance(out, Reject):
                    rejects.append(out)
                    continue
                if grant.track_prefix:
                    why = outside_prefix(self.preset, out, grant.track_prefix)
                    if why is not None:
                        self.metrics.rejected.labels("http", "track_prefix").inc()
                        return json_response(403, {"error": f"row {row}: {why}"})
                records.append(out)
            return await self.answer(records, rejects, "http", 202)

        return await self.admitted(request, handle)

    async def answer(self, records: list[dict[str, Any]], rejects: list[Reject], source: str,
                     ok: int) -> web.Response:
        self.count_rejects(rejects, source)
        listed = [r.as_json() for r in rejects]
        if not records:
            message_ = "no position accepted" if rejects else "the body holds no position"
            return json_response(400, {"error": message_, "accepted": 0, "rejected": len(rejects),
                                       "rejects": listed})
        try:
            await self.produce(records, source)
        except TooLargeForKafka as exc:
            return json_response(413, {"error": str(exc)})
        if rejects:
            self.quiet.log(logging.INFO, f"rejects-{source}", json.dumps(
                {"event": "rejected", "source": source, "count": len(rejects), "first": listed[0]}))
        return json_response(ok, {"accepted": len(records), "rejected": len(rejects), "rejects": listed})

    async def osmand(self, request: web.Request) -> web.Response:
        """The OsmAnd protocol: parameters in the query or a form, or Traccar Client's JSON body."""
        grant = self.authorize(request, allow_query_token=True)

        async def handle() -> web.Response:
            params = dict(request.query)
            body = await self.read_body(request) if request.method == "POST" else b""
            if body.strip():
                if body.lstrip()[:1] == b"{":
                    try:
                        record = osmand.from_traccar_json(orjson.loads(body))
                    except orjson.JSONDecodeError as exc:
                        return await self.answer([], [Reject(0, f"not valid JSON: {exc}", "json")], "osmand", 200)
                    return await self._osmand_record(record, grant)
                params.update(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
            return await self._osmand_record(osmand.from_params(params), grant)

        return await self.admitted(request, handle)

    async def _osmand_record(self, record: dict[str, Any], grant: Grant) -> web.Response:
        out = convert(self.osmand_converter, 0, record)
        if isinstance(out, Reject):
            return await self.answer([], [out], "osmand", 200)
        out = osmand.project(out, self.osmand_preset, self.preset)
        if grant.track_prefix and (why := outside_prefix(self.preset, out, grant.track_prefix)) is not None:
            self.metrics.rejected.labels("osmand", "track_prefix").inc()
            return json_response(403, {"error": why})
        return await self.answer([out], [], "osmand", 200)

    async def healthz(self, request: web.Request) -> web.Response:
        """Liveness: 200 while the gateway serves, also during a Kafka outage (it answers 503 with
        Retry-After meanwhile and resumes by itself: a restart would not bring Kafka back, and restarting
        every gateway at once would only drop their MQTT connections); ``status`` says what is wrong."""
        return json_response(200, self._health())

    async def readyz(self, request: web.Request) -> web.Response:
        """Readiness: 503 while Kafka acknowledges nothing (for load balancers and deployments)."""
        body = self._health()
        return json_response(200 if body["status"] == "ok" else 503, body)

    def _health(self) -> dict[str, Any]:
        problem = self.kafka_problem()
        return {"status": "ok" if problem is None else "degraded", "kafka": problem or "ok",
                "in_flight_bytes": self.budget.used, "acked": self.producer.acked}

    async def metrics_page(self, request: web.Request) -> web.Response:
        body, content_type = self.metrics.render()
        return web.Response(body=body, content_type=content_type)


def _error(status: int, message_: str) -> web.HTTPException:
    cls = {400: web.HTTPBadRequest, 408: web.HTTPRequestTimeout, 413: web.HTTPRequestEntityTooLarge}[status]
    if status == 413:
        return cls(max_size=0, actual_size=0, text=json.dumps({"error": message_}), content_type="application/json")
    return cls(text=json.dumps({"error": message_}), content_type="application/json")


def _denied(denied: Denied) -> web.HTTPException:
    body = json.dumps({"error": denied.message})
    if denied.status == 401:
        return web.HTTPUnauthorized(text=body, content_type="application/json",
                                    headers={"WWW-Authenticate": 'Bearer realm="ingest"'})
    return web.HTTPForbidden(text=body, content_type="application/json")


def make_app(gateway: Gateway) -> web.Application:
    metrics = gateway.metrics

    @web.middleware
    async def outcome(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]):
        route = request.match_info.route.resource.canonical if request.match_info.route.resource else "other"
        try:
            response = await handler(request)
        except Shed as shed:
            metrics.shed.labels(shed.reason).inc()
            response = json_response(503, {"error": shed.message}, {"Retry-After": str(shed.retry_after)})
        except web.HTTPException as exc:
            extra = {k: v for k, v in exc.headers.items() if k.lower() not in ("content-type", "content-length")}
            if exc.content_type == "application/json" and exc.text:
                response = web.Response(status=exc.status, text=exc.text, content_type="application/json",
                                        headers=extra)
            else:
                response = json_response(exc.status, {"error": exc.reason}, extra)
        metrics.requests.labels(route, str(response.status)).inc()
        return response

    app = web.Application(client_max_size=gateway.limits.max_body, middlewares=[outcome])
    app.router.add_post("/v1/positions", gateway.positions)
    app.router.add_route("GET", "/", gateway.osmand)
    app.router.add_route("POST", "/", gateway.osmand)
    app.router.add_get("/healthz", gateway.healthz)
    app.router.add_get("/readyz", gateway.readyz)
    app.router.add_get("/metrics", gateway.metrics_page)
    return app
