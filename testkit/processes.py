"""Child processes of tests and benchmarks (a web server, a worker): a port for them, what they cost, and
stopping them."""

from __future__ import annotations

import os
import socket
import subprocess


def free_port() -> int:
    """A port the kernel just handed out and released (outside the stack's fixed ports), for a child server."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def vm_bytes(pid: int, *fields: str) -> dict[str, int]:
    """Memory lines of ``/proc/<pid>/status`` in bytes, e.g. ``vm_bytes(pid, "VmRSS", "VmHWM")`` (resident now
    and its high-water mark)."""
    wanted = {f"{name}:": name for name in fields}
    with open(f"/proc/{pid}/status") as f:
        found = {wanted[parts[0]]: int(parts[1]) * 1024 for parts in map(str.split, f) if parts and parts[0] in wanted}
    missing = set(fields) - found.keys()
    if missing:
        raise ValueError(f"/proc/{pid}/status has no {sorted(missing)}")
    return found


def proc_stat(pid: int) -> tuple[int, float]:
    """(RSS bytes, CPU seconds: user + system) of a running process, from /proc."""
    rss = vm_bytes(pid, "VmRSS")["VmRSS"]
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return rss, (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stop(proc: subprocess.Popen, timeout: float = 10) -> None:
    """SIGTERM, then SIGKILL when it has not exited within ``timeout`` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)
