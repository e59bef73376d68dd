"""Kafka topics: the one module that looks topics up, creates them and checks what exists against what was asked.

Replay (its target topic), the agents (source, dead-letter, alerts, changelog), ``python -m geoiot.topics``,
the tests and the benchmarks all go through :func:`ensure`, so the rules hold everywhere:

* Topics are listed before they are described: a metadata request naming a missing topic makes a
  broker with ``auto.create.topics.enable=true`` (Kafka's default) create it with the broker's default
  partition count, and the partitions asked for would silently be lost.
* A missing topic is created with the requested partitions, replication and configs (the changelog
  is compacted), and is usable only once every partition has a leader, so :func:`ensure` waits for that.
* A topic that exists is never altered; what differs from the request (fewer partitions, another
  ``cleanup.policy``) is returned as :attr:`TopicResult.problems` for the caller to report as an
  error or a warning.

As a command it is the one-shot set-up step of a deployment. Idempotent, so a scheduler may run it
again at will: a topic that already exists is reported, not an error. On a cluster the broker may
come up after this task starts, hence ``--wait``: keep retrying the connection for that many seconds
before failing with a clear message and a non-zero exit.

    python -m geoiot.topics [--bootstrap HOST:PORT] [--partitions N] [--replication N] [--wait S]
    python -m geoiot.topics --check      # exit 0 only when every topic exists, the fence topic too (a health check)
    python -m geoiot.topics --alter-changelog   # also give IOT_APP_ID's changelog the compaction settings
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TypeVar

import orjson
from aiokafka.admin import AIOKafkaAdminClient, NewPartitions, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import (InvalidPartitionsError, KafkaConnectionError, KafkaError, TopicAlreadyExistsError,
                             for_code)

from geoiot import config

ENVS = config.envs("topics")
COMPACTED: Mapping[str, str] = {"cleanup.policy": "compact"}
# The agents' track-state changelog (agents.worker.track_table explains each value): Kafka compacts only closed
# segments, once their superseded share passes the ratio; these keep recovery near one record per track.
CHANGELOG_CONFIGS: Mapping[str, str] = {
    "cleanup.policy": "compact",
    "segment.bytes": str(8 << 20),
    "segment.ms": str(5 * 60_000),
    "min.cleanable.dirty.ratio": "0.1",
}
CHANGELOG_REQUIRED = ("cleanup.policy",)  # without these the changelog loses state; the others cost recovery time
FENCE_PARTITIONS = 1  # one order for every fence change (geoiot.fences)
DEFAULT_TIMEOUT = 30.0

T = TypeVar("T")


class TopicsError(RuntimeError):
    """The topics could not be created or checked; the message says why."""


@dataclass(frozen=True)
class TopicSpec:
    """A topic as asked for: created like this when missing, compared with this when it exists."""

    name: str
    partitions: int
    replication: int = 1
    configs: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TopicState:
    """A topic as it exists: its partition count, whether every partition has a leader, the configs read."""

    name: str
    partitions: int
    leaders: bool
    configs: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TopicResult:
    """What :func:`ensure` found or did for one topic."""

    name: str
    status: str  # "created" | "exists"
    partitions: int
    problems: tuple[str, ...] = ()  # how an existing topic differs from its spec


def log(event: str, **fields: object) -> None:
    """One structured line per meaningful event, on stdout (where schedulers collect logs)."""
    sys.stdout.write(orjson.dumps({"ts": round(time.time(), 3), "event": event, **fields}).decode() + "\n")
    sys.stdout.flush()


def changelog_name(app_id: str) -> str:
    """The track-state changelog of the agents' consumer group ``app_id`` (a Faust table's topic name)."""
    return f"{app_id}-tracks-changelog"


def latest_spec(settings: config.Settings, partitions: int) -> TopicSpec:
    """The live layer's topic (geoiot.live): compacted like the changelog, as many partitions as the source."""
    return TopicSpec(settings.latest_topic, partitions, settings.iot_replication, CHANGELOG_CONFIGS)


