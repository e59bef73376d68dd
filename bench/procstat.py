"""CPU time of processes from /proc, and the local stack's service pids: what the benchmarks report cores with."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def cpu_seconds(pid: int, children: bool = False) -> float:
    """User + system CPU time of a process (0 when it is gone), plus its live children's when asked."""
    total = 0
    stats = Path("/proc").glob("[0-9]*/stat") if children else [Path(f"/proc/{pid}/stat")]
    for stat in stats:
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if stat.parent.name == str(pid) or fields[1] == str(pid):
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def service_pids() -> dict[str, int]:
    """Kafka and Elasticsearch of the local stack, from its pid files."""
    run = Path(os.environ.get("STACK_DIR", ROOT / ".stack")) / "run"
    out = {}
    for name, file in (("kafka", "kafka.pid"), ("elasticsearch", "es.pid")):
        try:
            out[name] = int((run / file).read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return out
