"""Starting the components: a bad setting or an unusable dependency is one clear line and a non-zero exit,
and importing the worker module does nothing but build the Faust app."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from agents.store.index import IndexSetupError, ensure_index
from geoiot import config
from geoiot.schema import load_preset

ROOT = Path(__file__).resolve().parent.parent
CLOSED = {"KAFKA_BOOTSTRAP": "127.0.0.1:1", "ES_URL": "http://127.0.0.1:1"}  # nothing listens on port 1


def run(args: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def the_line(result: subprocess.CompletedProcess[str], marker: str) -> str:
    """The one stderr line containing ``marker`` (exactly one, and no traceback)."""
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if marker in line]
    assert len(lines) == 1, result.stderr
    return lines[0]


# --- configuration ranges (issue 16, case 4) ---------------------------------------------------------

def test_every_setting_declares_what_it_accepts() -> None:
    for s in config.SETTINGS:
        assert s.type is bool or s.minimum is not None or s.maximum is not None or s.check is not None, s.env
        assert s.allowed, s.env
        s.validate(s.default)  # the defaults are valid


@pytest.mark.parametrize("env, message", [
    ({"IOT_BULK_WITHIN": "0"}, "IOT_BULK_WITHIN=0.0 must be at least 0.01"),
    ({"IOT_BULK_WITHIN": "0.001"}, "IOT_BULK_WITHIN=0.001 must be at least 0.01"),
    ({"IOT_BULK_WITHIN": "nan"}, "IOT_BULK_WITHIN=nan must be a number"),
    ({"IOT_BULK_SIZE": "0"}, "IOT_BULK_SIZE=0 must be at least 1"),
    ({"IOT_PARTITIONS": "-3"}, "IOT_PARTITIONS=-3 must be at least 1"),
    ({"WEB_PORT": "70000"}, "WEB_PORT=70000 must be at most 65535"),
    ({"IOT_TOPIC": "a topic"}, "IOT_TOPIC='a topic' must be a Kafka topic name"),
    ({"IOT_INDEX": "Taxi"}, "IOT_INDEX='Taxi' must be an Elasticsearch index name"),
    ({"KAFKA_BOOTSTRAP": "localhost"}, "KAFKA_BOOTSTRAP='localhost' must be host:port"),
    ({"ES_URL": "localhost:9200"}, "ES_URL='localhost:9200' must be http(s)://host[:port]"),
    ({"IOT_SINKS": "kafka"}, "IOT_SINKS='kafka' must name one or more of elasticsearch, stdout"),
    ({"IOT_INDEX_REFRESH": "soon"}, "IOT_INDEX_REFRESH='soon' must be an Elasticsearch time value"),
    ({"IOT_TIMEZONE": "Mars/Base"}, "IOT_TIMEZONE='Mars/Base' unknown time zone"),
    ({"MAP_TILE_URL": "https://tiles.example/a.png"}, "MAP_TILE_URL='https://tiles.example/a.png' must be empty (no tiles) or a tile URL"),
])
def test_an_out_of_range_setting_is_refused_naming_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(config.ConfigError) as refused:
        config.load(env)
    assert str(refused.value).startswith(message)


@pytest.mark.parametrize("env", [{"MAP_TILE_URL": ""}, {"IOT_WEBHOOK_URL": ""}, {"IOT_BULK_WITHIN": "0.01"},
                                 {"IOT_INDEX_REFRESH": "-1"}, {"SPARK_CHECKPOINT_DIR": ""},
                                 {"KAFKA_BOOTSTRAP": "k1:9092, k2:9092"}, {"IOT_SINKS": "stdout,elasticsearch"},
                                 {"IOT_TIMEZONE": "America/New_York"}, {"ES_URL": "https://a:9200,http://b"}])
def test_documented_edge_values_are_accepted(env: dict[str, str]) -> None:
    config.load(env)


def test_flags_are_validated_like_the_environment() -> None:
    with pytest.raises(config.ConfigError, match="IOT_BULK_WITHIN=0.0 must be at least 0.01"):
        config.load({}, iot_bulk_within=0.0)


COMPONENTS = {
    "worker": ["-m", "faust", "-A", "agents.app", "worker", "-l", "info"],
    "replay": ["-m", "replay", "constant", "no-such-file.csv", "--topic", "t"],
    "web": ["-m", "web"],
    "topics": ["-m", "geoiot.topics"],
}


@pytest.mark.parametrize("component", sorted(COMPONENTS))
@pytest.mark.parametrize("value", ["0", "0.001"])
def test_every_component_refuses_a_busy_spinning_bulk_within_in_one_line(
        component: str, value: str, python_env: dict[str, str]) -> None:
    result = run(COMPONENTS[component], dict(python_env, **CLOSED, IOT_BULK_WITHIN=value), timeout=60)
    assert result.returncode != 0
    assert f"IOT_BULK_WITHIN={float(value)!r} must be at least 0.01" in the_line(result, "IOT_BULK_WITHIN")


# --- an importable worker (issue 11, item 3) ---------------------------------------------------------

def test_importing_the_worker_does_no_io_and_changes_nothing(python_env: dict[str, str], tmp_path: Path) -> None:
    app_id = f"import-{uuid.uuid4().hex[:8]}"
    probe = (
        "import logging, os, tempfile, geoiot.malloc\n"
        "import agents.app\n"
        "assert isinstance(agents.app.app, __import__('faust').App)\n"
        "assert geoiot.malloc._applied is None, 'malloc tuned at import'\n"
        "assert not os.path.exists(os.path.join(tempfile.gettempdir(), 'geoiot-faust', os.environ['IOT_APP_ID']))\n"
        "assert not any(logging.getLogger(n).filters for n in logging.root.manager.loggerDict), 'log filters'\n"
        "print('imported')\n")
    # Kafka and Elasticsearch unreachable, and a setting that the worker would refuse: the import succeeds.
    result = run(["-c", probe], dict(python_env, **CLOSED, IOT_APP_ID=app_id, IOT_BULK_WITHIN="0"), timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "imported"


def test_the_worker_fails_in_one_line_when_kafka_is_unreachable(python_env: dict[str, str]) -> None:
    result = run(COMPONENTS["worker"], dict(python_env, **CLOSED))
    assert result.returncode == 1
    assert the_line(result, "agents: ").startswith("agents: cannot reach Kafka at 127.0.0.1:1")


@pytest.mark.integration
async def test_the_worker_fails_in_one_line_when_elasticsearch_is_unreachable(stack, new_topic, python_env) -> None:
    topic = await new_topic("start-es", partitions=1)
    env = dict(python_env, KAFKA_BOOTSTRAP=stack.kafka_bootstrap, ES_URL="http://127.0.0.1:1", IOT_TOPIC=topic,
               IOT_DLQ_TOPIC=f"{topic}-dlq", IOT_ALERTS_TOPIC=f"{topic}-alerts", IOT_APP_ID=topic)
    try:
        result = run(COMPONENTS["worker"], env)
        assert result.returncode == 1
        assert the_line(result, "agents: ").startswith("agents: cannot reach Elasticsearch at ES_URL=http://127.0.0.1:1")
    finally:
        from geoiot import topics

        await topics.delete_topics(stack.kafka_bootstrap, prefix=f"{topic}-")


@pytest.mark.integration
async def test_the_worker_names_an_overlapping_index_template_in_one_line(stack, es, new_topic, new_index,
                                                                         python_env) -> None:
    """Issue 16, case 5: IOT_INDEX=foo-bw while a template for foo exists used to be a raw BadRequestError."""
    base = new_index("start-tpl")
    settings = config.load({}, iot_index=base)
    await ensure_index(es, settings, load_preset("taxi"))  # the template for <base>-*
    overlapping = config.load({}, iot_index=f"{base}-bw")
    with pytest.raises(IndexSetupError, match=f"refused the index template '{base}-bw'"):
        await ensure_index(es, overlapping, load_preset("taxi"))

    topic = await new_topic("start-tpl", partitions=1)
    env = dict(python_env, KAFKA_BOOTSTRAP=stack.kafka_bootstrap, ES_URL=stack.es_url, IOT_TOPIC=topic,
               IOT_DLQ_TOPIC=f"{topic}-dlq", IOT_ALERTS_TOPIC=f"{topic}-alerts", IOT_APP_ID=topic,
               IOT_INDEX=f"{base}-bw")
    try:
        result = run(COMPONENTS["worker"], env)
        assert result.returncode == 1
        line = the_line(result, "agents: ")
        assert line.startswith(f"agents: Elasticsearch refused the index template '{base}-bw'")
        assert base in line and "IOT_INDEX" in line
    finally:
        from geoiot import topics

        await topics.delete_topics(stack.kafka_bootstrap, prefix=f"{topic}-")


def test_faust_takes_its_settings_from_ours_not_from_other_components_variables(python_env: dict[str, str]) -> None:
    # Faust reads WEB_PORT, WEB_HOST and TIMEZONE from the environment over the app's own options; those
    # variables belong to the web server here, so the worker would have bound the web server's port.
    probe = ("import agents.app\napp = agents.app.app\napp.finalize()\n"
             "print(app.conf.id, app.conf.web_port, app.conf.web_host != 'elsewhere.invalid', app.conf.broker[0])")
    result = run(["-c", probe], dict(python_env, **CLOSED, IOT_APP_ID="fleet", WEB_PORT="7777", WORKER_WEB_PORT="6123",
                                     WEB_HOST="elsewhere.invalid"), timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["fleet-faust", "6123", "True", "kafka://127.0.0.1:1"]
