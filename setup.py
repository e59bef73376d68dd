"""Build step of a normal install: the web package carries the map and its vendored Leaflet files.

``pip install .`` (and the image) copy ``static/`` and the npm folders of ``web.assets.VENDOR`` into
``web/bundled/`` of the wheel, so ``python -m web`` serves the map from any directory. ``node_modules/`` is
taken from the checkout, or made with ``npm ci`` when it is missing. Editable installs copy nothing: they
serve the checkout's files. Everything else about the project is in pyproject.toml.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent


def load_assets():
    """web/assets.py on its own (importing the web package would need its dependencies)."""
    spec = importlib.util.spec_from_file_location("_geoiot_web_assets", HERE / "web" / "assets.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def ensure_node_modules(assets, node_modules: Path) -> None:
    missing = [folder for folder in assets.VENDOR.values() if not (node_modules / folder).is_dir()]
    if not missing:
        return
    npm = shutil.which("npm")
    if npm is None:
        raise SystemExit(f"geoiot build: {node_modules} lacks {', '.join(missing)} and npm is not installed; "
                         "install npm (or run `npm ci` in the checkout) before `pip install .`")
    subprocess.run([npm, "ci", "--omit=dev", "--no-audit", "--no-fund", "--loglevel=error"], cwd=HERE, check=True)


class build_py_with_map(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        assets = load_assets()
        node_modules = HERE / assets.NODE_MODULES
        ensure_node_modules(assets, node_modules)
        bundle = Path(self.build_lib) / "web" / assets.BUNDLE
        shutil.rmtree(bundle, ignore_errors=True)
        shutil.copytree(HERE / assets.STATIC, bundle / assets.STATIC)
        for folder in assets.VENDOR.values():
            shutil.copytree(node_modules / folder, bundle / assets.NODE_MODULES / folder)
            package = folder.split("/")[0]
            for licence in (node_modules / package).glob("LICENSE*"):  # the vendored code's own licence
                shutil.copy2(licence, bundle / assets.NODE_MODULES / package / licence.name)


setup(cmdclass={"build_py": build_py_with_map})
