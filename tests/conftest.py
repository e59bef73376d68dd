"""Shared fixtures: one running stack per session, and uniquely named topics/indices per test.

Integration tests use the real Kafka and Elasticsearch that ``infra/local/stack`` runs on loopback
(or whatever ``KAFKA_BOOTSTRAP``/``ES_URL`` point at). If nothing answers, the stack is started once.
Every test gets its own topics and indices, deleted afterwards, so tests never see each other's data.
"""

from __future__ import annotations

import os
import socket
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import pytest_asyncio
from aiokafka.admin import AIOKafkaAdminClient
from elasticsearch import AsyncElasticsearch

from geoiot import config, topics

ROOT = Path(__file__).resolve().parent.parent
STACK = ROOT / "infra" / "local" / "stack"
SHARED_DATA = ROOT.parent / "shared" / "data"
OUTPUT_DIR = ROOT / "test-output"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Tests that use the stack are integration tests even when their module forgot the marker; the folder
    # names the tier too (tests/integration, tests/e2e).
    for item in items:
        tier = Path(str(item.fspath)).parent.name
        if tier == "e2e" and not item.get_closest_marker("e2e"):
            item.add_marker(pytest.mark.e2e)
        if (("stack" in getattr(item, "fixturenames", ()) or tier == "integration")
                and not item.get_closest_marker("integration")):
            item.add_marker(pytest.mark.integration)


def unique_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def settings() -> config.Settings:
    return config.load()


@pytest.fixture(scope="session")
def stack(settings: config.Settings) -> config.Settings:
    """The running Kafka and Elasticsearch; starts the local stack when neither answers."""
    kafka_host, _, kafka_port = settings.kafka_bootstrap.split(",")[0].rpartition(":")
    es = urlparse(settings.es_hosts[0])
    up = _answers(kafka_host or "localhost", int(kafka_port)) and _answers(es.hostname or "localhost", es.port or 9200)
    if not up:
        result = subprocess.run([str(STACK), "up"], cwd=ROOT, capture_output=True, text=True, timeout=900)
        if result.returncode != 0:
            pytest.fail(f"infra/local/stack up failed:\n{result.stdout}\n{result.stderr}")
    return settings


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def kafka_admin(stack: config.Settings) -> AsyncIterator[AIOKafkaAdminClient]:
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.kafka_bootstrap)
    await admin.start()
    yield admin
    await admin.close()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def es(stack: config.Settings) -> AsyncIterator[AsyncElasticsearch]:
    client = AsyncElasticsearch(stack.es_hosts, request_timeout=30)
    await client.cluster.health(wait_for_status="yellow", timeout="60s")
    yield client
    await client.close()


TopicFactory = Callable[..., Awaitable[str]]


@pytest_asyncio.fixture(loop_scope="session")
async def new_topic(kafka_admin: AIOKafkaAdminClient) -> AsyncIterator[TopicFactory]:
    """Create uniquely named topics for one test (``await new_topic("src", partitions=3)``); deleted after."""
    created: list[str] = []

    async def make(prefix: str = "t", partitions: int = 3) -> str:
        name = unique_name(prefix)
        [result] = await topics.ensure(kafka_admin, [topics.TopicSpec(name, partitions)])
        assert result.status == "created", result
        created.append(name)
        return name

    yield make
    try:  # and the live-geofence and live-layer topics a worker, a web server or the Spark job derives from a source topic
        derived = [f"{name}-{kind}" for name in created for kind in ("fences", "latest")]
        await topics.delete(kafka_admin, [*created, *derived])
    except Exception:  # a broker restart: nothing to clean
        pass


IndexFactory = Callable[..., Awaitable[str]]


@pytest_asyncio.fixture(loop_scope="session")
async def new_index(es: AsyncElasticsearch) -> AsyncIterator[Callable[[str], str]]:
    """Unique index names for one test (``new_index("obs")``); every index and template with that
    prefix is deleted after the test, so time-based indices behind an alias go too."""
    names: list[str] = []

    def make(prefix: str = "i") -> str:
        name = unique_name(prefix).lower()
        names.append(name)
        return name

    yield make
    for name in names:
        await es.options(ignore_status=404).indices.delete(index=f"{name}*", expand_wildcards="all")
        await es.options(ignore_status=404).indices.delete_index_template(name=f"{name}*")


@pytest.fixture(scope="session")
def output_dir() -> Path:
    """Where tests leave artefacts for people (screenshots, logs); git-ignored."""
    OUTPUT_DIR.mkdir(exist_ok=True)
    return OUTPUT_DIR


@pytest.fixture(scope="session")
def python_env() -> dict[str, str]:
    """Environment for subprocesses running the project's commands with this interpreter."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture
def agent_env(python_env: dict[str, str], new_index: Callable[[str], str]) -> Callable[..., dict[str, str]]:
    """Environment of a worker (testkit.worker.Worker) with its own app id, index, dead-letter and alerts
    topics, named after its source topic (set by the test); keyword arguments add or override settings."""
    def make(topic: str, **extra: str) -> dict[str, str]:
        env = dict(python_env)
        env.update({"IOT_TOPIC": topic, "IOT_APP_ID": f"{topic}-app", "IOT_INDEX": new_index("agents"),
                    "IOT_DLQ_TOPIC": f"{topic}-dlq", "IOT_ALERTS_TOPIC": f"{topic}-alerts",
                    "IOT_INDEX_REFRESH": "1s", "IOT_BULK_WITHIN": "0.2"})
        env.update(extra)
        return env
    return make


@pytest_asyncio.fixture(loop_scope="session")
async def client(data: Any) -> AsyncIterator[Any]:
    """The web app in-process over a module's ``data`` fixture (a :class:`testkit.web_client.Loaded`), for the
    modules that test the API on one loaded index; a module's own ``client`` takes precedence."""
    from testkit.web_client import web_client

    from testkit.live import until_synced

    async with web_client(data.settings) as c:
        await until_synced(c.server.app)
        yield c
