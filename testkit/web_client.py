"""The web app in-process over a test index, one way for every test that asks its API through aiohttp's client."""

from __future__ import annotations

import dataclasses
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from geoiot.config import Settings
from web.app import init_app


@dataclasses.dataclass
class Loaded:
    """Documents written to the index that ``settings.iot_index`` names: what the answers are checked against."""

    docs: list[dict[str, Any]]
    settings: Settings


def web_client(settings: Settings, **kwargs: Any) -> TestClient:
    """A client of the app on ``settings`` (use as ``async with``); the alerts consumer is off unless asked for."""
    kwargs.setdefault("consume_alerts", False)
    return TestClient(TestServer(init_app(settings, **kwargs)))
