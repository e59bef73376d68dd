"""The container image, built here and run against the local stack: the deployment a user gets.

``infra/image/build-local`` starts dockerd when needed, makes the base images from Debian packages (no
registry is reachable here) and builds the image. Then, from the image and with ``--network host`` against
the running Kafka and Elasticsearch: topic set-up, one Faust worker, a timestamp replay of a generated file
and the web server. Both /healthz answer 200, the map page and its vendored Leaflet files load, every
replayed event is in Elasticsearch exactly once, the processes run as the image's non-root user, and
``docker stop`` (SIGTERM, 10 s grace) ends each one without a SIGKILL.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import ROOT, unique_name
from testkit.served_map import assert_map_served, get, wait_until_200
from testkit.processes import free_port

BUILD = ROOT / "infra" / "image" / "build-local"
IMAGE_USER = "10001"  # the Dockerfile's USER
STOP_GRACE_S = 10     # docker stop's default grace, and Marathon's taskKillGracePeriodSeconds in our apps
SIGKILLED = 137

pytestmark = [pytest.mark.image, pytest.mark.slow, pytest.mark.integration]


def docker(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture(scope="module")
def image(output_dir: Path) -> str:
    if os.geteuid() != 0 and shutil.which("docker") is None:
        pytest.skip("needs docker (or root, so infra/image/build-local can install docker.io)")
    log = output_dir / "image-build.log"
    with log.open("w") as out:
        result = subprocess.run([str(BUILD)], stdout=subprocess.PIPE, stderr=out, text=True, timeout=1800)
    assert result.returncode == 0, f"infra/image/build-local failed; see {log}:\n{log.read_text()[-3000:]}"
    return result.stdout.strip().splitlines()[-1]


class Containers:
    """Containers of one test, removed afterwards; their logs are kept in test-output/."""

    def __init__(self, image: str, env: dict[str, str], output_dir: Path) -> None:
        self.image, self.env, self.output_dir, self.names = image, env, output_dir, []

    def args(self, extra_env: dict[str, str], volumes: list[str]) -> list[str]:
        out = ["--network", "host"]
        for key, value in {**self.env, **extra_env}.items():
            out += ["-e", f"{key}={value}"]
        for volume in volumes:
            out += ["-v", volume]
        return out

    def run(self, *cmd: str, extra_env: dict[str, str] | None = None, volumes: list[str] = (),
            timeout: float = 300) -> subprocess.CompletedProcess:
        return docker("run", "--rm", *self.args(extra_env or {}, list(volumes)), self.image, *cmd, timeout=timeout)

    def start(self, name: str, *cmd: str, extra_env: dict[str, str] | None = None) -> str:
        name = unique_name(f"geoiot-test-{name}")
        self.names.append(name)
        docker("run", "-d", "--name", name, *self.args(extra_env or {}, []), self.image, *cmd)
        return name

    def running(self, name: str) -> bool:
        return docker("inspect", "-f", "{{.State.Running}}", name, check=False).stdout.strip() == "true"

    def stop(self, name: str) -> int:
        """``docker stop``: SIGTERM, then SIGKILL after the grace period; the container's exit code."""
        docker("stop", "-t", str(STOP_GRACE_S), name, timeout=STOP_GRACE_S + 60)
        return int(docker("inspect", "-f", "{{.State.ExitCode}}", name).stdout.strip())

    def remove_all(self) -> None:
        for name in self.names:
            logs = docker("logs", name, check=False)
            (self.output_dir / f"{name}.log").write_text(logs.stdout + logs.stderr)
            docker("rm", "-f", name, check=False)


@pytest.fixture
def containers(image: str, stack, output_dir: Path, new_index) -> Iterator[Containers]:
    topic = new_index("image")
    env = {"KAFKA_BOOTSTRAP": stack.kafka_bootstrap, "ES_URL": stack.es_url, "IOT_APP_ID": unique_name("image-app"),
           "IOT_TOPIC": topic, "IOT_DLQ_TOPIC": f"{topic}-dlq", "IOT_ALERTS_TOPIC": f"{topic}-alerts",
           "IOT_INDEX": topic}  # new_index deletes the index, its alias and template afterwards
    box = Containers(image, env, output_dir)
    yield box
    box.remove_all()


def generated_file(tmp_path: Path, tracks: int, points: int) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    path = folder / "tracks.csv"
    subprocess.run([sys.executable, "-m", "replay", "generate", "--tracks", str(tracks), "--points", str(points),
                    "--seed", "15", "--jfk-share", "0.5", "--out", str(path)], cwd=ROOT, check=True,
                   capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    folder.chmod(0o755)
    path.chmod(0o644)
    return path


async def indexed(es, index: str, want: int, timeout: float = 120) -> int:
    import asyncio

    deadline = time.monotonic() + timeout
    count = -1
    while time.monotonic() < deadline:
        if await es.indices.exists(index=index):
            await es.indices.refresh(index=index)
            count = (await es.count(index=index))["count"]
            if count >= want:
                break
        await asyncio.sleep(1)
    return count


async def test_image_runs_the_pipeline_against_the_local_stack(containers: Containers, es, tmp_path: Path) -> None:
    index = containers.env["IOT_INDEX"]
    # 1. topic set-up, as the Marathon topics app does
    containers.run("python", "-m", "geoiot.topics", "--wait", "60")
    # 2. one worker and the web server
    worker_port, web_port = free_port(), free_port()
    worker = containers.start("worker", "faust", "-A", "agents.app", "worker", "-l", "info",
                              "--web-port", str(worker_port))
    web = containers.start("web", "python", "-m", "web", extra_env={"WEB_PORT": str(web_port),
                                                                   "WEB_HOST": "127.0.0.1"})
    wait_until_200(f"http://127.0.0.1:{worker_port}/healthz", 180, alive=lambda: containers.running(worker))
    wait_until_200(f"http://127.0.0.1:{web_port}/healthz", 120, alive=lambda: containers.running(web))
    # 3. a timestamp replay of a generated file, read from a read-only mount
    path = generated_file(tmp_path, tracks=12, points=25)
    rows = len(path.read_text().splitlines())
    result = containers.run("python", "-m", "replay", "timestamp", "/data/tracks.csv", "--interval-ms", "5",
                            "--json-summary", "-q", volumes=[f"{path.parent}:/data:ro"])
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["sent"] == rows and summary["failed"] == 0 and summary["skipped"] == 0, summary
    # 4. every event indexed exactly once (ids are per event: a duplicate would not add a document,
    #    a loss would leave the count short; the wait ends at the count, so an excess would show too)
    assert await indexed(es, index, rows) == rows
    await es.indices.refresh(index=index)
    assert (await es.count(index=index))["count"] == rows
    # 5. the map page and its vendored files, from the image's installed package
    served = assert_map_served(f"http://127.0.0.1:{web_port}")
    assert "/vendor/leaflet/leaflet.js" in served
    status, body = get(f"http://127.0.0.1:{web_port}/api/extent")
    assert status == 200, body
    # 6. the non-root user, and a clean stop on SIGTERM
    for name in (worker, web):
        assert docker("exec", name, "id", "-u").stdout.strip() == IMAGE_USER
        top = docker("top", name, "-eo", "pid,uid,comm").stdout.splitlines()[1:]
        assert top and all(line.split()[1] == IMAGE_USER for line in top), top
    for name in (web, worker):
        code = containers.stop(name)
        assert code != SIGKILLED, f"{name} ignored SIGTERM for {STOP_GRACE_S}s and was killed"
