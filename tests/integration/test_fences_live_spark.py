"""The live-geofences scenario of tests/integration/test_fences_live.py on the Spark job: the same fence changes between the
same reports give the same alerts and stored geofences as on the worker (its driver follows the fence topic and
hands each micro-batch its fences, agents/spark/fences.py), also across a restart from the checkpoint."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time

import pytest

pytest.importorskip("pyspark", reason="pyspark is not installed (pip install -e '.[spark]')")

from agents.spark import launch as spark_launch  # noqa: E402
from agents.spark.fences import snapshot_path  # noqa: E402
from conftest import ROOT, unique_name  # noqa: E402
from test_fences_live import Runtime, far_fences, scenario  # noqa: E402
from test_spark_job import in_flight, jars, spark_env  # noqa: E402,F401 (fixture)

pytestmark = [pytest.mark.spark, pytest.mark.integration, pytest.mark.slow]


async def test_the_spark_job_gives_the_workers_alerts_for_live_fences(stack, es, kafka_admin, new_topic, new_index,
                                                                      python_env, tmp_path, output_dir, jars):
    topic, index = await new_topic("livespark", partitions=1), new_index("livespark")
    ck = tmp_path / "checkpoint"
    env = spark_env(python_env, stack, topic, index, f"{topic}-dlq", f"{topic}-alerts", ck)
    env.update(IOT_GEOFENCES=str(far_fences(tmp_path)), IOT_APP_ID=unique_name("livespark"))
    log = output_dir / "spark-live-fences.log"
    job: list[subprocess.Popen] = []

    def start() -> None:
        with open(log, "ab") as out:
            job.append(subprocess.Popen(spark_launch.command(["--trigger-interval", "1 second"], jars), cwd=ROOT,
                                        env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True))

    def stop() -> None:
        while job:
            proc = job.pop()
            deadline = time.monotonic() + 120
            while in_flight(ck) is not None and time.monotonic() < deadline:  # not within a batch: no redo
                time.sleep(0.2)
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(30)

    async def applied(version: int, timeout: float = 300) -> None:
        path = snapshot_path(str(ck))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if json.loads(open(path, "rb").read())["version"] >= version:
                    return
            except (OSError, ValueError):
                pass
            await asyncio.sleep(0.2)
        raise AssertionError(f"fence version {version} not published:\n{log.read_text()[-3000:]}")

    await scenario(stack, es, kafka_admin, topic, index, Runtime(start, stop, applied))
