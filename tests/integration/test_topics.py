"""geoiot.topics against the real Kafka (with auto.create.topics.enable=true, Kafka's default): the command
creates, is idempotent and fails clearly; replay and the worker's topics get the partitions and configs asked."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import orjson
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from geoiot import config, topics
from conftest import ROOT, unique_name

pytestmark = pytest.mark.integration


@pytest.fixture
async def names(kafka_admin: AIOKafkaAdminClient):
    base = unique_name("deploy")
    names = [base, f"{base}-dlq", f"{base}-alerts"]
    yield names
    await topics.delete(kafka_admin, [*names, f"{base}-fences", f"{base}-latest"])


def _env(stack: config.Settings, python_env: dict[str, str], names: list[str], **extra: str) -> dict[str, str]:
    env = dict(python_env, KAFKA_BOOTSTRAP=stack.kafka_bootstrap, IOT_APP_ID=f"{names[0]}-app",
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
    assert first.stdout.count('"event":"topic_created"') == 5
    assert await topics.wait_for_leaders(kafka_admin, names) == {n: 4 for n in names}
    # and the live geofences' topic (geoiot.fences): derived from IOT_TOPIC, one partition, compacted
    fences = f"{names[0]}-fences"
    [state] = (await topics.describe(kafka_admin, [fences], ["cleanup.policy"])).values()
    assert (state.partitions, state.configs["cleanup.policy"]) == (1, "compact")
    # and the live layer's topic (geoiot.live): derived from IOT_TOPIC, the source's partitions, compacted
    [state] = (await topics.describe(kafka_admin, [f"{names[0]}-latest"], ["cleanup.policy"])).values()
    assert (state.partitions, state.configs["cleanup.policy"]) == (4, "compact")

    # A second run (the scheduler restarting the task) changes nothing and succeeds; a flag beats the env.
    second = _run(["--partitions", "6"], env)
    assert second.returncode == 0, second.stderr
    assert second.stdout.count('"event":"topic_exists"') == 5
    assert second.stdout.count('"event":"topic_differs"') == 4  # the fence topic keeps its one partition
    assert "has 4 partitions, fewer than the 6 asked for" in second.stdout
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
    await topics.delete(kafka_admin, [f"{names[0]}-fences"])  # the fence topic is checked too
    for _ in range(100):  # deletion completes asynchronously on the broker
        if f"{names[0]}-fences" not in await kafka_admin.list_topics():
            break
        await asyncio.sleep(0.1)
    assert _run(["--check"], env).returncode == 1


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


async def _broker_config(admin: AIOKafkaAdminClient, key: str) -> str:
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    broker = (await admin.describe_cluster())["brokers"][0]["node_id"]
    [response] = await admin.describe_configs([ConfigResource(ConfigResourceType.BROKER, str(broker), {key: None})])
    [(_, _, _, _, entries)] = response.resources
    return {entry[0]: entry[1] for entry in entries}[key]


async def test_replay_creates_a_new_topic_with_the_partitions_asked_on_an_auto_creating_broker(
        stack, kafka_admin, python_env, tmp_path):
    # Kafka's default, as users have it: a metadata request naming a missing topic creates it.
    assert await _broker_config(kafka_admin, "auto.create.topics.enable") == "true"
    assert int(await _broker_config(kafka_admin, "num.partitions")) != 6
    from replay.generate import write_csv

    path = tmp_path / "new.csv"
    write_csv(path, 12, 5, seed=3)
    name = unique_name("replay-new")
    try:
        result = subprocess.run(
            [sys.executable, "-m", "replay", "constant", str(path), "--topic", name, "--partitions", "6",
             "--partitioner", "balanced", "--bootstrap", stack.kafka_bootstrap, "--json-summary"],
            cwd=ROOT, env=python_env, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        [described] = await kafka_admin.describe_topics([name])
        assert len(described["partitions"]) == 6
        assert len(orjson.loads(result.stdout.strip().splitlines()[-1])["partitions"]) == 6
    finally:
        await topics.delete(kafka_admin, [name])


async def test_replay_into_an_existing_topic_with_fewer_partitions_warns_and_uses_them(
        stack, kafka_admin, new_topic, python_env, tmp_path):
    from replay.generate import write_csv

    name = await new_topic("replay-few", partitions=2)
    path = tmp_path / "few.csv"
    write_csv(path, 12, 5, seed=4)
    result = subprocess.run(
        [sys.executable, "-m", "replay", "constant", str(path), "--topic", name, "--partitions", "6", "--max-rate",
         "--bootstrap", stack.kafka_bootstrap, "--json-summary"],
        cwd=ROOT, env=python_env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"topic {name!r} has 2 partitions, fewer than the 6 asked for" in result.stderr
    summary = orjson.loads(result.stdout.strip().splitlines()[-1])
    assert summary["sent"] == 60 and set(summary["partitions"]) <= {"0", "1"}
    [described] = await kafka_admin.describe_topics([name])
    assert len(described["partitions"]) == 2  # an existing topic is never altered


async def test_ensure_reports_a_changelog_without_compaction_and_creates_one_with_it(stack, kafka_admin):
    base = unique_name("ensure")
    plain, compacted = f"{base}-plain", f"{base}-compacted"
    try:
        await topics.ensure(kafka_admin, [topics.TopicSpec(plain, 1)])
        results = await topics.ensure(kafka_admin, [topics.TopicSpec(plain, 1, configs=topics.COMPACTED),
                                                     topics.TopicSpec(compacted, 2, configs=topics.COMPACTED)])
        assert [(r.status, r.partitions) for r in results] == [("exists", 1), ("created", 2)]
        assert results[0].problems == (f"topic {plain!r} has cleanup.policy=delete, not compact",)
        assert results[1].problems == ()
        again = await topics.ensure(kafka_admin, [topics.TopicSpec(compacted, 2, configs=topics.COMPACTED)])
        assert again[0].status == "exists" and again[0].problems == ()
    finally:
        await topics.delete(kafka_admin, prefix=f"{base}-")


async def test_the_command_reports_how_an_existing_changelog_differs_from_the_changelog_configs(
        stack, kafka_admin, python_env, names):
    """A changelog made with only cleanup.policy=compact (what the worker made before) and too few partitions:
    each difference is one topic_differs line, and the changelog is left as it is."""
    changelog = topics.changelog_name(f"{names[0]}-app")
    try:
        await topics.ensure(kafka_admin, [topics.TopicSpec(changelog, 1, configs=topics.COMPACTED)])
        env = _env(stack, python_env, names, IOT_PARTITIONS="2")
        for args in ([], ["--check"]):
            result = _run(args, env)
            assert result.returncode == 0, result.stderr
            differs = [orjson.loads(line) for line in result.stdout.splitlines() if '"topic_differs"' in line]
            assert {d["topic"] for d in differs} == {changelog}
            found = sorted(d["problem"].split(" has ")[1].split("=")[0].split(" ")[0] for d in differs)
            assert found == sorted(["1", *(set(topics.CHANGELOG_CONFIGS) - {"cleanup.policy"})]), differs
        [described] = await kafka_admin.describe_topics([changelog])
        assert len(described["partitions"]) == 1

        # --alter-changelog sets the compaction settings and keeps the topic's own other settings.
        await kafka_admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, changelog,
                                                        {"cleanup.policy": "compact", "retention.ms": "123456789"})])
        altered = _run(["--alter-changelog"], env)
        assert altered.returncode == 0, altered.stderr
        events = [orjson.loads(line) for line in altered.stdout.splitlines()]
        assert sorted(e["config"] for e in events if e["event"] == "topic_altered") == sorted(
            set(topics.CHANGELOG_CONFIGS) - {"cleanup.policy"})
        assert [e["problem"] for e in events if e["event"] == "topic_differs"] == [
            f"topic {changelog!r} has 1 partitions, fewer than the 2 asked for (an existing topic is never altered)"]
        [response] = await kafka_admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, changelog)])
        now = {entry[0]: entry[1] for entry in response.resources[0][4]}
        assert {k: now[k] for k in topics.CHANGELOG_CONFIGS} == dict(topics.CHANGELOG_CONFIGS)
        assert now["retention.ms"] == "123456789"
        again = _run(["--alter-changelog"], env)
        assert again.returncode == 0 and '"topic_altered"' not in again.stdout, again.stdout
    finally:
        await topics.delete(kafka_admin, [changelog])
