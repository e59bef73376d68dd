"""JSON responses: the one shape of every answer, errors included (``{"error": message}``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web


def json_response(data: Any, status: int = 200, raw: bytes | None = None,
                  headers: Mapping[str, str] | None = None) -> web.Response:
    """JSON through orjson (fast on large FeatureCollections); ``raw`` is already-serialised JSON."""
    body = raw if raw is not None else orjson.dumps(data)
    return web.Response(body=body, status=status, content_type="application/json", headers=headers)


def error_response(status: int, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    """The API's error body; ``headers`` carries Allow (405) or Retry-After (503)."""
    return json_response({"error": message}, status, headers=headers)
