"""The typed keys of the application's shared state, in a module of their own so that ``web.app`` (which
fills them) and the handlers (which read them) both import them and never each other."""

from __future__ import annotations

from aiohttp import web

from geoiot.config import Settings
from geoiot.schema import Preset
from web.alerts import AlertBuffer
from web.cache import TTLCache
from web.compression import CompressedBodies
from web.events import Hub
from web.live.mirror import Mirror
from web.metrics import Metrics
from web.search import Search

SETTINGS = web.AppKey("settings", Settings)
PRESET = web.AppKey("preset", Preset)
# every search of Elasticsearch goes through it (web.search)
SEARCH = web.AppKey("search", Search)
METRICS = web.AppKey("metrics", Metrics)
CACHE = web.AppKey("cache", TTLCache)
COMPRESSED = web.AppKey("compressed", CompressedBodies)
ALERTS = web.AppKey("alerts", AlertBuffer)
HUB = web.AppKey("hub", Hub)
# each track's newest document, mirrored from the live topic (web.live)
LIVE = web.AppKey("live", Mirror)
