"""Checks that a running web server serves the map page with every file it references or imports, byte for byte.

Shared by the install test and the image test: both run a server that is not the checkout's (a wheel in a
fresh venv, a container) and must serve the same files as the checkout's static/ and node_modules/.
Also runs the checkout's own server for the browser tests (``web_server``).
"""

from __future__ import annotations

import contextlib
import posixpath
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from testkit.processes import free_port, stop
from web import assets

ROOT = Path(__file__).resolve().parents[1]


def get(url: str, timeout: float = 10) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_until_200(url: str, timeout: float, alive=lambda: True) -> None:
    """Poll ``url`` until it answers 200; ``alive`` says whether the process behind it still runs."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        if not alive():
            raise AssertionError(f"the server behind {url} exited (last answer {last!r})")
        try:
            status, body = get(url, timeout=5)
            if status == 200:
                return
            last = (status, body[:200])
        except OSError as exc:
            last = exc
        time.sleep(0.5)
    raise AssertionError(f"{url} did not answer 200 within {timeout}s (last {last!r})")


def checkout_file(url_path: str) -> Path:
    """The checkout's file behind a URL path the page references (/static/... or /vendor/...)."""
    if url_path.startswith("/static/"):
        return ROOT / assets.STATIC / url_path.removeprefix("/static/")
    for prefix, folder in assets.VENDOR.items():
        if url_path.startswith(prefix + "/"):
            return ROOT / assets.NODE_MODULES / folder / url_path.removeprefix(prefix + "/")
    raise AssertionError(f"the page references {url_path}, which is neither /static/ nor a vendored prefix")


# The module specifiers of static imports and re-exports (the map's ES modules name their files relatively).
IMPORTS = re.compile(rb'(?:^|[;\s])(?:import|export)\s(?:[^;"\']*?\sfrom\s*)?"([^"]+)"', re.M)
JAVASCRIPT = ("text/javascript", "application/javascript")


def module_imports(url_path: str, body: bytes) -> list[str]:
    """The URL paths a module at ``url_path`` imports (relative specifiers resolved against it)."""
    base = posixpath.dirname(url_path)
    return [posixpath.normpath(posixpath.join(base, spec.decode())) for spec in IMPORTS.findall(body)]


def assert_map_served(base_url: str) -> list[str]:
    """GET / and every local script and stylesheet it names, and every module those scripts import: each must
    equal the checkout's file (modules served as JavaScript, as browsers require); then every other file of the
    checkout's static/ too, so nothing of the map is left out."""
    status, page = get(base_url + "/")
    assert status == 200, f"GET / answered {status}: {page[:300]!r}"
    assert page == (ROOT / assets.STATIC / "index.html").read_bytes()
    refs = re.findall(rb'(?:src|href)="(/[^"]+)"', page)
    paths = [ref.decode() for ref in refs]
    assert any(p.startswith(prefix + "/") for p in paths for prefix in assets.VENDOR), paths
    modules = [ref.decode() for ref in re.findall(rb'<script type="module" src="(/[^"]+)"', page)]
    assert modules, "the page loads no module"
    queue, seen = list(paths), set()
    while queue:
        path = queue.pop(0)
        if path in seen:
            continue
        seen.add(path)
        with urllib.request.urlopen(base_url + path, timeout=10) as response:
            body, ctype = response.read(), response.headers.get_content_type()
        assert body == checkout_file(path).read_bytes(), f"{path} differs from the checkout's file"
        if path in modules or path.endswith(".js") and path.startswith("/static/"):
            assert ctype in JAVASCRIPT, f"{path} is served as {ctype}, which a browser refuses for a module"
            imported = module_imports(path, body)
            assert all(p.startswith("/static/") for p in imported), f"{path} imports from outside /static/"
            modules.extend(imported)
            queue.extend(imported)
    static = ROOT / assets.STATIC
    for file in sorted(f for f in static.rglob("*") if f.is_file()):
        path = "/static/" + file.relative_to(static).as_posix()
        if path not in seen:
            status, body = get(base_url + path)
            assert status == 200 and body == file.read_bytes(), f"{path}: {status}, not the checkout's file"
            seen.add(path)
    return sorted(seen)


@contextlib.contextmanager
def web_server(python_env: dict[str, str], env: dict[str, str], log_path: Path,
               timeout: float = 20) -> Iterator[str]:
    """``python -m web`` of this checkout with ``env`` on a free loopback port, until healthy; yields its URL
    and stops it afterwards (its output goes to ``log_path``)."""
    port = free_port()
    full = dict(python_env, WEB_PORT=str(port), WEB_HOST="127.0.0.1", MAP_TILE_URL="", **env)
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "web"], cwd=ROOT, env=full, stdout=log,
                                stderr=subprocess.STDOUT)
        try:
            wait_until_200(url + "/healthz", timeout, alive=lambda: proc.poll() is None)
            yield url
        finally:
            stop(proc, 10)