def topic_names(settings: config.Settings) -> list[str]:
    """Source, dead-letter and alerts topics, without duplicates, in that order."""
    return list(dict.fromkeys([settings.iot_topic, settings.iot_dlq_topic, settings.iot_alerts_topic]))


def fence_spec(settings: config.Settings) -> TopicSpec:
    """The live geofences' topic (geoiot.fences): compacted, one partition, whatever IOT_PARTITIONS says."""
    return TopicSpec(settings.fences_topic, FENCE_PARTITIONS, settings.iot_replication, COMPACTED)


async def _within(what: str, bootstrap: str, timeout: float, call: Awaitable[T]) -> T:
    try:
        return await asyncio.wait_for(call, timeout)
    except asyncio.TimeoutError:
        raise TopicsError(f"Kafka at {bootstrap} did not answer within {timeout:g}s ({what})") from None
    except TopicsError:
        raise
    except KafkaConnectionError as exc:
        raise TopicsError(f"cannot reach Kafka at {bootstrap} (KAFKA_BOOTSTRAP / --bootstrap) ({what}): {exc}") from None
    except (KafkaError, OSError) as exc:
        raise TopicsError(f"Kafka at {bootstrap} ({what}): {type(exc).__name__}: {exc}") from None


async def connect(bootstrap: str, wait: float = 0.0, timeout: float = DEFAULT_TIMEOUT,
                  on_retry: Callable[[int], None] | None = None) -> AIOKafkaAdminClient:
    """An admin client bootstrapped from ``bootstrap``, retrying for up to ``wait`` seconds."""
    deadline = time.monotonic() + wait
    attempt = 0
    while True:
        attempt += 1
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="geoiot-topics",
                                    request_timeout_ms=int(timeout * 1000))
        try:
            await _within("connect", bootstrap, timeout, admin.start())
            return admin
        except TopicsError as exc:
            await admin.close()
            if time.monotonic() >= deadline:
                raise TopicsError(f"{exc} after {attempt} attempt(s)") from None
            if on_retry is not None:
                on_retry(attempt)
            await asyncio.sleep(1.0)


@asynccontextmanager
async def admin_client(bootstrap: str, wait: float = 0.0, timeout: float = DEFAULT_TIMEOUT,
                       on_retry: Callable[[int], None] | None = None) -> AsyncIterator[AIOKafkaAdminClient]:
    """:func:`connect`, closed on exit."""
    admin = await connect(bootstrap, wait, timeout, on_retry)
    try:
        yield admin
    finally:
        await admin.close()


def _bootstrap(admin: AIOKafkaAdminClient) -> str:
    """The servers the client was bootstrapped from, for error messages (aiokafka keeps them private)."""
    servers = getattr(getattr(admin, "_client", None), "_bootstrap_servers", None) or "?"
    return servers if isinstance(servers, str) else ",".join(map(str, servers))


async def _configs(admin: AIOKafkaAdminClient, names: Sequence[str], keys: Sequence[str],
                   timeout: float) -> dict[str, dict[str, str]]:
    if not names or not keys:
        return {}
    resources = [ConfigResource(ConfigResourceType.TOPIC, n, {k: None for k in keys}) for n in names]
    responses = await _within("describe configs", _bootstrap(admin), timeout, admin.describe_configs(resources))
    found: dict[str, dict[str, str]] = {}
    for response in responses:
        for resource in response.resources:
            error_code, _message, _kind, name, entries = resource[:5]
            if error_code == 0:
                found[name] = {entry[0]: entry[1] for entry in entries}
    return found


async def describe(admin: AIOKafkaAdminClient, names: Sequence[str], config_keys: Sequence[str] = (),
                   timeout: float = DEFAULT_TIMEOUT) -> dict[str, TopicState]:
    """Those of ``names`` that exist, never creating one (listed first: see the module docstring)."""
    bootstrap = _bootstrap(admin)
    present = set(await _within("list topics", bootstrap, timeout, admin.list_topics()))
    wanted = [n for n in dict.fromkeys(names) if n in present]
    if not wanted:
        return {}
    described = await _within("describe topics", bootstrap, timeout, admin.describe_topics(wanted))
    configs = await _configs(admin, wanted, config_keys, timeout)
    found: dict[str, TopicState] = {}
    for topic in described:
        if topic.get("error_code", 0) != 0:
            continue
        parts = topic.get("partitions") or []
        found[topic["topic"]] = TopicState(topic["topic"], len(parts),
                                           bool(parts) and all(p.get("leader", -1) >= 0 for p in parts),
                                           configs.get(topic["topic"], {}))
    return found


