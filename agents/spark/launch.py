"""The ``spark-submit`` command line of the job, shared by the tests, the benchmark and ``make demo``.

``python -m agents.spark.launch [job flags]`` prints nothing and runs the job locally with the
connector jars of ``infra/local/stack spark-jars`` (resolved once with mvn into .stack/), the venv's
Python on driver and executors, ``local[2]`` and a 1 GB driver (override with SPARK_MASTER /
SPARK_DRIVER_MEMORY). ``SPARK_PYTHON`` names another interpreter with another pyspark (e.g. a venv with
pyspark 3.5.x, the DC/OS image's line): its ``spark-submit``, its Python and the connector of its version.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STACK = ROOT / "infra" / "local" / "stack"
JOB = ROOT / "agents" / "spark" / "job.py"
JAVA_17 = "/usr/lib/jvm/java-17-openjdk-amd64"


def spark_python() -> str:
    """The interpreter whose pyspark runs the job: SPARK_PYTHON, else this one."""
    return os.environ.get("SPARK_PYTHON") or sys.executable


def spark_version() -> str:
    """The pyspark version of :func:`spark_python`."""
    if spark_python() == sys.executable:
        import pyspark

        return pyspark.__version__
    return subprocess.run([spark_python(), "-c", "import pyspark; print(pyspark.__version__)"], check=True,
                          capture_output=True, text=True, timeout=60).stdout.strip()


def connector_jars() -> str:
    """Comma-separated jar paths for ``--jars`` (resolved by the stack script; no download at job start).

    When the stack script already resolved them (its ``.complete`` marker), they are listed directly:
    the script serialises all its commands with a lock that stack restarts hold for minutes.
    """
    version = spark_version()
    cached = Path(os.environ.get("STACK_DIR", ROOT / ".stack")) / "spark-jars" / version
    if (cached / ".complete").exists():
        jars = sorted(str(p) for p in cached.glob("*.jar"))
        if jars:
            return ",".join(jars)
    # The connector must be this pyspark's version (its bugs and fixes are per release, see
    # spark_job.KAFKA_V2_METRICS_NPE); the script alone would guess from <checkout>/.venv or a default.
    env = dict(os.environ, SPARK_VERSION=os.environ.get("SPARK_VERSION") or version)
    result = subprocess.run([str(STACK), "spark-jars"], capture_output=True, text=True, timeout=900, env=env)
    if result.returncode != 0 or not result.stdout.strip():
        raise RuntimeError(f"infra/local/stack spark-jars failed:\n{result.stderr}")
    return result.stdout.strip().splitlines()[-1]


def environment(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for spark-submit: this interpreter for driver and Python workers, a JDK 17."""
    env = dict(os.environ if base is None else base)
    env.setdefault("PYSPARK_PYTHON", spark_python())
    env.setdefault("PYSPARK_DRIVER_PYTHON", env["PYSPARK_PYTHON"])
    if "JAVA_HOME" not in env and Path(JAVA_17).is_dir():
        env["JAVA_HOME"] = JAVA_17
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def command(job_args: Sequence[str], jars: str, *, master: str | None = None, driver_memory: str | None = None,
            conf: Mapping[str, str] | None = None) -> list[str]:
    """``spark-submit --master local[2] --driver-memory 1g --jars ... agents/spark/job.py <job_args>``."""
    submit = Path(spark_python()).with_name("spark-submit")
    cmd = [str(submit) if submit.exists() else "spark-submit",
           "--master", master or os.environ.get("SPARK_MASTER", "local[2]"),
           "--driver-memory", driver_memory or os.environ.get("SPARK_DRIVER_MEMORY", "1g"),
           "--jars", jars]
    for key, value in (conf or {}).items():
        cmd += ["--conf", f"{key}={value}"]
    return cmd + [str(JOB), *job_args]


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    return subprocess.call(command(args, connector_jars()), env=environment())


if __name__ == "__main__":
    sys.exit(main())
