"""Where the map's files are: the one home of the asset layout, read by the server and by setup.py.

A normal install (``pip install .``, the image) carries them as package data in ``web/bundled/``: setup.py
copies ``static/`` and the vendored npm folders there at build time. An editable install or a source run
has no bundle and serves the checkout's ``static/`` and ``node_modules/``. Standard library only, because
setup.py loads this file before any dependency is installed.
"""

from __future__ import annotations

from pathlib import Path

# URL prefix -> folder inside node_modules: the map's only third-party code, installed by `npm ci`.
VENDOR = {"/vendor/leaflet": "leaflet/dist", "/vendor/leaflet.heat": "leaflet.heat/dist",
          "/vendor/geoman": "@geoman-io/leaflet-geoman-free/dist"}
STATIC = "static"
NODE_MODULES = "node_modules"
# Folder inside the web package that a built wheel carries; it mirrors the checkout (static/, node_modules/).
BUNDLE = "bundled"

PACKAGE_DIR = Path(__file__).resolve().parent
CHECKOUT = PACKAGE_DIR.parent


def asset_root(package_dir: Path = PACKAGE_DIR) -> Path:
    """The bundle when this package was installed from a wheel, else the checkout the package lives in."""
    bundled = package_dir / BUNDLE
    return bundled if (bundled / STATIC / "index.html").is_file() else package_dir.parent
