"""The replay command against the real Kafka of the local stack: counts, contents, partitions, pacing,
bad rows, and failure behaviour (unreachable broker, Ctrl-C)."""

from __future__ import annotations

import asyncio
import gzip
import json
import signal
import socket
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from geoiot.schema import load_preset
from replay.generate import write_csv
from geoiot.partitioning import kafka_partition
from replay.reader import Rejected, read_records
from testkit.kafka_events import drain
from testkit.replay import replay_file

pytestmark = pytest.mark.integration

TAXI = load_preset("taxi")
ROOT = Path(__file__).resolve().parents[2]


async def consume(bootstrap: str, topic: str, expected: int, timeout: float = 30.0, settle: float = 1.0) -> list[Any]:
    """Every message of the topic (all partitions from the start), waiting until ``expected`` arrived and
    then ``settle`` seconds more so that extra (duplicate) messages would be seen too."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        for _ in range(50):
            if parts:
                break
            await asyncio.sleep(0.1)
            await consumer._client.force_metadata_update()  # noqa: SLF001 - no public refresh
            parts = consumer.partitions_for_topic(topic) or set()
        consumer.assign([TopicPartition(topic, p) for p in sorted(parts)])
        await consumer.seek_to_beginning()
        return await drain(consumer, expected, timeout, settle)
    finally:
        await consumer.stop()


async def run_cli(args: list[str], env: dict[str, str], timeout: float = 60.0) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "replay", *args, cwd=ROOT, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode, out.decode(), err.decode()


def last_json(stdout: str) -> dict[str, Any]:
    return json.loads(stdout.strip().splitlines()[-1])


def expected_records(path: Path) -> list[dict[str, Any]]:
    return [r for _, r in read_records(path, TAXI) if not isinstance(r, Rejected)]


def check_delivery(messages: list[Any], expected: list[dict[str, Any]], partitions: int, hashed: bool = True) -> None:
    """Exact contents; key = track id; one partition per track, in file order."""
    assert len(messages) == len(expected)
    values = [orjson.loads(m.value) for m in messages]
    assert sorted(orjson.dumps(v) for v in values) == sorted(orjson.dumps(r) for r in expected)
    per_track_partition: dict[str, set[int]] = defaultdict(set)
    per_track: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for m, v in zip(messages, values):
        assert m.key.decode() == v["taxiId"] and isinstance(v["taxiId"], str)
        assert isinstance(v["observationTime"], int)
        per_track_partition[v["taxiId"]].add(m.partition)
        per_track[v["taxiId"]].append((m.offset, v["observationIx"]))
        if hashed:
            assert m.partition == kafka_partition(m.key, partitions)
    assert all(len(p) == 1 for p in per_track_partition.values())
    file_order = defaultdict(list)
    for r in expected:
        file_order[r["taxiId"]].append(r["observationIx"])
    for track, seen in per_track.items():
        assert [ix for _, ix in sorted(seen)] == file_order[track]


async def test_constant_mode_end_to_end(new_topic, stack, python_env, tmp_path: Path) -> None:
    topic = await new_topic("replay-const", partitions=3)
    path = tmp_path / "c.csv"
    write_csv(path, 10, 30, seed=1)
    code, out, err = await run_cli(["constant", str(path), "--topic", topic, "--events-per-interval", "100",
                                    "--interval-ms", "100", "--json-summary"], python_env)
    assert code == 0, err
    summary = last_json(out)
    assert summary["sent"] == 300 and summary["skipped"] == 0 and summary["failed"] == 0
    assert summary["requested_rate"] == 1000.0 and 0 < summary["achieved_rate"] <= 1100
    assert sum(summary["partitions"].values()) == 300
    messages = await consume(stack.kafka_bootstrap, topic, 300)
    check_delivery(messages, expected_records(path), 3)
    assert Counter(str(m.partition) for m in messages) == Counter(summary["partitions"])
    # Three batches of 100, 100 ms apart: the producer timestamps span at least ~0.2 s.
    stamps = sorted(m.timestamp for m in messages)
    assert stamps[-1] - stamps[0] >= 150


async def test_max_rate_loop_limit_and_balanced_spread(new_topic, stack, tmp_path: Path) -> None:
    topic = await new_topic("replay-bal", partitions=4)
    path = tmp_path / "b.csv.gz"
    write_csv(path, 40, 10, seed=2)
    summary = await replay_file(path, topic, bootstrap=stack.kafka_bootstrap, partitioner="balanced",
                                loop=True, limit=1000)
    assert summary["sent"] == 1000
    counts = list(summary["partitions"].values())
    assert len(counts) == 4 and max(abs(c - 250) for c in counts) <= 25
    messages = await consume(stack.kafka_bootstrap, topic, 1000)
    assert len(messages) == 1000
    tracks: dict[str, set[int]] = defaultdict(set)
    for m in messages:
        tracks[m.key.decode()].add(m.partition)
    assert len(tracks) == 40 and all(len(p) == 1 for p in tracks.values())


async def test_hash_partitioner_spreads_and_agrees_with_kafka(new_topic, stack, tmp_path: Path) -> None:
    topic = await new_topic("replay-hash", partitions=3)
    path = tmp_path / "h.csv"
    write_csv(path, 60, 5, seed=3)
    summary = await replay_file(path, topic, bootstrap=stack.kafka_bootstrap)
    assert summary["sent"] == 300
    assert all(n > 0 for n in summary["partitions"].values()) and len(summary["partitions"]) == 3
    messages = await consume(stack.kafka_bootstrap, topic, 300)
    check_delivery(messages, expected_records(path), 3, hashed=True)


async def test_timestamp_mode_groups_paced_and_retimed(new_topic, stack, python_env, tmp_path: Path) -> None:
    topic = await new_topic("replay-ts", partitions=2)
    path = tmp_path / "t.csv"
    write_csv(path, 4, 6, seed=4)  # 6 timestamp groups of 4 rows
    before = time.time() * 1000
    code, out, err = await run_cli(["timestamp", str(path), "--topic", topic, "--interval-ms", "200",
                                    "--retime", "now", "--json-summary", "--quiet"], python_env)
    after = time.time() * 1000
    assert code == 0, err
    summary = last_json(out)
    assert summary["sent"] == 24 and summary["mode"] == "timestamp"
    assert summary["seconds"] >= 5 * 0.2 * 0.9  # five waits of 200 ms between six groups
    messages = await consume(stack.kafka_bootstrap, topic, 24)
    values = [orjson.loads(m.value) for m in messages]
    groups: dict[int, list[dict]] = defaultdict(list)
    for v in values:
        assert before <= v["observationTime"] <= after
        groups[v["observationTime"]].append(v)
    assert sorted(len(g) for g in groups.values()) == [4] * 6
    times = sorted(groups)
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert all(150 <= gap <= 2000 for gap in gaps), gaps  # loose: the machine is shared
    # Each group is one file timestamp: the same observationIx for every track of a group.
    assert all(len({v["observationIx"] for v in g}) == 1 for g in groups.values())
    original = expected_records(path)
    strip = lambda r: {k: v for k, v in r.items() if k != "observationTime"}  # noqa: E731
    assert sorted(orjson.dumps(strip(v)) for v in values) == sorted(orjson.dumps(strip(r)) for r in original)


async def test_timestamp_mode_speedup_keeps_times(new_topic, stack, tmp_path: Path) -> None:
    topic = await new_topic("replay-speed", partitions=2)
    path = tmp_path / "s.csv"
    write_csv(path, 3, 5, seed=5)  # reports 1 s apart: at 10x, 0.4 s in all
    started = time.monotonic()
    summary = await replay_file(path, topic, bootstrap=stack.kafka_bootstrap, mode="timestamp", speedup=10)
    assert time.monotonic() - started >= 0.35
    assert summary["sent"] == 15
    messages = await consume(stack.kafka_bootstrap, topic, 15)
    check_delivery(messages, expected_records(path), 2)
    by_time: dict[int, list[int]] = defaultdict(list)
    for m in messages:
        by_time[orjson.loads(m.value)["observationTime"]].append(m.timestamp)
    firsts = [min(by_time[t]) for t in sorted(by_time)]
    assert all(b - a >= 60 for a, b in zip(firsts, firsts[1:])), firsts


def _bad_file(path: Path) -> tuple[int, dict[str, int]]:
    write_csv(path, 3, 4, seed=6)
    good = path.read_text().splitlines()
    cols = good[0].split(",")

    def row(index: int, value: str) -> str:
        values = list(cols)
        values[index] = value
        return ",".join(values)

    bad = {"columns": [",".join(cols[:18]), ",".join(cols + ["x"])],
           "time": [row(1, "not a time"), row(1, ""), row(1, "2013-13-45 25:00:00")],
           "longitude": [row(2, "east"), row(2, "-180.5"), row(2, "200")],
           "latitude": [row(3, "91")],
           "track": [row(0, ""), row(0, "   ")]}
    lines = list(good)
    for i, text in enumerate(line for group in bad.values() for line in group):
        lines.insert(2 * i + 1, text)
    path.write_text("\n".join(lines) + "\n")
    return len(good), {k: len(v) for k, v in bad.items()}


async def test_bad_rows_are_counted_reported_and_never_sent(new_topic, stack, python_env, tmp_path: Path) -> None:
    topic = await new_topic("replay-bad", partitions=3)
    path = tmp_path / "bad.csv"
    good, bad = _bad_file(path)
    rejects = tmp_path / "rejects.jsonl"
    code, out, err = await run_cli(["constant", str(path), "--topic", topic, "--max-rate", "--rejects", str(rejects),
                                    "--json-summary"], python_env)
    assert code == 0, err
    summary = last_json(out)
    assert summary["sent"] == good and summary["skipped"] == sum(bad.values())
    assert summary["skip_reasons"] == dict(sorted(bad.items()))
    assert [r["line"] for r in summary["rejects"]] == [2, 4, 6, 8, 10]
    assert "skipped line 2: expected 19 columns, found 18" in err
    written = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert len(written) == sum(bad.values()) and written[0]["row"] == path.read_text().splitlines()[1]
    messages = await consume(stack.kafka_bootstrap, topic, good)
    check_delivery(messages, expected_records(path), 3)


async def test_strict_stops_at_first_bad_row(new_topic, stack, python_env, tmp_path: Path) -> None:
    topic = await new_topic("replay-strict", partitions=1)
    path = tmp_path / "bad.csv"
    _bad_file(path)
    code, out, err = await run_cli(["constant", str(path), "--topic", topic, "--max-rate", "--strict",
                                    "--json-summary"], python_env)
    assert code == 2
    assert "line 2: expected 19 columns, found 18" in err
    assert last_json(out)["skipped"] == 1


async def test_jsonl_gzip_input(new_topic, stack, tmp_path: Path) -> None:
    topic = await new_topic("replay-jsonl", partitions=2)
    csv_path = tmp_path / "src.csv"
    write_csv(csv_path, 5, 4, seed=7)
    records = expected_records(csv_path)
    path = tmp_path / "src.jsonl.gz"
    path.write_bytes(gzip.compress(b"".join(orjson.dumps(r) + b"\n" for r in records)))
    summary = await replay_file(path, topic, bootstrap=stack.kafka_bootstrap)
    assert summary["sent"] == 20
    check_delivery(await consume(stack.kafka_bootstrap, topic, 20), records, 2)


async def test_unreachable_broker_fails_fast_and_clearly(python_env, tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    path = tmp_path / "u.csv"
    write_csv(path, 2, 2, seed=8)
    started = time.monotonic()
    code, out, err = await run_cli(["constant", str(path), "--bootstrap", f"127.0.0.1:{port}", "--topic", "nowhere",
                                    "--connect-timeout", "3", "--json-summary"], python_env, timeout=30)
    assert code == 1
    assert f"127.0.0.1:{port}" in err and ("cannot reach Kafka" in err or "did not answer" in err)
    assert "Traceback" not in err
    assert time.monotonic() - started < 15
    summary = last_json(out)
    assert summary["sent"] == 0 and f"127.0.0.1:{port}" in summary["error"]


async def test_ctrl_c_flushes_prints_summary_and_exits_130(new_topic, stack, python_env, tmp_path: Path) -> None:
    topic = await new_topic("replay-int", partitions=2)
    path = tmp_path / "i.csv"
    write_csv(path, 10, 100, seed=9)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "replay", "constant", str(path), "--topic", topic, "--rate", "200", "--json-summary",
        cwd=ROOT, env=python_env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    await asyncio.sleep(2.5)
    proc.send_signal(signal.SIGINT)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 130, err.decode()
    summary = last_json(out.decode())
    assert summary["interrupted"] is True and 0 < summary["sent"] < 1000
    messages = await consume(stack.kafka_bootstrap, topic, summary["sent"])
    assert len(messages) == summary["sent"]


def _kafka_answers(bootstrap: str) -> bool:
    host, _, port = bootstrap.split(",")[0].rpartition(":")
    try:
        with socket.create_connection((host or "localhost", int(port)), timeout=1):
            return True
    except OSError:
        return False


async def _stack(*args: str, timeout: float = 300) -> None:
    """The stack's own command (it serialises with other users of the stack through its lock)."""
    proc = await asyncio.create_subprocess_exec(str(ROOT / "infra" / "local" / "stack"), *args, cwd=ROOT,
                                                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode == 0, err.decode()


async def _start_paced_replay(path: Path, topic: str, seed: int, env: dict[str, str],
                              *extra: str) -> asyncio.subprocess.Process:
    write_csv(path, 20, 1000, seed=seed)  # 20,000 rows at 200/s: far longer than the tests let it run
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "replay", "constant", str(path), "--topic", topic, "--rate", "200", "--json-summary",
        *extra, cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)


