"""Create the pipeline's topics (source, dead-letter, alerts): the one-shot set-up step of a deployment.

Idempotent, so a scheduler may run it again at will: a topic that already exists is reported, not an
error. On a cluster the broker may come up after this task starts, hence ``--wait``: keep retrying the
connection for that many seconds before failing with a clear message and a non-zero exit.

    python -m geoiot.topics [--bootstrap HOST:PORT] [--partitions N] [--replication N] [--wait S]
    python -m geoiot.topics --check      # exit 0 only when every topic exists (a health check)
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

import orjson
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, KafkaError, TopicAlreadyExistsError, for_code

from geoiot import config

ENVS = ("KAFKA_BOOTSTRAP", "IOT_TOPIC", "IOT_DLQ_TOPIC", "IOT_ALERTS_TOPIC", "IOT_PARTITIONS", "IOT_REPLICATION")


class TopicsError(RuntimeError):
    """The topics could not be created or checked; the message says why."""


@dataclass(frozen=True)
class TopicResult:
    name: str
    status: str  # "created" | "exists"
    partitions: int


def log(event: str, **fields: object) -> None:
    """One structured line per meaningful event, on stdout (where schedulers collect logs)."""
    sys.stdout.write(orjson.dumps({"ts": round(time.time(), 3), "event": event, **fields}).decode() + "\n")
    sys.stdout.flush()


def topic_names(settings: config.Settings) -> list[str]:
    """Source, dead-letter and alerts topics, without duplicates, in that order."""
    return list(dict.fromkeys([settings.iot_topic, settings.iot_dlq_topic, settings.iot_alerts_topic]))


async def connect(bootstrap: str, wait: float) -> AIOKafkaAdminClient:
    """An admin client bootstrapped from ``bootstrap``, retrying for up to ``wait`` seconds."""
    deadline = time.monotonic() + wait
    attempt = 0
    while True:
        attempt += 1
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="geoiot-topics")
        try:
            await admin.start()
            return admin
        except KafkaConnectionError as exc:
            await admin.close()
            if time.monotonic() >= deadline:
                raise TopicsError(
                    f"cannot reach Kafka at {bootstrap} (KAFKA_BOOTSTRAP / --bootstrap)"
                    f" after {attempt} attempt(s): {exc}"
                ) from None
            log("kafka_unreachable", bootstrap=bootstrap, attempt=attempt, retry_in_s=1.0)
            await asyncio.sleep(1.0)


async def existing_partitions(admin: AIOKafkaAdminClient, names: Sequence[str]) -> dict[str, int]:
    """Partition counts of those of ``names`` that exist.

    Topics are listed before they are described: a metadata request naming a missing topic makes a
    broker with ``auto.create.topics.enable`` create it with its default partition count.
    """
    present = set(await admin.list_topics())
    wanted = [n for n in names if n in present]
    if not wanted:
        return {}
    described = await admin.describe_topics(wanted)
    found: dict[str, int] = {}
    for topic in described:
        if topic.get("error_code", 0) == 0:
            found[topic["topic"]] = len(topic.get("partitions", []))
    return found


async def ensure_topics(admin: AIOKafkaAdminClient, names: Sequence[str], partitions: int, replication: int,
                        configs: dict[str, str] | None = None) -> list[TopicResult]:
    """Create whichever of ``names`` are missing (with ``configs``); existing topics are left exactly as they are."""
    if partitions < 1 or replication < 1:
        raise TopicsError(f"partitions ({partitions}) and replication ({replication}) must be at least 1")
    before = await existing_partitions(admin, names)
    missing = [n for n in names if n not in before]
    results = [TopicResult(n, "exists", before[n]) for n in names if n in before]
    if missing:
        response = await admin.create_topics(
            [NewTopic(n, num_partitions=partitions, replication_factor=replication, topic_configs=configs or {})
             for n in missing]
        )
        failures = []
        for entry in response.topic_errors:
            name, code = entry[0], entry[1]
            message = entry[2] if len(entry) > 2 else None
            error = for_code(code)
            if code == 0:
                results.append(TopicResult(name, "created", partitions))
            elif error is TopicAlreadyExistsError:  # created concurrently by another run
                results.append(TopicResult(name, "exists", partitions))
            else:
                failures.append(f"{name!r}: {error.__name__}: {message or error.description}")
        if failures:
            done = ", ".join(f"{r.name} ({r.status})" for r in results) or "none"
            raise TopicsError(f"cannot create topic {'; '.join(failures)} (topics ready: {done})")
    order = {n: i for i, n in enumerate(names)}
    return sorted(results, key=lambda r: order[r.name])


async def run(settings: config.Settings, wait: float, check: bool) -> int:
    names = topic_names(settings)
    admin = await connect(settings.kafka_bootstrap, wait)
    try:
        if check:
            found = await existing_partitions(admin, names)
            missing = [n for n in names if n not in found]
            if missing:
                log("topics_missing", topics=missing, bootstrap=settings.kafka_bootstrap)
                return 1
            log("topics_present", topics={n: found[n] for n in names})
            return 0
        results = await ensure_topics(admin, names, settings.iot_partitions, settings.iot_replication)
        for r in results:
            log(f"topic_{r.status}", topic=r.name, partitions=r.partitions, replication=settings.iot_replication)
            if r.status == "exists" and r.partitions < settings.iot_partitions:
                log("topic_has_fewer_partitions", topic=r.name, partitions=r.partitions, wanted=settings.iot_partitions)
        return 0
    finally:
        await admin.close()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m geoiot.topics",
        description="Create the source, dead-letter and alerts topics (idempotent).",
    )
    config.add_flags(parser, ENVS)
    parser.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                        help="keep retrying an unreachable broker for this long (default 0: fail at once)")
    parser.add_argument("--check", action="store_true",
                        help="only check that every topic exists (exit 1 otherwise); creates nothing")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = config.from_args(args)
        return asyncio.run(run(settings, args.wait, args.check))
    except (TopicsError, ValueError) as exc:
        print(f"geoiot.topics: error: {exc}", file=sys.stderr)
        return 2
    except KafkaError as exc:
        print(f"geoiot.topics: error: Kafka: {exc!r}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
