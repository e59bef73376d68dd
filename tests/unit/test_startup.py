"""Starting the components: a bad setting or an unusable dependency is one clear line and a non-zero exit,
and importing the worker module does nothing but build the Faust app."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from geoiot import config

ROOT = Path(__file__).resolve().parents[2]
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
    settings = config.load(env)
    for name, raw in env.items():
        setting = next(s for s in config.SETTINGS if s.env == name)
        assert getattr(settings, setting.attr) == setting.parse(raw), name  # kept, not replaced by the default


def test_flags_are_validated_like_the_environment() -> None:
    with pytest.raises(config.ConfigError, match="IOT_BULK_WITHIN=0.0 must be at least 0.01"):
        config.load({}, iot_bulk_within=0.0)


COMPONENTS = {
    "worker": ["-m", "faust", "-A", "agents.app", "worker", "-l", "info"],
    "replay": ["-m", "replay", "constant", "no-such-file.csv", "--topic", "t"],
    "web": ["-m", "web"],
    "topics": ["-m", "geoiot.topics"],
}


@pytest.mark.parametrize("value", ["0", "0.001"])
def test_the_worker_refuses_a_busy_spinning_bulk_within_in_one_line(value: str, python_env: dict[str, str]) -> None:
    result = run(COMPONENTS["worker"], dict(python_env, **CLOSED, IOT_BULK_WITHIN=value), timeout=60)
    assert result.returncode != 0
    assert f"IOT_BULK_WITHIN={float(value)!r} must be at least 0.01" in the_line(result, "IOT_BULK_WITHIN")


BAD_SETTING = {  # one setting each component reads, out of its range
    "worker": ("IOT_SINKS", "kafka", "IOT_SINKS='kafka' must name one or more of"),
    "replay": ("IOT_PARTITIONS", "0", "IOT_PARTITIONS=0 must be at least 1"),
    "web": ("WEB_PORT", "70000", "WEB_PORT=70000 must be at most 65535"),
    "topics": ("IOT_REPLICATION", "0", "IOT_REPLICATION=0 must be at least 1"),
}


@pytest.mark.parametrize("component", sorted(COMPONENTS))
def test_every_component_refuses_a_bad_setting_it_reads_in_one_line(component: str, python_env: dict[str, str]) -> None:
    name, value, message = BAD_SETTING[component]
    assert name in config.envs("agents" if component == "worker" else component)
    result = run(COMPONENTS[component], dict(python_env, **CLOSED, **{name: value}), timeout=60)
    assert result.returncode != 0
    assert message in the_line(result, f"{name}=")


@pytest.mark.parametrize("component", ["replay", "web", "topics", "retention"])
def test_a_component_ignores_bad_settings_it_does_not_read(component: str) -> None:
    others = {"IOT_WEBHOOK_URL": "not a url", "IOT_BULK_WITHIN": "0", "WEB_PORT": "70000", "IOT_SINKS": "kafka",
              "SPARK_CHECKPOINT_DIR": ""}
    env = {k: v for k, v in others.items() if k not in config.envs(component)}
    settings = config.load(env, component=component)
    assert settings.iot_webhook_url == ""  # the default, not the bad value
    with pytest.raises(config.ConfigError):
        config.load(env)  # every setting is checked without a component


def test_every_setting_is_read_by_a_known_component_and_each_is_a_flag() -> None:
    for s in config.SETTINGS:
        assert s.components and s.components <= set(config.COMPONENTS), s.env
        for component in s.components:
            assert s.env in config.envs(component)
    with pytest.raises(ValueError, match="unknown component"):
        config.envs("nobody")


def test_a_bad_webhook_url_does_not_stop_the_web_server(python_env: dict[str, str]) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = dict(python_env, **CLOSED, IOT_WEBHOOK_URL="ftp://nowhere", WEB_HOST="127.0.0.1", WEB_PORT=str(port))
    server = subprocess.Popen([sys.executable, "-m", "web"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        answer = None
        while answer is None and time.monotonic() < deadline and server.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
                    answer = response.status
            except OSError:
                time.sleep(0.3)
        assert server.poll() is None, server.communicate()[0]
        assert answer == 200
    finally:
        server.terminate()
        server.communicate(timeout=30)
    worker = run(COMPONENTS["worker"], dict(python_env, **CLOSED, IOT_WEBHOOK_URL="ftp://nowhere"), timeout=60)
    assert worker.returncode != 0  # the worker reads it, and refuses it
    assert "IOT_WEBHOOK_URL='ftp://nowhere' must be http(s)" in the_line(worker, "IOT_WEBHOOK_URL=")


def test_a_malformed_tokens_file_stops_the_web_server_with_one_line(python_env: dict[str, str], tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("short fences\n")
    result = run(["-m", "web"], dict(python_env, **CLOSED, IOT_TOKENS_FILE=str(tokens), WEB_PORT="1"), timeout=60)
    assert result.returncode == 2
    assert "line 1: a token needs at least 16 characters" in the_line(result, str(tokens))


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


def test_faust_takes_its_settings_from_ours_not_from_other_components_variables(python_env: dict[str, str]) -> None:
    # Faust reads WEB_PORT, WEB_HOST and TIMEZONE from the environment over the app's own options; those
    # variables belong to the web server here, so the worker would have bound the web server's port.
    probe = ("import agents.app\napp = agents.app.app\napp.finalize()\n"
             "print(app.conf.id, app.conf.web_port, app.conf.web_host != 'elsewhere.invalid', app.conf.broker[0])")
    result = run(["-c", probe], dict(python_env, **CLOSED, IOT_APP_ID="fleet", WEB_PORT="7777", WORKER_WEB_PORT="6123",
                                     WEB_HOST="elsewhere.invalid"), timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["fleet-faust", "6123", "True", "kafka://127.0.0.1:1"]