async def _with_broker_down(bootstrap: str, during: Awaitable[Any]) -> Any:
    """Stop Kafka (the stack's own command), await ``during``, then start Kafka again whatever happened."""
    try:
        await _stack("down", "kafka")
        assert not _kafka_answers(bootstrap)
        return await during
    finally:
        await _stack("up", "kafka")


@pytest.mark.slow
async def test_broker_restart_mid_run_loses_nothing(new_topic, stack, python_env, tmp_path: Path) -> None:
    """Stop Kafka (the stack's own command) during a replay and start it again: the producer retries;
    what Kafka acknowledged is exactly what a consumer reads, per partition in file order, no duplicates."""
    topic = await new_topic("replay-hiccup", partitions=2)
    path = tmp_path / "r.csv"
    proc = await _start_paced_replay(path, topic, 10, python_env)
    try:
        await asyncio.sleep(1.5)
        await _with_broker_down(stack.kafka_bootstrap, asyncio.sleep(1.0))
        await asyncio.sleep(3.0)  # the replay carries on after the broker is back
        assert proc.returncode is None, "replay ended during the broker restart"
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 130, err.decode()
    summary = last_json(out.decode())
    assert summary["failed"] == 0 and summary["sent"] > 300
    messages = await consume(stack.kafka_bootstrap, topic, summary["sent"], timeout=60, settle=2.0)
    assert len(messages) == summary["sent"]
    expected: dict[int, list[bytes]] = defaultdict(list)
    for record in expected_records(path):
        key = record["taxiId"].encode()
        expected[kafka_partition(key, 2)].append(orjson.dumps(record))
    got: dict[int, list[tuple[int, bytes]]] = defaultdict(list)
    for m in messages:
        got[m.partition].append((m.offset, m.value))
    for partition, values in got.items():
        in_order = [v for _, v in sorted(values)]
        assert in_order == expected[partition][: len(in_order)]  # a prefix: nothing lost, nothing twice


