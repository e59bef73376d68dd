"""The DC/OS deployment: Marathon definitions, the container image recipe, and the commands they run.

Fast unit tests. They check that every definition is valid against Marathon's own JSON schemas, that
every command (``cmd`` and command health checks) is one the project really has and that its flags
parse, that every environment variable is one the configuration module reads (or a listed platform
variable), and that the Dockerfile only copies files that exist and serves the assets the web server
expects.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import math
import re
import runpy
import shlex
import warnings
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from geoiot import config

ROOT = Path(__file__).resolve().parents[2]
MARATHON = ROOT / "infra" / "marathon"
SCHEMAS = ROOT.parent / "shared" / "marathon"
DOCKERFILE = ROOT / "Dockerfile"

APP_FILES = sorted(p for p in MARATHON.glob("*.json") if p.name != "group.json")
GROUP_FILE = MARATHON / "group.json"
PACKAGE_FILES = sorted((MARATHON / "packages").glob("*.json"))

# Variables that are not project settings but belong to the platform: Marathon/Mesos fill in ports and
# the sandbox; the Spark driver needs libmesos, found through MESOS_NATIVE_JAVA_LIBRARY.
PLATFORM_ENV = {"MESOS_NATIVE_JAVA_LIBRARY"}
# The Elasticsearch app runs Elastic's own image, whose heap is set by its own variable.
THIRD_PARTY_ENV = {"elasticsearch": {"ES_JAVA_OPTS"}}
# Placeholders a task's shell sees, with values like a real Mesos agent would give.
PLACEHOLDERS = {
    "MESOS_SANDBOX": "/mnt/mesos/sandbox",
    "HOST": "agent-1.example.internal",
    "LIBPROCESS_IP": "10.0.0.11",
    **{f"PORT{i}": str(21000 + i) for i in range(10)},
}
DCOS_KAFKA = "broker.kafka.l4lb.thisdcos.directory:9092"
# The Universe "elastic" package (coordinator.elastic.l4lb...) stops at Elasticsearch 7.x, which the 8.x
# client refuses; the group runs Elasticsearch 8.19 as a Marathon app behind this named VIP instead.
DCOS_ES = "http://elasticsearch.marathon.l4lb.thisdcos.directory:9200"
PROJECT_IMAGE = "geoiot/geoiot"
SPARK_IMAGE = "geoiot/geoiot-spark"
# spark-submit options the Spark app may use (spark-submit --help, Spark 3.5).
SPARK_SUBMIT_OPTIONS = {"--master", "--deploy-mode", "--name", "--conf", "--jars", "--packages", "--py-files",
                        "--files", "--driver-memory", "--executor-memory", "--total-executor-cores",
                        "--driver-cores", "--executor-cores", "--supervise", "--verbose", "--properties-file"}
SHELL_BUILTINS = {("sleep", "infinity")}


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def all_apps() -> list[dict[str, Any]]:
    return [load(p) for p in APP_FILES]


def app_ids() -> list[str]:
    return [p.stem for p in APP_FILES]


def is_project_app(app: dict[str, Any]) -> bool:
    image = app.get("container", {}).get("docker", {}).get("image", "")
    return image.split(":")[0] in {PROJECT_IMAGE, SPARK_IMAGE}


# ---------------------------------------------------------------- Marathon's JSON schemas

@pytest.fixture(scope="module")
def validators() -> dict[str, Any]:
    if not (SCHEMAS / "AppDefinition.json").is_file() or not (SCHEMAS / "Group.json").is_file():
        pytest.skip(f"Marathon JSON schemas not found in {SCHEMAS} (AppDefinition.json, Group.json)")
    from jsonschema import Draft4Validator
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT4

    app_schema = load(SCHEMAS / "AppDefinition.json")
    group_schema = load(SCHEMAS / "Group.json")
    # Group.json has an absolute id and refers to "./AppDefinition.json" relative to it.
    base = group_schema["id"].rsplit("/", 1)[0] + "/"
    registry = Registry().with_resources([
        (base + "AppDefinition.json", Resource(app_schema, DRAFT4)),
        (group_schema["id"], Resource(group_schema, DRAFT4)),
    ])
    return {"app": Draft4Validator(app_schema, registry=registry),
            "group": Draft4Validator(group_schema, registry=registry)}


def _errors(validator: Any, doc: dict[str, Any]) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in validator.iter_errors(doc)]


def test_there_is_an_app_for_every_component() -> None:
    assert set(app_ids()) >= {"elasticsearch", "topics", "source-constant", "source-timestamp", "agents", "web", "spark"}


def test_elasticsearch_app_matches_the_client_major_version() -> None:
    import elasticsearch

    es = load(MARATHON / "elasticsearch.json")
    version = es["container"]["docker"]["image"].rsplit(":", 1)[1]
    assert version.split(".")[0] == elasticsearch.__versionstr__.split(".")[0], "server and client majors must match"
    vip = es["portDefinitions"][0]["labels"]["VIP_0"]
    name, port = vip.strip("/").split(":")
    assert DCOS_ES == f"http://{name}.marathon.l4lb.thisdcos.directory:{port}"


@pytest.mark.parametrize("path", APP_FILES, ids=lambda p: p.name)
def test_app_definition_is_valid_against_marathon_schema(validators: dict[str, Any], path: Path) -> None:
    assert _errors(validators["app"], load(path)) == []


def test_group_is_valid_against_marathon_schema(validators: dict[str, Any]) -> None:
    assert _errors(validators["group"], load(GROUP_FILE)) == []


def test_schema_check_really_rejects_a_bad_definition(validators: dict[str, Any]) -> None:
    # Guard against a validator that silently ignores the $ref to AppDefinition.json.
    bad_app = dict(load(MARATHON / "web.json"), cpus="lots", unknownField=1)
    assert len(_errors(validators["app"], bad_app)) == 2
    assert _errors(validators["group"], {"id": "/geoiot", "apps": [bad_app]})


# ---------------------------------------------------------------- the group and its order

def test_group_holds_exactly_the_per_app_files() -> None:
    group = load(GROUP_FILE)
    assert group["id"] == "/geoiot"
    by_id = {a["id"]: a for a in group["apps"]}
    assert by_id == {a["id"]: a for a in all_apps()}, "group.json and the per-app files disagree"


def test_dependencies_exist_and_have_an_order() -> None:
    apps = {a["id"]: a for a in all_apps()}
    for app in apps.values():
        for dep in app.get("dependencies", []):
            assert dep in apps, f"{app['id']} depends on unknown {dep}"
    # Kahn's algorithm: a cycle would leave apps without an order.
    deps = {i: set(a.get("dependencies", [])) for i, a in apps.items()}
    ordered: list[str] = []
    while deps:
        ready = sorted(i for i, d in deps.items() if not d - set(ordered))
        assert ready, f"dependency cycle among {sorted(deps)}"
        ordered.extend(ready)
        for i in ready:
            del deps[i]
    assert "/geoiot/topics" in ordered[:2] and "/geoiot/elasticsearch" in ordered[:2]
    for consumer in ("/geoiot/agents", "/geoiot/web", "/geoiot/source-constant", "/geoiot/spark"):
        assert "/geoiot/topics" in apps[consumer]["dependencies"]
    assert ordered.index("/geoiot/agents") < ordered.index("/geoiot/source-constant")


# ---------------------------------------------------------------- resources, placement, upgrades

@pytest.mark.parametrize("path", APP_FILES, ids=lambda p: p.name)
def test_app_has_sane_resources_and_strategy(path: Path) -> None:
    app = load(path)
    assert app["id"] == f"/geoiot/{path.stem}"
    assert 0 < app["cpus"] <= 4 and 64 <= app["mem"] <= 8192
    assert isinstance(app["instances"], int) and app["instances"] >= 0
    strategy = app["upgradeStrategy"]
    assert 0 <= strategy["minimumHealthCapacity"] <= 1 and 0 <= strategy["maximumOverCapacity"] <= 1
    assert isinstance(app["constraints"], list)
    if is_project_app(app):
        assert app.get("user") not in (None, "root"), "tasks must not run as root"
    else:  # a third-party image runs as its own (non-root) image user under the Docker containerizer
        assert app["container"]["type"] == "DOCKER" and "user" not in app
    if is_project_app(app):
        assert app["container"]["docker"]["image"].split(":")[0] == (SPARK_IMAGE if path.stem == "spark" else PROJECT_IMAGE)


def test_agents_are_several_health_checked_workers_up_to_the_partition_count() -> None:
    agents = load(MARATHON / "agents.json")
    assert 1 < agents["instances"] <= int(agents["env"]["IOT_PARTITIONS"])
    check = agents["healthChecks"][0]
    assert check["protocol"] in {"MESOS_HTTP", "HTTP"} and check["path"] == "/healthz"
    assert check["portIndex"] < len(agents["portDefinitions"])
    # More workers than planned during an upgrade would only rebalance the consumer group.
    assert agents["upgradeStrategy"]["maximumOverCapacity"] == 0


def test_web_is_exposed_through_marathon_lb() -> None:
    web = load(MARATHON / "web.json")
    labels = web["labels"]
    assert labels["HAPROXY_GROUP"] == "external"
    assert labels["HAPROXY_0_VHOST"] and labels["HAPROXY_0_MODE"] == "http"
    ports = web["portDefinitions"]
    assert ports and ports[0]["protocol"] == "tcp" and 10000 <= ports[0]["port"] <= 10100  # marathon-lb range
    check = web["healthChecks"][0]
    assert check["protocol"] in {"MESOS_HTTP", "HTTP"} and check["path"] == "/healthz" and check["portIndex"] == 0
    assert "$PORT0" in web["cmd"] and web["env"]["WEB_HOST"] == "0.0.0.0"


def test_sources_never_run_twice_at_once() -> None:
    for name in ("source-constant", "source-timestamp"):
        app = load(MARATHON / f"{name}.json")
        assert app["instances"] <= 1
        assert app["upgradeStrategy"] == {"minimumHealthCapacity": 0, "maximumOverCapacity": 0}
    running = sum(load(MARATHON / f"{n}.json")["instances"] for n in ("source-constant", "source-timestamp"))
    assert running == 1, "exactly one source replays by default"


# ---------------------------------------------------------------- environment

@pytest.mark.parametrize("path", APP_FILES, ids=lambda p: p.name)
def test_every_variable_is_read_by_the_configuration(path: Path) -> None:
    app = load(path)
    known = {s.env for s in config.SETTINGS}
    unknown = set(app.get("env", {})) - known - PLATFORM_ENV - THIRD_PARTY_ENV.get(path.stem, set())
    assert not unknown, f"{path.name}: variables no component reads: {sorted(unknown)}"
    settings_env = {k: v for k, v in app.get("env", {}).items() if k in known}
    assert all(isinstance(v, str) for v in settings_env.values()), "Marathon env values are strings"
    config.load(settings_env)  # every value parses (ints are ints, booleans are booleans)


def test_apps_agree_on_shared_settings_and_default_to_dcos_names() -> None:
    seen: dict[str, dict[str, str]] = {}
    for path in APP_FILES:
        for key, value in load(path).get("env", {}).items():
            seen.setdefault(key, {})[path.stem] = value
    shared = ("KAFKA_BOOTSTRAP", "ES_URL", "IOT_TOPIC", "IOT_DLQ_TOPIC", "IOT_ALERTS_TOPIC", "IOT_INDEX",
              "IOT_SCHEMA", "IOT_PARTITIONS", "IOT_REPLICATION")
    for key in shared:
        assert len(set(seen.get(key, {}).values())) <= 1, f"apps disagree on {key}: {seen[key]}"
    assert set(seen["KAFKA_BOOTSTRAP"].values()) == {DCOS_KAFKA}
    assert set(seen["ES_URL"].values()) == {DCOS_ES}
    # Every app that talks to Kafka says where it is; the topics app creates what the others use.
    assert set(seen["KAFKA_BOOTSTRAP"]) == {p.stem for p in APP_FILES} - {"elasticsearch"}
    assert seen["IOT_PARTITIONS"]["topics"] == seen["IOT_PARTITIONS"]["agents"]


# ---------------------------------------------------------------- commands

def substitute(token: str) -> str:
    """Expand $VAR / ${VAR} the way the task's shell would, with agent-like values."""
    def repl(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        assert name in PLACEHOLDERS, f"unexpected shell variable ${name}"
        return PLACEHOLDERS[name]
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", repl, token)


def commands(cmd: str) -> Iterator[list[str]]:
    """The simple commands of a Marathon cmd (``a && exec b``), expanded, without ``exec``."""
    tokens = shlex.split(cmd)
    for op in ("|", ";", "||", "&"):
        assert op not in tokens, f"unsupported shell operator {op!r} in {cmd!r}"
    current: list[str] = []
    for token in [*tokens, "&&"]:
        if token == "&&":
            assert current, f"empty command in {cmd!r}"
            yield current[1:] if current[0] == "exec" else current
            current = []
        else:
            current.append(substitute(token))


class Parsed(Exception):
    def __init__(self, namespace: argparse.Namespace) -> None:
        super().__init__("parsed")
        self.namespace = namespace


def parse_python_module(module: str, argv: list[str], monkeypatch: pytest.MonkeyPatch) -> argparse.Namespace:
    """Run ``python -m module argv`` (as runpy does) up to its argument parsing, then stop: flags must parse."""
    assert importlib.util.find_spec(module) is not None, f"no module {module}"
    original = argparse.ArgumentParser.parse_args

    def intercept(self: argparse.ArgumentParser, args: Any = None, namespace: Any = None) -> argparse.Namespace:
        raise Parsed(original(self, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", intercept)
    monkeypatch.setattr(sys, "argv", [f"python -m {module}", *argv])
    try:
        with warnings.catch_warnings():
            # An imported submodule run again as __main__, as `python -m` would: harmless here.
            warnings.filterwarnings("ignore", message=".*found in sys.modules", category=RuntimeWarning)
            runpy.run_module(module, run_name="__main__", alter_sys=False)
    except Parsed as parsed:
        return parsed.namespace
    except SystemExit as exc:
        pytest.fail(f"`python -m {module} {shlex.join(argv)}` does not parse (exit {exc.code})")
    finally:
        monkeypatch.undo()
    pytest.fail(f"`python -m {module}` never parsed its arguments")


def check_faust(argv: list[str]) -> None:
    import click
    from faust.cli.faust import cli

    ctx = cli.make_context("faust", list(argv))
    app_path = ctx.params.get("app")
    assert app_path, "faust needs -A <module>"
    module, _, attr = app_path.partition(":")
    # Importing the app module does no I/O (its pre-flight runs at worker start), so import it.
    import faust

    found = getattr(importlib.import_module(module), attr or "app", None)
    assert isinstance(found, faust.App), f"{app_path} is not a faust.App"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # click 8.2 deprecates protected_args
        pending = [*ctx.protected_args, *ctx.args]
    name, command, rest = cli.resolve_command(ctx, pending)
    assert name == "worker"
    try:
        command.make_context(name, rest, parent=ctx)
    except click.UsageError as exc:
        pytest.fail(f"faust worker options do not parse: {exc}")


def check_spark_submit(argv: list[str]) -> None:
    options: dict[str, list[str]] = {}
    i = 0
    while argv[i].startswith("--"):
        assert argv[i] in SPARK_SUBMIT_OPTIONS, f"unknown spark-submit option {argv[i]}"
        options.setdefault(argv[i], []).append(argv[i + 1])
        i += 2
    assert options["--master"][0].startswith("mesos://"), "the Spark job runs against the Mesos master"
    for conf in options.get("--conf", []):
        key, sep, value = conf.partition("=")
        assert sep and key.startswith("spark.") and value, f"bad --conf {conf!r}"
    script = argv[i]
    assert script.startswith("/app/"), "the project lives at /app in the image"
    local = ROOT / script.removeprefix("/app/")
    assert local.is_file(), f"spark job {script} does not exist in the project ({local})"
    job = importlib.import_module(".".join(local.relative_to(ROOT).with_suffix("").parts))
    try:
        job.build_parser().parse_args(argv[i + 1:])
    except SystemExit as exc:
        pytest.fail(f"spark job flags {argv[i + 1:]} do not parse (exit {exc.code})")


def check_command(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    if tuple(argv) in SHELL_BUILTINS:
        return
    if argv[:2] == ["python", "-m"]:
        parse_python_module(argv[2], argv[3:], monkeypatch)
    elif argv[0] == "faust":
        check_faust(argv[1:])
    elif argv[0] == "spark-submit":
        check_spark_submit(argv[1:])
    else:
        pytest.fail(f"unknown command {shlex.join(argv)}")


def all_commands() -> list[tuple[str, str]]:
    found = []
    for path in APP_FILES:
        app = load(path)
        if not is_project_app(app):
            continue
        found.append((f"{path.stem}:cmd", app["cmd"]))
        for n, check in enumerate(app.get("healthChecks", [])):
            if check.get("protocol") == "COMMAND":
                found.append((f"{path.stem}:healthcheck{n}", check["command"]["value"]))
    return found


@pytest.mark.parametrize(("where", "cmd"), all_commands(), ids=[w for w, _ in all_commands()])
def test_command_exists_and_its_flags_parse(where: str, cmd: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for argv in commands(cmd):
        check_command(argv, monkeypatch)


def test_command_check_rejects_unknown_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(pytest.fail.Exception):
        parse_python_module("geoiot.topics", ["--no-such-flag"], monkeypatch)
    namespace = parse_python_module("geoiot.topics", ["--partitions", "6", "--wait", "5"], monkeypatch)
    assert namespace.iot_partitions == 6 and namespace.wait == 5.0
    with pytest.raises(pytest.fail.Exception):
        check_command(["python", "-m", "replay", "--definitely-not-a-flag"], monkeypatch)


def test_commands_expand_marathon_placeholders() -> None:
    parsed = list(commands("python -m x --out $MESOS_SANDBOX/f.csv && exec faust --web-port ${PORT0}"))
    assert parsed == [["python", "-m", "x", "--out", "/mnt/mesos/sandbox/f.csv"], ["faust", "--web-port", "21000"]]
    with pytest.raises(AssertionError):
        list(commands("python -m x $UNDEFINED_THING"))


# ---------------------------------------------------------------- Universe package options

@pytest.mark.parametrize("path", PACKAGE_FILES, ids=lambda p: p.name)
def test_package_options_match_the_service_names_apps_use(path: Path) -> None:
    options = load(path)
    if path.stem == "kafka":
        assert DCOS_KAFKA.split(".")[1] == options["service"]["name"]
        assert options["brokers"]["count"] >= int(load(MARATHON / "topics.json")["env"]["IOT_REPLICATION"])
    if path.stem == "spark":
        assert options["service"]["user"] != "root"
    if path.stem == "marathon-lb":
        assert options["marathon-lb"]["haproxy-group"] == load(MARATHON / "web.json")["labels"]["HAPROXY_GROUP"]


def test_every_universe_package_has_options() -> None:
    assert {p.stem for p in PACKAGE_FILES} == {"kafka", "spark", "marathon-lb"}


# ---------------------------------------------------------------- Dockerfile

def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined; heredoc bodies skipped."""
    out: list[tuple[str, str]] = []
    lines = iter(DOCKERFILE.read_text().splitlines())
    for line in lines:
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        while line.endswith("\\"):
            line = line[:-1] + " " + next(lines).strip()
        word, _, rest = line.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        heredoc = re.search(r"<<-?(\w+)\s*$", rest)
        if heredoc:
            for body in lines:
                if body.strip() == heredoc.group(1):
                    break
    return out


def stages() -> list[tuple[str | None, list[tuple[str, str]]]]:
    result: list[tuple[str | None, list[tuple[str, str]]]] = []
    for word, rest in dockerfile_instructions():
        if word == "FROM":
            match = re.search(r"\s+AS\s+(\S+)$", rest, re.IGNORECASE)
            result.append((match.group(1) if match else None, []))
        elif result:
            result[-1][1].append((word, rest))
    return result


def dockerignored() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]


def test_dockerfile_copies_only_files_that_exist_and_are_in_the_build_context() -> None:
    ignored = dockerignored()
    copies = [rest for word, rest in dockerfile_instructions() if word == "COPY" and "--from=" not in rest]
    assert copies
    for rest in copies:
        sources = shlex.split(rest)[:-1]
        for source in sources:
            assert (ROOT / source).exists(), f"COPY source {source} does not exist"
            top = source.split("/")[0]
            assert top not in ignored and source not in ignored, f"{source} is excluded by .dockerignore"


def test_dockerfile_installs_every_package_of_the_project() -> None:
    import tomllib

    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    copied = {shlex.split(rest)[0] for word, rest in dockerfile_instructions() if word == "COPY" and "--from=" not in rest}
    assert {name.split(".")[0] for name in packages} <= copied  # subpackages come with their parent
    # a normal install (its wheel bundles the map), never an editable one that needs the sources at run time
    installs = [rest for word, rest in dict(stages())["build"] if word == "RUN" and "pip install" in rest]
    assert any(re.search(r"pip install \.(\s|$)", rest) for rest in installs), installs
    assert not any(" -e " in rest for rest in installs)


def test_dockerfile_takes_its_base_images_as_build_arguments_with_public_defaults() -> None:
    args = dict(re.findall(r"^ARG (\w+)=(\S+)", DOCKERFILE.read_text(), re.MULTILINE))
    own = {name for name, _ in stages() if name}
    for word, rest in dockerfile_instructions():
        if word == "FROM":
            base = rest.split()[0]
            if base in own:
                continue
            match = re.fullmatch(r"\$\{(\w+)\}", base)
            assert match, f"FROM {base}: the base must be a build argument (infra/image/build-local sets it)"
            assert args[match.group(1)].split(":")[0] in {"python", "node", "maven"}, args[match.group(1)]


def test_image_serves_the_map_assets_the_web_server_expects() -> None:
    from web import assets

    build = dict(stages())["build"]
    copied_to = {shlex.split(rest)[-1].removeprefix("./") for word, rest in build if word == "COPY"}
    # setup.py bundles static/ and the vendored npm folders into the wheel: the build stage must have them.
    assert assets.STATIC in copied_to and "setup.py" in " ".join(rest for word, rest in build if word == "COPY")
    for folder in assets.VENDOR.values():
        parts = folder.split("/")
        package = "/".join(parts[:2]) if parts[0].startswith("@") else parts[0]  # npm scopes: @scope/name
        assert f"{assets.NODE_MODULES}/{package}" in copied_to, f"build stage lacks node_modules/{package}"
        assert package in load(ROOT / "package.json")["dependencies"]
    runtime = dict(stages())["runtime"]
    assert [rest for word, rest in runtime if word == "COPY"] == ["--from=build /opt/venv /opt/venv"]


def test_images_run_as_a_non_root_user_with_a_pass_through_entrypoint() -> None:
    all_stages = dict(stages())
    for name in ("runtime", "spark"):
        users = [rest for word, rest in all_stages[name] if word == "USER"]
        assert users and users[-1].split(":")[0] not in {"root", "0"}, f"stage {name} ends as root"
    runtime = all_stages["runtime"]
    entrypoint = json.loads([rest for word, rest in runtime if word == "ENTRYPOINT"][-1])
    assert entrypoint == ["tini", "--"], "Marathon cmds must run unchanged after the entrypoint"
    cmd = json.loads([rest for word, rest in runtime if word == "CMD"][-1])
    assert cmd[:2] == ["python", "-m"] and importlib.util.find_spec(f"{cmd[2]}.__main__") is not None
    # The default target (the last stage) is the slim runtime, not the Spark image.
    assert stages()[-1][0] is None and dockerfile_instructions()[-1] == ("FROM", "runtime")


def test_image_defaults_to_dcos_service_names_and_known_variables() -> None:
    env_lines = " ".join(rest for word, rest in dict(stages())["runtime"] if word == "ENV")
    pairs = dict(re.findall(r"(\w+)=(\S+)", env_lines))
    assert pairs["KAFKA_BOOTSTRAP"] == DCOS_KAFKA and pairs["ES_URL"] == DCOS_ES
    known = {s.env for s in config.SETTINGS} | {"PATH", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE"}
    assert set(pairs) <= known


def test_spark_image_has_a_spark_with_a_mesos_scheduler() -> None:
    args = dict(re.findall(r"ARG (\w+)=(\S+)", DOCKERFILE.read_text()))
    major, minor = (int(x) for x in args["SPARK_MESOS_VERSION"].split(".")[:2])
    assert (major, minor) < (4, 0), "Spark 4 removed the Mesos scheduler"
    spark = load(MARATHON / "spark.json")
    home = next(c for c in shlex.split(spark["cmd"]) if c.startswith("spark.mesos.executor.home="))
    spark_env = " ".join(rest for word, rest in dict(stages())["spark"] if word == "ENV")
    assert f"SPARK_HOME={home.split('=', 1)[1]}" in spark_env


def test_replication_matches_what_the_failover_tests_prove() -> None:
    """tests/integration/test_failover.py: topics with 3 replicas on brokers with min.insync.replicas=2 survive losing a
    broker with acks=all; the index with one replica survives losing an Elasticsearch node."""
    kafka = load(MARATHON / "packages" / "kafka.json")
    brokers, settings = kafka["brokers"]["count"], kafka["kafka"]
    for app in ("topics", "agents"):  # topics creates the source topics, agents its changelog topics
        replication = int(load(MARATHON / f"{app}.json")["env"]["IOT_REPLICATION"])
        assert replication == settings["default_replication_factor"] == 3 <= brokers
        assert settings["min_insync_replicas"] == replication - 1, "one broker may be lost without refusing writes"
    assert int(load(MARATHON / "agents.json")["env"]["IOT_INDEX_REPLICAS"]) == 1


def es_settings(app: dict[str, Any]) -> dict[str, str]:
    """The ``-Esetting=value`` arguments of the Elasticsearch app (its image's ``eswrapper`` takes them)."""
    assert app["args"][0] == "eswrapper"
    pairs = [arg.removeprefix("-E").split("=", 1) for arg in app["args"][1:]]
    assert all(arg.startswith("-E") for arg in app["args"][1:]) and all(len(p) == 2 for p in pairs)
    return dict(pairs)


def test_elasticsearch_has_more_nodes_than_any_app_asks_replicas() -> None:
    """A replica is never placed on its primary's node: with IOT_INDEX_REPLICAS=r the index is green (and
    survives losing r nodes, tests/integration/test_failover.py) only on at least r + 1 data nodes of one cluster."""
    es = load(MARATHON / "elasticsearch.json")
    settings = es_settings(es)
    replicas = max(int(a.get("env", {}).get("IOT_INDEX_REPLICAS", config.load({}).iot_index_replicas)) for a in all_apps())
    if replicas >= 1:
        assert es["instances"] > replicas, f"{es['instances']} Elasticsearch node(s) cannot hold {replicas} replica(s)"
        assert settings.get("discovery.type") != "single-node", "a single-node cluster never places a replica"
        # One node per agent, or two copies of a shard could share a host (and the fixed ports would clash).
        assert ["hostname", "UNIQUE"] in es["constraints"]


def test_elasticsearch_nodes_find_each_other_and_bootstrap_one_cluster() -> None:
    es = load(MARATHON / "elasticsearch.json")
    settings = es_settings(es)
    if es["instances"] == 1:
        return
    # Host networking: each node publishes its agent's address, and 9300 is the same port on every agent.
    assert es["networks"] == [{"mode": "host"}] and es["requirePorts"] is True
    ports = {p["name"]: p["port"] for p in es["portDefinitions"]}
    assert ports == {"http": int(settings["http.port"]), "transport": int(settings["transport.port"])}
    assert es["healthChecks"][0]["portIndex"] == 0  # http
    # Mesos-DNS answers <task>-<group>.marathon.mesos with the address of every task of the app.
    *group, name = es["id"].strip("/").split("/")
    assert settings["discovery.seed_hosts"] == f"{name}-{'-'.join(reversed(group))}.marathon.mesos:{ports['transport']}"
    # The first election counts exactly the agents the tasks are pinned to: a majority of them must meet.
    masters = settings["cluster.initial_master_nodes"].split(",")
    assert len(set(masters)) == len(masters) == es["instances"]
    likes = [c[2] for c in es["constraints"] if c[:2] == ["hostname", "LIKE"]]
    assert len(likes) == 1 and sorted(h for h in masters if re.fullmatch(likes[0], h)) == sorted(masters)
    assert not any(re.fullmatch(likes[0], h) for h in ("agent-4.example.internal", masters[0] + "x"))
    # A rolling update keeps a majority of the master-eligible nodes (and a copy of every shard) up.
    keep = math.ceil(es["upgradeStrategy"]["minimumHealthCapacity"] * es["instances"])  # Marathon rounds up
    assert keep > es["instances"] / 2 and es["upgradeStrategy"]["maximumOverCapacity"] == 0
