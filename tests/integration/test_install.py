"""A normal install serves the map: ``pip install .`` (not -e) into a fresh venv, then ``python -m web``.

The build step (setup.py) bundles static/ and the vendored Leaflet files into the wheel; without it the
installed server would find no map, because nothing next to site-packages holds static/ or node_modules/.
The venv is fresh; pip's wheel cache makes a second run take seconds instead of minutes.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from testkit.served_map import assert_map_served, wait_until_200
from testkit.processes import free_port

ROOT = Path(__file__).resolve().parents[2]
# What a source distribution holds (MANIFEST.in, pyproject.toml): the build gets nothing else.
SOURCES = ["pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "package.json", "package-lock.json",
           "geoiot", "agents", "replay", "web", "ingest", "static"]

pytestmark = [pytest.mark.slow, pytest.mark.integration]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the project installed from a copy of the sources (the checkout stays clean)."""
    if not (ROOT / "node_modules" / "leaflet" / "dist").is_dir():
        pytest.skip("node_modules missing: run `npm ci` (make test does)")
    base = tmp_path_factory.mktemp("install")
    src = base / "src"
    src.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "bundled"))
        else:
            shutil.copy2(ROOT / name, src / name)
    (src / "node_modules").symlink_to((ROOT / "node_modules").resolve())  # what `npm ci` made, as in CI
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    result = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", str(src)],
                            env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    shutil.rmtree(src)  # the installed server must not depend on the sources it was built from
    return venv


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(extra)
    return env


def test_installed_package_finds_its_bundled_assets(installed: Path) -> None:
    out = subprocess.run([str(installed / "bin" / "python"), "-c",
                          "import web.app as a; print(a.STATIC_DIR); print(a.NODE_MODULES)"],
                         cwd=installed, env=clean_env(), capture_output=True, text=True, check=True).stdout.split()
    bundle = str(next((installed / "lib").glob("python3*/site-packages")) / "web" / "bundled")
    assert all(path.startswith(bundle + "/") for path in out), out
    site = next((installed / "lib").glob("python3*/site-packages"))
    assert not (site / "testkit").exists() and not (site / "tests").exists()  # test support is not shipped


def test_python_m_web_from_a_normal_install_serves_the_map(installed: Path, stack, tmp_path: Path) -> None:
    port = free_port()
    env = clean_env(WEB_HOST="127.0.0.1", WEB_PORT=str(port), ES_URL=stack.es_url,
                    KAFKA_BOOTSTRAP=stack.kafka_bootstrap)
    log = (tmp_path / "web.log").open("w")
    proc = subprocess.Popen([str(installed / "bin" / "python"), "-m", "web"], cwd=tmp_path, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until_200(base + "/", timeout=60, alive=lambda: proc.poll() is None)
        served = assert_map_served(base)
        assert {"/vendor/leaflet/leaflet.js", "/vendor/leaflet.heat/leaflet-heat.js"} <= set(served)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()
    assert "vendor_missing" not in (tmp_path / "web.log").read_text()