async def test_workers_split_partitions_and_agree_with_one_process(new_topic, stack, python_env, tmp_path: Path) -> None:
    """--workers 2: same counts, same bad-row report, same partitions per track, file order kept."""
    path = tmp_path / "bad.csv"
    good, bad = _bad_file(path)
    summaries = {}
    for workers in (1, 2):
        topic = await new_topic(f"replay-w{workers}", partitions=3)
        code, out, err = await run_cli(["constant", str(path), "--topic", topic, "--max-rate", "--partitioner",
                                        "balanced", "--workers", str(workers), "--json-summary"], python_env)
        assert code == 0, err
        summaries[workers] = last_json(out)
        messages = await consume(stack.kafka_bootstrap, topic, good)
        check_delivery(messages, expected_records(path), 3, hashed=False)
    one, two = summaries[1], summaries[2]
    assert two["workers"] == 2 and two["sent"] == one["sent"] == good
    assert two["skipped"] == one["skipped"] == sum(bad.values()) and two["skip_reasons"] == one["skip_reasons"]
    assert two["partitions"] == one["partitions"] and two["rejects"] == one["rejects"]


# --- issue 16: no single input stops the replay ---------------------------------------------------

async def test_byte_order_mark_csv_with_header_is_replayed(new_topic, stack, python_env, tmp_path: Path) -> None:
    """Row 6: with a BOM the header was not recognised and every row skipped, with exit code 0."""
    topic = await new_topic("replay-bom", partitions=2)
    plain = tmp_path / "plain.csv"
    write_csv(plain, 3, 4, seed=11)
    # The track id first (where the BOM lands), the other columns not in the preset's order
    order = [0, *reversed(range(1, len(TAXI.names)))]
    rows = [",".join(v.split(",")[i] for i in order) for v in plain.read_text().splitlines()]
    text = "\n".join([",".join(TAXI.names[i] for i in order), *rows]) + "\n"
    path = tmp_path / "bom.csv"
    path.write_bytes("\ufeff".encode() + text.encode())
    code, out, err = await run_cli(["constant", str(path), "--topic", topic, "--max-rate", "--json-summary"], python_env)
    assert code == 0, err
    summary = last_json(out)
    assert summary["sent"] == 12 and summary["skipped"] == 0
    check_delivery(await consume(stack.kafka_bootstrap, topic, 12), expected_records(plain), 2)


