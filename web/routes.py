"""The JSON API's routes: each path and its handler in web.views (the map's page and files are web.app's: it
knows where they are)."""

from __future__ import annotations

from aiohttp import web

from web import views


def setup(app: web.Application) -> None:
    """Add the API's routes to ``app``."""
    r = app.router
    r.add_get("/api/extent", views.extent)
    r.add_get("/api/aggregate", views.aggregate)
    r.add_get("/api/observations", views.observations)
    r.add_get("/api/latest", views.latest)
    r.add_get("/api/events", views.events)
    r.add_get("/api/tracks/{id}", views.track)
    r.add_get("/api/alerts", views.recent_alerts)
    r.add_get("/api/config", views.map_config)
    r.add_get("/api/openapi.json", views.openapi_json)
    r.add_get("/healthz", views.healthz)
    r.add_get("/metrics", views.metrics)