def differences(spec: TopicSpec, state: TopicState) -> tuple[str, ...]:
    """How an existing topic differs from what was asked, in words a Kafka user acts on."""
    problems = []
    if state.partitions < spec.partitions:
        problems.append(f"topic {spec.name!r} has {state.partitions} partitions, fewer than the {spec.partitions} "
                        "asked for (an existing topic is never altered)")
    for key, value in spec.configs.items():
        actual = state.configs.get(key)
        if actual != value:
            problems.append(f"topic {spec.name!r} has {key}={actual}, not {value}")
    return tuple(problems)


async def wait_for_leaders(admin: AIOKafkaAdminClient, names: Sequence[str],
                           timeout: float = DEFAULT_TIMEOUT) -> dict[str, int]:
    """Partition counts once every partition of every named (existing) topic has a leader.

    Topic creation returns before the partitions have leaders; producing earlier fails.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        states = await describe(admin, names, timeout=timeout)
        waiting = [n for n in names if n not in states or not states[n].leaders]
        if not waiting:
            return {n: states[n].partitions for n in names}
        if loop.time() > deadline:
            raise TopicsError(f"topic(s) {', '.join(waiting)} have no leader for every partition after {timeout:g}s")
        await asyncio.sleep(0.1)


async def ensure(admin: AIOKafkaAdminClient, specs: Sequence[TopicSpec],
                 timeout: float = DEFAULT_TIMEOUT) -> list[TopicResult]:
    """Create whichever topics are missing, wait for their leaders, and compare the others with their spec."""
    for spec in specs:
        if spec.partitions < 1 or spec.replication < 1:
            raise TopicsError(f"topic {spec.name!r}: partitions ({spec.partitions}) and replication "
                              f"({spec.replication}) must be at least 1")
    bootstrap = _bootstrap(admin)
    keys = sorted({k for spec in specs for k in spec.configs})
    before = await describe(admin, [s.name for s in specs], keys, timeout)
    missing = [s for s in specs if s.name not in before]
    results = {s.name: TopicResult(s.name, "exists", before[s.name].partitions, differences(s, before[s.name]))
               for s in specs if s.name in before}
    raced: list[TopicSpec] = []
    if missing:
        response = await _within("create topics", bootstrap, timeout, admin.create_topics(
            [NewTopic(s.name, num_partitions=s.partitions, replication_factor=s.replication,
                      topic_configs=dict(s.configs)) for s in missing]))
        failures = []
        by_name = {s.name: s for s in missing}
        for entry in response.topic_errors:
            name, code = entry[0], entry[1]
            message = entry[2] if len(entry) > 2 else None
            error = for_code(code)
            if code == 0:
                results[name] = TopicResult(name, "created", by_name[name].partitions)
            elif error is TopicAlreadyExistsError:  # created concurrently (another run, or auto-creation)
                raced.append(by_name[name])
            else:
                failures.append(f"{name!r}: {error.__name__}: {message or error.description}")
        if failures:
            done = ", ".join(f"{r.name} ({r.status})" for r in results.values()) or "none"
            raise TopicsError(f"cannot create topic {'; '.join(failures)} (topics ready: {done})")
    await wait_for_leaders(admin, [s.name for s in specs], timeout)
    if raced:
        now = await describe(admin, [s.name for s in raced], keys, timeout)
        for spec in raced:
            results[spec.name] = TopicResult(spec.name, "exists", now[spec.name].partitions,
                                             differences(spec, now[spec.name]))
    return [results[s.name] for s in specs]


async def grow(admin: AIOKafkaAdminClient, name: str, partitions: int,
               timeout: float = DEFAULT_TIMEOUT) -> tuple[int, int]:
    """Give an existing topic at least ``partitions`` partitions; returns (before, after).

    The one alteration this module makes, for the agents' changelog when the source topic grew: the new
    partitions are empty. Several workers may grow it at once: a count already reached is not an error.
    """
    bootstrap = _bootstrap(admin)
    found = await describe(admin, [name], timeout=timeout)
    if name not in found:
        raise TopicsError(f"topic {name!r} does not exist on {bootstrap}; cannot add partitions to it")
    before = found[name].partitions
    if before < partitions:
        try:
            await _within("create partitions", bootstrap, timeout,
                          admin.create_partitions({name: NewPartitions(partitions)}))
        except TopicsError as exc:
            if InvalidPartitionsError.__name__ not in str(exc):  # grown concurrently by another worker
                raise
    after = (await wait_for_leaders(admin, [name], timeout))[name]
    if after < partitions:
        raise TopicsError(f"topic {name!r} has {after} partitions after asking for {partitions}")
    return before, after


DYNAMIC_TOPIC_CONFIG = 1  # DescribeConfigs' config source of a setting made on the topic itself


async def alter(admin: AIOKafkaAdminClient, name: str, configs: Mapping[str, str],
                timeout: float = DEFAULT_TIMEOUT) -> dict[str, tuple[str | None, str]]:
    """Set ``configs`` on an existing topic, keeping its other own settings; returns {key: (old, new)} changed.

    Kafka's AlterConfigs request (the one aiokafka sends) replaces the whole set of a topic's own settings,
    so they are read first and sent again beside the new values (a change made by someone else between
    the two requests would be lost)."""
    bootstrap = _bootstrap(admin)
    resource = ConfigResource(ConfigResourceType.TOPIC, name, None)
    responses = await _within("describe configs", bootstrap, timeout, admin.describe_configs([resource]))
    [(error_code, message, _kind, _name, entries)] = [r[:5] for response in responses for r in response.resources]
    if error_code:
        raise TopicsError(f"topic {name!r}: {for_code(error_code).__name__}: {message}")
    effective = {e[0]: e[1] for e in entries}
    own = {e[0]: e[1] for e in entries if e[3] == DYNAMIC_TOPIC_CONFIG}
    if any(value is None for value in own.values()):  # a sensitive setting is not readable, so not kept
        raise TopicsError(f"topic {name!r} has settings that cannot be read back; alter it with kafka-configs")
    changed = {k: (effective.get(k), v) for k, v in configs.items() if effective.get(k) != v}
    if changed:
        altered = ConfigResource(ConfigResourceType.TOPIC, name, {**own, **configs})
        for response in await _within("alter configs", bootstrap, timeout, admin.alter_configs([altered])):
            for code, text, *_ in response.resources:
                if code:
                    raise TopicsError(f"topic {name!r}: {for_code(code).__name__}: {text}")
    return changed


async def ensure_topic(bootstrap: str, spec: TopicSpec, timeout: float = DEFAULT_TIMEOUT) -> TopicResult:
    """:func:`ensure` for one topic with a client of its own (replay, benchmarks)."""
    async with admin_client(bootstrap, timeout=timeout) as admin:
        [result] = await ensure(admin, [spec], timeout)
    return result


async def delete(admin: AIOKafkaAdminClient, names: Sequence[str] = (), prefix: str | None = None,
                 timeout: float = DEFAULT_TIMEOUT) -> list[str]:
    """Delete those of ``names`` (and of the topics starting with ``prefix``) that exist; returns them."""
    bootstrap = _bootstrap(admin)
    present = await _within("list topics", bootstrap, timeout, admin.list_topics())
    doomed = sorted(t for t in present if t in set(names) or (prefix is not None and t.startswith(prefix)))
    if doomed:
        await _within("delete topics", bootstrap, timeout, admin.delete_topics(doomed))
    return doomed


async def delete_topics(bootstrap: str, names: Sequence[str] = (), prefix: str | None = None,
                        timeout: float = DEFAULT_TIMEOUT) -> list[str]:
    """:func:`delete` with a client of its own (benchmarks cleaning up)."""
    async with admin_client(bootstrap, timeout=timeout) as admin:
        return await delete(admin, names, prefix, timeout)


async def run(settings: config.Settings, wait: float, check: bool, alter_changelog: bool = False) -> int:
    names = topic_names(settings)

    def retrying(attempt: int) -> None:
        log("kafka_unreachable", bootstrap=settings.kafka_bootstrap, attempt=attempt, retry_in_s=1.0)

    async with admin_client(settings.kafka_bootstrap, wait, on_retry=retrying) as admin:
        if check:
            names = [*names, fence_spec(settings).name]
            found = await describe(admin, names)
            missing = [n for n in names if n not in found]
            if missing:
                log("topics_missing", topics=missing, bootstrap=settings.kafka_bootstrap)
                return 1
            log("topics_present", topics={n: found[n].partitions for n in names})
            await check_changelog(admin, settings.iot_app_id, found[settings.iot_topic].partitions)
            return 0
        specs = [TopicSpec(n, settings.iot_partitions, settings.iot_replication) for n in names]
        specs += [fence_spec(settings), latest_spec(settings, settings.iot_partitions)]
        for r in await ensure(admin, specs):
            log(f"topic_{r.status}", topic=r.name, partitions=r.partitions, replication=settings.iot_replication)
            for problem in r.problems:
                log("topic_differs", topic=r.name, problem=problem)
            if r.name == settings.iot_topic:
                if alter_changelog:
                    await alter_changelog_configs(admin, settings.iot_app_id)
                await check_changelog(admin, settings.iot_app_id, r.partitions)
        return 0


async def alter_changelog_configs(admin: AIOKafkaAdminClient, app_id: str) -> None:
    """Give an existing changelog of ``app_id`` the compaction settings of :data:`CHANGELOG_CONFIGS` that are
    safe to change on a live topic (not ``cleanup.policy``: a changelog that is not compacted is refused by
    the worker, and changing it is the operator's decision)."""
    name = changelog_name(app_id)
    if name not in await describe(admin, [name]):
        return
    safe = {k: v for k, v in CHANGELOG_CONFIGS.items() if k not in CHANGELOG_REQUIRED}
    for key, (old, new) in (await alter(admin, name, safe)).items():
        log("topic_altered", topic=name, config=key, old=old, new=new)


async def check_changelog(admin: AIOKafkaAdminClient, app_id: str, partitions: int) -> tuple[str, ...]:
    """Log how an existing changelog of ``app_id`` differs from :data:`CHANGELOG_CONFIGS` and the source's
    ``partitions`` (the worker creates it, grows it and refuses it uncompacted; this only reports)."""
    name = changelog_name(app_id)
    found = await describe(admin, [name], list(CHANGELOG_CONFIGS))
    if name not in found:
        return ()
    problems = differences(TopicSpec(name, partitions, configs=CHANGELOG_CONFIGS), found[name])
    for problem in problems:
        log("topic_differs", topic=name, problem=problem)
    return problems


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m geoiot.topics",
        description="Create the source, dead-letter, alerts and (compacted) fence topics (idempotent); report "
                    "how the agents' changelog (IOT_APP_ID) differs from its configs.",
    )
    config.add_flags(parser, ENVS)
    parser.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                        help="keep retrying an unreachable broker for this long (default 0: fail at once)")
    parser.add_argument("--check", action="store_true",
                        help="only check that every topic exists (exit 1 otherwise); creates nothing")
    parser.add_argument("--alter-changelog", action="store_true",
                        help="set the changelog's compaction settings (segment size and age, dirty ratio) to the "
                             "agents' (recovery reads about one record per track once compacted)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = config.from_args(args, component="topics")
        return asyncio.run(run(settings, args.wait, args.check, args.alter_changelog))
    except (TopicsError, ValueError) as exc:
        print(f"geoiot.topics: error: {exc}", file=sys.stderr)
        return 2
    except KafkaError as exc:
        print(f"geoiot.topics: error: Kafka: {exc!r}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
