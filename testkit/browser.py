"""What the browser tests launch (Debian's Chromium through Playwright) and when they cannot run."""

from __future__ import annotations

from pathlib import Path

import pytest

from testkit.served_map import ROOT

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def skip_unless_browser() -> None:
    """Skip the calling test module when Chromium or the vendored Leaflet is missing (says which)."""
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (apt-get install -y chromium)", allow_module_level=True)
    if not (ROOT / "node_modules" / "leaflet" / "dist" / "leaflet.js").exists():
        pytest.skip("Leaflet is not installed: run `npm ci` at the repository root", allow_module_level=True)
