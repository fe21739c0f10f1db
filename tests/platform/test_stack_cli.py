"""`medgraph stack` as an operator uses it: real processes, real ports, real failures."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import redis

from services.config import Settings

MEDGRAPH = str(Path(sys.executable).with_name("medgraph"))


def run_cli(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [MEDGRAPH, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def processes_under(home: Path) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if str(home) in cmdline:
            found.append(process)
    return found


@pytest.fixture
def own_stack_env(tmp_path: Path, settings: Settings) -> Iterator[dict[str, str]]:
    """A second, private stack: its own home and ports, the jar cache shared."""
    env = dict(os.environ)
    env.update(
        MEDGRAPH_HOME=str(tmp_path / "home"),
        MEDGRAPH_CACHE_DIR=str(settings.cache_dir),
        MEDGRAPH_NEO4J_BOLT_PORT=str(settings.neo4j_bolt_port + 5),
        MEDGRAPH_NEO4J_HTTP_PORT=str(settings.neo4j_http_port + 5),
        MEDGRAPH_REDIS_PORT=str(settings.redis_port + 5),
        MEDGRAPH_NEO4J_HEAP="512m",
    )
    yield env
    run_cli(env, "stack", "stop")


def test_start_status_restart_and_stop(own_stack_env: dict[str, str]) -> None:
    env = own_stack_env
    home = Path(env["MEDGRAPH_HOME"])
    started = run_cli(env, "stack", "start")
    assert started.returncode == 0, started.stderr
    assert "neo4j: started" in started.stdout and "redis: started" in started.stdout
    assert "generated password" in started.stdout
    # A server that has written next to nothing holds next to nothing: Neo4j's preallocation
    # gave each of the suite's servers 512 MB of transaction logs, and a CI run ran out of disk.
    logs = home / "neo4j" / "data" / "transactions"
    written = sum(path.stat().st_size for path in logs.rglob("*") if path.is_file())
    assert 0 < written < 64 * 2**20, f"{written / 2**20:.0f} MiB of transaction logs"

    browser = f"http://127.0.0.1:{env['MEDGRAPH_NEO4J_HTTP_PORT']}/browser/"
    with urllib.request.urlopen(browser, timeout=10) as response:
        assert response.status == 200
    password = (home / "secrets" / "redis-password").read_text().strip()
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=int(env["MEDGRAPH_REDIS_PORT"])).ping()
    assert redis.Redis(port=int(env["MEDGRAPH_REDIS_PORT"]), password=password).ping()
    assert password not in started.stdout + started.stderr

    status = run_cli(env, "stack", "status")
    assert status.returncode == 0
    assert "neo4j: running" in status.stdout and "redis: running" in status.stdout

    again = run_cli(env, "stack", "start")
    assert again.returncode == 0, again.stderr
    assert "neo4j: already running" in again.stdout
    assert "redis: already running" in again.stdout
    assert "generated password" not in again.stdout

    stopped = run_cli(env, "stack", "stop")
    assert stopped.returncode == 0
    assert "neo4j: stopped" in stopped.stdout and "redis: stopped" in stopped.stdout
    assert processes_under(home) == []
    after = run_cli(env, "stack", "status")
    assert after.returncode == 3
    assert "neo4j: stopped" in after.stdout and "redis: stopped" in after.stdout


@pytest.mark.parametrize(
    "part, port_variable",
    [
        ("redis", "MEDGRAPH_REDIS_PORT"),
        ("neo4j", "MEDGRAPH_NEO4J_BOLT_PORT"),
        ("neo4j", "MEDGRAPH_NEO4J_HTTP_PORT"),
    ],
)
def test_port_in_use_is_named(own_stack_env: dict[str, str], part: str, port_variable: str) -> None:
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        env = dict(own_stack_env, **{port_variable: str(port)})
        result = run_cli(env, "stack", "start", "--only", part)
    assert result.returncode == 1
    assert f"port {port}" in result.stderr and "already in use" in result.stderr
    assert "Traceback" not in result.stderr


def test_wrong_java_version_is_explained(own_stack_env: dict[str, str], tmp_path: Path) -> None:
    fake_java_home = tmp_path / "jdk11"
    (fake_java_home / "bin").mkdir(parents=True)
    fake_java = fake_java_home / "bin" / "java"
    fake_java.write_text("#!/bin/sh\necho 'openjdk version \"11.0.22\" 2024-01-16' >&2\n")
    fake_java.chmod(0o755)
    env = dict(own_stack_env, JAVA_HOME=str(fake_java_home))
    result = run_cli(env, "stack", "start", "--only", "neo4j")
    assert result.returncode == 1
    assert "Java 17 or 21" in result.stderr and "Java 11" in result.stderr


def test_missing_java_is_explained(own_stack_env: dict[str, str], tmp_path: Path) -> None:
    env = dict(own_stack_env, JAVA_HOME=str(tmp_path / "nowhere"), PATH="/nonexistent")
    result = run_cli(env, "stack", "start", "--only", "neo4j")
    assert result.returncode == 1
    assert "Java was not found" in result.stderr


def test_download_failure_is_reported(own_stack_env: dict[str, str], tmp_path: Path) -> None:
    env = dict(
        own_stack_env,
        MEDGRAPH_CACHE_DIR=str(tmp_path / "cache"),
        MEDGRAPH_NEO4J_VERSION="5.26.9999",
    )
    result = run_cli(env, "stack", "fetch")
    assert result.returncode == 1
    assert "Downloading Neo4j 5.26.9999" in result.stderr and "failed" in result.stderr
    assert not (tmp_path / "cache" / "neo4j-5.26.9999").exists()


def test_server_dying_on_start_shows_its_log(own_stack_env: dict[str, str]) -> None:
    env = dict(own_stack_env, MEDGRAPH_NEO4J_PAGECACHE="lots")
    result = run_cli(env, "stack", "start", "--only", "neo4j")
    assert result.returncode == 1
    assert "Neo4j exited during start-up" in result.stderr
    assert "server.memory.pagecache.size" in result.stderr
    assert processes_under(Path(env["MEDGRAPH_HOME"])) == []
