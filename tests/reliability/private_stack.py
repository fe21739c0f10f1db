"""A private Neo4j + Redis + Celery worker set for the fault tests, on their own home and ports.

The fault tests stop, kill and restart these processes; the session's shared stack (the
``stack`` fixture) is never touched, so a failing fault test cannot leave it down.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import redis
from celery import Celery

from services.config import REPO_ROOT, Settings
from services.graph.store import GraphStore
from services.ingest.jobs import JobProgress, JobTracker
from services.jobs import QUEUES, worker_argv
from services.runtime.neo4j import Neo4jRuntime
from services.runtime.redis import RedisRuntime

# Away from the slot's own ports (+0) and from tests/platform's private stack (+5).
PORT_OFFSET = 7


@dataclass
class PrivateStack:
    settings: Settings
    env: dict[str, str]
    neo4j: Neo4jRuntime
    redis: RedisRuntime
    workers: list[WorkerProcess] = field(default_factory=list)

    @classmethod
    def create(cls, base: Settings, home: Path, **overrides: object) -> PrivateStack:
        values: dict[str, object] = {
            "home": home,
            "cache_dir": base.cache_dir,
            "neo4j_bolt_port": base.neo4j_bolt_port + PORT_OFFSET,
            "neo4j_http_port": base.neo4j_http_port + PORT_OFFSET,
            "redis_port": base.redis_port + PORT_OFFSET,
            "neo4j_heap": "512m",
            "neo4j_pagecache": "128m",
            **overrides,
        }
        settings = Settings(**values)  # type: ignore[arg-type]
        env = {name: value for name, value in os.environ.items()
               if not name.startswith("MEDGRAPH_") or name == "MEDGRAPH_TEST_SLOT"}  # fmt: skip
        env.update({f"MEDGRAPH_{name.upper()}": str(value) for name, value in values.items()})
        env["PYTHONPATH"] = str(REPO_ROOT)
        return cls(settings, env, Neo4jRuntime(settings), RedisRuntime(settings))

    # --- servers -------------------------------------------------------------------------------
    def start(self) -> None:
        self.redis.start()
        self.neo4j.start()
        self.store().wait_until_available(60)
        self.store().apply_schema()

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.neo4j.stop()
        self.redis.stop()

    def store(self) -> GraphStore:
        return GraphStore.from_settings(self.settings)

    def tracker(self) -> JobTracker:
        return JobTracker.from_settings(self.settings)

    def restart_neo4j_after(self, down_s: float) -> None:
        self.neo4j.stop()
        time.sleep(down_s)
        self.neo4j.start()

    # --- workers and commands ------------------------------------------------------------------
    def worker(self, name: str) -> WorkerProcess:
        log_path = self.settings.home / "logs" / f"{name}.log"
        worker = WorkerProcess(self.env, self.settings.broker_url, log_path, name)
        self.workers.append(worker)
        return worker

    def cli(self, *args: str | Path, timeout_s: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "services.cli", *map(str, args)],
            cwd=REPO_ROOT, env=self.env, capture_output=True, text=True, timeout=timeout_s,
        )  # fmt: skip

    def cli_in_background(self, *args: str | Path) -> subprocess.Popen[str]:
        """A ``medgraph`` command left running (collect it with ``finish``)."""
        return subprocess.Popen(
            [sys.executable, "-m", "services.cli", *map(str, args)],
            cwd=REPO_ROOT, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip

    @staticmethod
    def finish(command: subprocess.Popen[str], timeout_s: float = 300) -> tuple[int, str]:
        output, _ = command.communicate(timeout=timeout_s)
        return command.returncode, output

    def progress(self, job_id: str) -> JobProgress | None:
        """The job's progress, or None while Redis does not answer (it is being restarted)."""
        try:
            return self.tracker().progress(job_id)
        except redis.RedisError:
            return None

    def wait_for(
        self, job_id: str, condition: Callable[[JobProgress], bool], timeout_s: float,
        poll_s: float = 0.1,
    ) -> JobProgress:  # fmt: skip
        deadline = time.monotonic() + timeout_s
        last: JobProgress | None = None
        while time.monotonic() < deadline:
            current = self.progress(job_id)
            if current is not None:
                last = current
                if condition(current):
                    return current
            time.sleep(poll_s)
        raise TimeoutError(f"job {job_id} did not get there in {timeout_s:.0f}s; last: {last}")

    def unacknowledged_messages(self) -> int:
        """Celery messages delivered to a worker and not acknowledged yet (kombu's ``unacked``)."""
        return int(redis.Redis.from_url(self.settings.broker_url).hlen("unacked"))

    def messages_in_flight(self) -> int:
        """Messages still queued (embed, graph) or delivered and not acknowledged."""
        client = redis.Redis.from_url(self.settings.broker_url)
        queued = sum(int(client.llen(queue)) for queue in ("embed", "graph"))
        return queued + int(client.hlen("unacked"))


class WorkerProcess:
    """``celery -A workers.celery_app worker -Q embed,graph -c 2`` as its own process group."""

    def __init__(
        self, env: dict[str, str], broker_url: str, log_path: Path, name: str,
        concurrency: int = 2,
    ) -> None:  # fmt: skip
        self.env = env
        self.broker_url = broker_url
        self.hostname = f"{name}@{os.uname().nodename}"
        self.concurrency = concurrency
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 300) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                worker_argv(QUEUES, self.concurrency, self.hostname, "INFO"),
                cwd=REPO_ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        # Not the current app: shared tasks (clustering) must stay bound to medgraph's own app.
        probe = Celery("worker-probe", broker=self.broker_url, set_as_current=False)
        deadline = time.monotonic() + timeout_s
        try:
            while not probe.control.ping(destination=[self.hostname], timeout=0.5):
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"worker {self.hostname} did not start:\n{self.log_tail()}")
        finally:
            probe.close()

    def processes(self) -> list[psutil.Process]:
        """The worker's main process and its pool, while any is alive."""
        if self.process is None:
            return []
        found = []
        for process in psutil.process_iter(["pid"]):
            with contextlib.suppress(psutil.NoSuchProcess, ProcessLookupError):
                if os.getpgid(process.pid) == self.process.pid and process.status() != "zombie":
                    found.append(process)
        return found

    def kill(self) -> None:
        """SIGKILL to the worker's main process, as the kernel's OOM killer would send it.

        Its pool processes die with it (Celery sets PR_SET_PDEATHSIG on them); that they are
        really gone is checked, so no orphan can finish the work behind the test's back.
        """
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)
        deadline = time.monotonic() + 30
        while self.processes():
            if time.monotonic() > deadline:
                raise AssertionError(f"pool processes outlived their worker: {self.processes()}")
            time.sleep(0.1)
        self.process = None

    def stop(self) -> None:
        if self.process is None:
            return
        process, self.process = self.process, None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)

    def log_tail(self, characters: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-characters:]
        except OSError:
            return "(no log)"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
