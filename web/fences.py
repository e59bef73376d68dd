"""The geofence API: the fences the web server mirrors from the fence topic, and their writes.

GET /api/geofences and GET /api/geofences/{id} answer from the server's own mirror of the topic
(:class:`geoiot.fence_topic.FenceFollower`); PUT and DELETE need a bearer token of scope ``fences``
(:mod:`geoiot.tokens`, IOT_TOKENS_FILE), are checked by :mod:`geoiot.fences` before anything is sent, and
answer only once Kafka acknowledged the record (and, normally, once the mirror applied it, so a GET that
follows sees the change). At start the server creates the topic if needed and seeds it from
IOT_GEOFENCES (idempotent); Kafka being away does not stop the server: the mirror keeps retrying and the
writes answer 503 meanwhile.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import hdrs, web

from geoiot import fence_topic, fences
from geoiot.config import Settings
from geoiot.tokens import Denied, Tokens
from web.events import Event
from web.keys import HUB
from web.params import BadRequest, no_params
from web.responses import error_response, json_response

log = logging.getLogger("web")

SCOPE = "fences"
FENCES_EVENT = "fences"  # the /api/events event that tells the map the fences changed
APPLY_WAIT = 5.0  # seconds a write waits for the mirror to show it before answering anyway
RETRY = 5.0  # seconds between two attempts to reach the fence topic
STARTUP_WAIT = 15.0  # seconds the server waits at start for the fences before serving without them


@dataclass
class FenceService:
    """The mirror, the producer for writes and the tokens of one web server."""

    settings: Settings
    tokens: Tokens
    follower: fence_topic.FenceFollower
    producer: Any = None  # an AIOKafkaProducer once connected
    task: asyncio.Task[None] | None = field(default=None, repr=False)
    tried: asyncio.Event = field(default_factory=asyncio.Event, repr=False)  # the first attempt ended

    @property
    def ready(self) -> bool:
        return self.follower.synced and self.producer is not None


SERVICE = web.AppKey("fence_service", FenceService)


def load_tokens(path: str) -> Tokens:
    """The grants of IOT_TOKENS_FILE (none when unset: every write is then refused)."""
    return Tokens.from_file(path) if path else Tokens(())


async def connect(service: FenceService) -> None:
    """Create and seed the topic, read it to its end, start the producer; retried until it works."""
    s = service.settings
    while True:
        try:
            try:
                for problem in await fence_topic.prepare(s):
                    log.warning(json.dumps({"event": "topic_differs", "problem": problem}))
            except fences.FenceError as exc:  # an unusable file: the topic's fences are served as they are
                log.warning(json.dumps({"event": "geofences_unreadable", "path": s.iot_geofences,
                                        "error": str(exc)[:300]}))
            await service.follower.start()
            producer = fence_topic.make_producer(s.kafka_bootstrap)
            await producer.start()
            service.producer = producer
            service.tried.set()
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning(json.dumps({"event": "fences_unavailable", "topic": s.fences_topic,
                                    "error": f"{type(exc).__name__}: {exc}"[:300], "retry_in_s": RETRY}))
            await service.follower.stop()
            service.tried.set()
            await asyncio.sleep(RETRY)


async def fences_ctx(app: web.Application) -> AsyncIterator[None]:
    """The fence service for the app's lifetime, connected in the background. The server starts serving once
    the first attempt ended (at most STARTUP_WAIT): with the fences when Kafka answers, at once when it is away."""
    service = app[SERVICE]
    service.task = asyncio.create_task(connect(service), name="fences-connect")
    try:
        await asyncio.wait_for(service.tried.wait(), STARTUP_WAIT)
    except asyncio.TimeoutError:
        pass
    yield
    service.task.cancel()
    try:
        await service.task
    except (asyncio.CancelledError, Exception):
        pass
    await service.follower.stop()
    if service.producer is not None:
        await service.producer.stop()


def push(app: web.Application, fs: fences.FenceSet, ids: list[str]) -> None:
    """Tell every open event stream that fences changed (``fences`` event: the newest version and the ids), so
    maps fetch /api/geofences now instead of at their next poll."""
    hub = app.get(HUB)
    if hub is None:
        return
    event = Event(FENCES_EVENT, orjson.dumps({"version": fs.version, "ids": ids[:100]}).decode())
    for sub in list(hub.subscribers):
        sub.put(event)


def setup(app: web.Application, settings: Settings) -> None:
    """The fence service (its lifecycle in ``cleanup_ctx``) and the routes."""
    app[SERVICE] = FenceService(settings, load_tokens(settings.iot_tokens_file), fence_topic.FenceFollower(
        settings.kafka_bootstrap, settings.fences_topic, lambda fs, ids: push(app, fs, ids)))
    app.cleanup_ctx.append(fences_ctx)
    r = app.router
    r.add_get("/api/geofences", list_fences)
    r.add_get("/api/geofences/{id}", get_fence)
    r.add_put("/api/geofences/{id}", put_fence)
    r.add_delete("/api/geofences/{id}", delete_fence)


def _id(request: web.Request) -> str:
    try:
        return fences.check_id(request.match_info["id"])
    except fences.FenceError as exc:
        raise BadRequest(str(exc)) from None


async def list_fences(request: web.Request) -> web.Response:
    no_params(request.query)
    follower = request.app[SERVICE].follower
    return json_response({**follower.fences.collection(), "synced": follower.synced})


async def get_fence(request: web.Request) -> web.Response:
    no_params(request.query)
    fid = _id(request)
    fence = request.app[SERVICE].follower.fences.fences.get(fid)
    if fence is None:
        return error_response(404, f"no fence {fid!r}")
    return json_response(fence.as_feature())


def _authorize(request: web.Request) -> web.Response | None:
    granted = request.app[SERVICE].tokens.check(request.headers.get(hdrs.AUTHORIZATION), SCOPE)
    if isinstance(granted, Denied):
        headers = {hdrs.WWW_AUTHENTICATE: 'Bearer realm="geoiot"'} if granted.status == 401 else None
        return error_response(granted.status, granted.message, headers)
    return None


async def _body(request: web.Request) -> Any:
    limit = fences.MAX_BODY_BYTES
    too_big = (f"the fence is larger than {limit} bytes (a fence has at most {fences.MAX_VERTICES} vertices; "
               "send one fence per request)")
    if request.content_length is not None and request.content_length > limit:
        raise BadRequest(too_big)
    body = bytearray()
    async for chunk in request.content.iter_chunked(1 << 16):
        body += chunk
        if len(body) > limit:
            raise BadRequest(too_big)
    try:
        return orjson.loads(bytes(body))
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the body is not JSON: {exc}") from None


async def _write(request: web.Request, fid: str, value: bytes | None) -> tuple[int, int] | web.Response:
    """(version, time of change) once Kafka acknowledged the record; a 503 answer when it could not be sent."""
    service = request.app[SERVICE]
    unavailable = error_response(503, f"the fence topic {service.settings.fences_topic!r} is not reachable; "
                                 "retry later", {hdrs.RETRY_AFTER: str(int(RETRY))})
    if not service.ready:
        return unavailable
    try:
        version, updated = await fence_topic.write(service.producer, service.settings.fences_topic,
                                                   fid.encode(), value)
    except Exception as exc:  # Kafka refused or timed out: the change may not be stored, say so
        log.warning(json.dumps({"event": "fence_write_failed", "id": fid, "error": f"{type(exc).__name__}: {exc}"}))
        return unavailable
    await service.follower.wait_for(version, APPLY_WAIT)
    log.info(json.dumps({"event": "fence_deleted" if value is None else "fence_put", "id": fid, "version": version}))
    return version, updated


def _refused(request: web.Request) -> web.Response | None:
    """The answer that refuses a write before its id and body are read: query parameters, a missing or wrong token."""
    no_params(request.query)
    return _authorize(request)


async def put_fence(request: web.Request) -> web.Response:
    denied = _refused(request)
    if denied is not None:
        return denied
    fid = _id(request)
    try:
        feature = fences.check_feature(fid, await _body(request))
    except fences.FenceError as exc:
        raise BadRequest(str(exc)) from None
    _, value = fences.encode(feature)
    written = await _write(request, fid, value)
    if isinstance(written, web.Response):
        return written
    return json_response(fences.Fence(feature, *written).as_feature())


async def delete_fence(request: web.Request) -> web.Response:
    denied = _refused(request)
    if denied is not None:
        return denied
    fid = _id(request)
    if fid not in request.app[SERVICE].follower.fences.fences:
        return error_response(404, f"no fence {fid!r}")
    written = await _write(request, fid, None)
    if isinstance(written, web.Response):
        return written
    version, updated = written
    return json_response({"id": fid, "deleted": True, "version": version, "updated": updated})
