"""The HTTP server around the application: timeouts on reading requests, and JSON for the errors that
aiohttp's HTTP parser answers before any middleware runs (an over-long request line or header, a method
it cannot parse), so every answer of the server, whatever went wrong, is ``{"error": ...}``.

The timeouts are aiohttp's public runner options. The parser's errors are not: aiohttp answers them
without the app's middlewares or signals (aio-libs/aiohttp#3287 and #6463), so a subclass of its request
handler writes them; tests/test_web_unit.py shows the public API answering them as text/plain. ``run``
replaces ``run_app``, whose runner cannot take that handler, with the same shutdown on SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from geoiot.config import Settings
from web.responses import error_response

log = logging.getLogger("web")


class JsonErrorRequestHandler(RequestHandler):
    """aiohttp's connection handler, with its error answers as JSON instead of text/plain or HTML."""

    def handle_error(self, request: BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if status >= 500:
            super().handle_error(request, status, exc, message)  # logs the traceback; raises if a response began
        elif request.writer.output_size > 0:
            raise ConnectionError("response is sent already, cannot send another with the error")
        reason = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "error"
        # the parser's message quotes up to 100 bytes of the offending input: keep the kind, not the bytes
        detail = (message or "").split(":", 1)[0].strip() if status < 500 else ""
        if status < 500:  # a bad client, not a bug: one line, no traceback
            log.info(json.dumps({"event": "http_unparsable", "status": status, "error": detail}))
        response = error_response(status, f"{reason}: {detail}" if detail else reason)
        response.force_close()
        return response


class JsonErrorServer(web.Server):
    def __call__(self) -> RequestHandler:
        return JsonErrorRequestHandler(self, loop=self._loop, **self._kwargs)


class JsonErrorAppRunner(web.AppRunner):
    """An AppRunner whose connections are handled by :class:`JsonErrorRequestHandler`."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        return JsonErrorServer(server.request_handler, request_factory=server.request_factory,
                               handler_cancellation=server.handler_cancellation, loop=server._loop,
                               **server._kwargs)


def handler_options(settings: Settings) -> dict[str, Any]:
    """Per-connection limits: a connection without a complete request head within WEB_HEADER_TIMEOUT is
    closed (aiohttp's keep-alive timer also runs from the connection's start), and a request body nobody
    reads is drained for at most WEB_BODY_TIMEOUT before the connection is closed."""
    return {"keepalive_timeout": settings.web_header_timeout, "lingering_time": settings.web_body_timeout}


async def run(app: web.Application, settings: Settings, *, reuse_port: bool = False,
              started: asyncio.Event | None = None) -> None:
    """Serve ``app`` on WEB_HOST:WEB_PORT until SIGTERM or SIGINT, then shut down as ``run_app`` does."""
    runner = JsonErrorAppRunner(app, access_log=None, handle_signals=False, **handler_options(settings))
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        site = web.TCPSite(runner, settings.web_host, settings.web_port, reuse_port=reuse_port or None)
        await site.start()
        if started is not None:
            started.set()
        await stop.wait()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        await runner.cleanup()
