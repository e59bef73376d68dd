"""The OGC API's own application state: the bound on concurrent scans and the cursors' signing key."""

from __future__ import annotations

from aiohttp import web

from web.limiter import Limiter
from web.ogc.prefetch import Prefetched

SCANS = web.AppKey("ogc_scans", Limiter)
CURSOR_KEY = web.AppKey("ogc_cursor_key", bytes)
PREFETCH = web.AppKey("ogc_prefetch", Prefetched)
