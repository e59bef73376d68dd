"""infra/local/stack refuses clearly, in one line and with a non-zero exit, when it cannot start."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest
from testkit.processes import free_port

STACK = Path(__file__).resolve().parents[2] / "infra" / "local" / "stack"


def run_stack(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "STACK_DIR": str(tmp_path / "stack"), "KAFKA_PORT": str(free_port()),
               "KAFKA_CONTROLLER_PORT": str(free_port()), "ES_PORT": str(free_port()),
               "ES_TRANSPORT_PORT": str(free_port()), **env}
    return subprocess.run([str(STACK), *args], env=environ, capture_output=True, text=True, timeout=60)


def test_a_taken_port_names_the_variable_to_change(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_stack(tmp_path, "up", "kafka", KAFKA_PORT=str(port))
    assert result.returncode != 0
    assert f"port {port} is taken by another process" in result.stderr and "KAFKA_PORT=" in result.stderr
    # the kernel handed out that port from its ephemeral range, which a restart can lose to a client socket
    assert f"KAFKA_PORT={port} lies in the ephemeral port range" in result.stdout


def test_missing_java_names_the_fix(tmp_path: Path) -> None:
    result = run_stack(tmp_path, "up", "kafka", JAVA_HOME_17=str(tmp_path / "no-jdk"))
    assert result.returncode != 0
    assert "no java at" in result.stderr and "install openjdk-17" in result.stderr


def test_a_too_old_java_is_refused(tmp_path: Path) -> None:
    fake = tmp_path / "jdk11" / "bin"
    fake.mkdir(parents=True)
    (fake / "java").write_text('#!/bin/sh\necho \'openjdk version "11.0.2" 2019-01-15\' >&2\n')
    (fake / "java").chmod(0o755)
    result = run_stack(tmp_path, "up", "es", ES_JAVA_HOME=str(fake.parent))
    assert result.returncode != 0 and "needs 17 or newer" in result.stderr


def test_status_fails_when_nothing_runs(tmp_path: Path) -> None:
    result = run_stack(tmp_path, "status")
    assert result.returncode != 0
    assert "kafka: down" in result.stdout + result.stderr


@pytest.mark.parametrize("command", ["frobnicate"])
def test_unknown_commands_are_refused(tmp_path: Path, command: str) -> None:
    result = run_stack(tmp_path, command)
    assert result.returncode != 0 and result.stderr.strip()
