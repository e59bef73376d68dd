"""Replay a file into a topic from Python and get the summary dict, for tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from replay.runner import Replay, ReplayOptions


async def replay_file(path: str | Path, topic: str, **kwargs: Any) -> dict[str, Any]:
    """Replay a file into ``topic`` and return the summary dict."""
    return await Replay(ReplayOptions(path=path, topic=topic, **kwargs)).run()
