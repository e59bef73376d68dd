"""`python -m geoiot.topics` against the real Kafka: creates, is idempotent, and fails clearly."""

from __future__ import annotations

import subprocess
import sys

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from geoiot import config, topics
from conftest import ROOT, unique_name, wait_for_topic

pytestmark = pytest.mark.integration


@pytest.fixture
async def names(kafka_admin: AIOKafkaAdminClient):
    base = unique_name("deploy")
    names = [base, f"{base}-dlq", f"{base}-alerts"]
    yield names
    present = set(await kafka_admin.list_topics())
    doomed = [n for n in names if n in present]
    if doomed:
        await kafka_admin.delete_topics(doomed)


def _env(stack: config.Settings, python_env: dict[str, str], names: list[str], **extra: str) -> dict[str, str]:
    env = dict(python_env, KAFKA_BOOTSTRAP=stack.kafka_bootstrap,
               IOT_TOPIC=names[0], IOT_DLQ_TOPIC=names[1], IOT_ALERTS_TOPIC=names[2])
    env.update(extra)
    return env


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "geoiot.topics", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


async def test_creates_all_three_topics_with_partitions_then_is_idempotent(stack, kafka_admin, python_env, names):
    env = _env(stack, python_env, names, IOT_PARTITIONS="4")
    first = _run([], env)
    assert first.returncode == 0, first.stderr
    assert first.stdout.count('"event":"topic_created"') == 3
    for name in names:
        await wait_for_topic(kafka_admin, name, 4)

    # A second run (the scheduler restarting the task) changes nothing and succeeds; a flag beats the env.
    second = _run(["--partitions", "6"], env)
    assert second.returncode == 0, second.stderr
    assert second.stdout.count('"event":"topic_exists"') == 3
    assert "topic_has_fewer_partitions" in second.stdout
    described = {t["topic"]: len(t["partitions"]) for t in await kafka_admin.describe_topics(names)}
    assert described == {n: 4 for n in names}


async def test_check_reports_missing_topics_without_creating_them(stack, kafka_admin, python_env, names):
    env = _env(stack, python_env, names)
    check = _run(["--check"], env)
    assert check.returncode == 1
    assert "topics_missing" in check.stdout
    # The check must not auto-create them through a metadata request.
    assert not set(names) & set(await kafka_admin.list_topics())

    assert _run([], env).returncode == 0
    assert _run(["--check"], env).returncode == 0


async def test_impossible_replication_is_a_clear_error(stack, kafka_admin, python_env, names):
    brokers = len((await kafka_admin.describe_cluster())["brokers"])
    result = _run(["--replication", str(brokers + 1)], _env(stack, python_env, names))
    assert result.returncode == 2
    assert "InvalidReplicationFactorError" in result.stderr
    assert names[0] in result.stderr


def test_unreachable_broker_fails_with_a_clear_message(python_env):
    env = dict(python_env, KAFKA_BOOTSTRAP="127.0.0.1:1")
    result = _run(["--wait", "1.5"], env)
    assert result.returncode == 2
    assert "cannot reach Kafka at 127.0.0.1:1" in result.stderr
    assert "kafka_unreachable" in result.stdout  # it retried within --wait before giving up


def test_topic_names_are_deduplicated():
    settings = config.load({"IOT_TOPIC": "a", "IOT_DLQ_TOPIC": "a", "IOT_ALERTS_TOPIC": "b"})
    assert topics.topic_names(settings) == ["a", "b"]