async def test_truncated_gzip_sends_what_precedes_the_damage_and_summarises(new_topic, stack, python_env,
                                                                          tmp_path: Path) -> None:
    """Row 7: a truncated .gz died with EOFError and no summary; now the complete rows before the damage are
    sent, the line it ends inside is skipped, the summary says where, and the exit code is 1."""
    topic = await new_topic("replay-cut", partitions=2)
    whole = tmp_path / "whole.csv"
    write_csv(whole, 10, 300, seed=12)
    data = gzip.compress(whole.read_bytes())
    path = tmp_path / "cut.csv.gz"
    path.write_bytes(data[: len(data) // 2])
    code, out, err = await run_cli(["constant", str(path), "--topic", topic, "--max-rate", "--json-summary"], python_env)
    assert code == 1, err
    assert "Traceback" not in err and "damaged" in err
    summary = last_json(out)
    complete = summary["sent"]
    assert 0 < complete < 3000 and summary["failed"] == 0
    assert summary["skipped"] == 1 and summary["skip_reasons"] == {"incomplete": 1}
    assert summary["last_line"] == complete + 1 and f"after line {complete}" in summary["error"]
    check_delivery(await consume(stack.kafka_bootstrap, topic, complete), expected_records(whole)[:complete], 2)


async def test_oversized_row_is_skipped_alone(new_topic, stack, python_env, tmp_path: Path) -> None:
    """Row 8: a row over the producer's request size failed its whole batch (its neighbours reported failed)."""
    topic = await new_topic("replay-big", partitions=1)  # one partition: the big row shares a batch with all
    plain = tmp_path / "plain.csv"
    write_csv(plain, 4, 10, seed=13)
    lines = plain.read_text().splitlines()
    cols = lines[17].split(",")
    cols[TAXI.names.index("medallion")] = "M" * 1_100_000
    lines[17] = ",".join(cols)
    path = tmp_path / "big.csv"
    path.write_text("\n".join(lines) + "\n")
    rejects = tmp_path / "rejects.jsonl"
    code, out, err = await run_cli(["constant", str(path), "--topic", topic, "--max-rate", "--json-summary",
                                    "--rejects", str(rejects)], python_env)
    assert code == 0, err
    summary = last_json(out)
    assert (summary["sent"], summary["skipped"], summary["failed"]) == (39, 1, 0)
    assert summary["skip_reasons"] == {"size": 1} and summary["rejects"][0]["line"] == 18
    assert "maximum request size" in summary["rejects"][0]["reason"]
    [reject] = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert reject["line"] == 18 and len(reject["row"]) > 1_100_000
    expected = [r for i, r in enumerate(expected_records(plain)) if i != 17]
    check_delivery(await consume(stack.kafka_bootstrap, topic, 39), expected, 1)


@pytest.mark.slow
async def test_broker_outage_beyond_the_delivery_timeout_ends_with_the_summary(new_topic, stack, python_env,
                                                                               tmp_path: Path) -> None:
    """Row 7: an outage longer than the producer's timeout (60 s then) ended in a KafkaTimeoutError
    traceback and no summary. Now, after --delivery-timeout (here 5 s instead of the default 120 s),
    the run stops with exit code 1 and the summary: rows up to ``last_line`` are each sent or failed,
    and exactly the sent ones are in the topic."""
    topic = await new_topic("replay-outage", partitions=2)
    path = tmp_path / "o.csv"
    proc = await _start_paced_replay(path, topic, 14, python_env, "--delivery-timeout", "5")
    try:
        await asyncio.sleep(1.5)
        # the replay ends while the broker is still down
        out, err = await _with_broker_down(stack.kafka_bootstrap, asyncio.wait_for(proc.communicate(), 60))
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = err.decode()
    assert proc.returncode == 1, text
    assert "Traceback" not in text and "--delivery-timeout" in text
    assert text.count("has not taken a batch") <= 2  # quiet: one warning per period while it waits
    summary = last_json(out.decode())
    assert summary["sent"] > 0 and summary["failed"] > 0 and summary["skipped"] == 0
    assert summary["sent"] + summary["failed"] == summary["last_line"]  # every row taken is accounted for
    assert "acknowledged no batch for 5s" in summary["error"]
    messages = await consume(stack.kafka_bootstrap, topic, summary["sent"], timeout=60, settle=2.0)
    assert len(messages) == summary["sent"]
    sent = {orjson.dumps(r) for r in expected_records(path)[: summary["last_line"]]}
    assert {m.value for m in messages} <= sent
