"""A Celery worker of the local stack, kept running in the background like Neo4j and Redis."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from services.config import REPO_ROOT, Settings
from services.jobs import QUEUES, ping, worker_argv
from services.runtime.processes import ManagedProcess, RuntimeProblem, log_tail

LOCAL_WORKER_NAME = "medgraph-stack@%h"


@dataclass(frozen=True)
class WorkerStatus:
    running: bool
    pid: int | None
    node: str


class WorkerRuntime:
    def __init__(self, settings: Settings, concurrency: int = 2) -> None:
        self.settings = settings
        self.concurrency = concurrency
        self.process = ManagedProcess(
            "worker",
            settings.home / "run" / "worker.pid",
            settings.home / "logs" / "worker.log",
        )
        self.node = LOCAL_WORKER_NAME.replace("%h", os.uname().nodename)

    def status(self) -> WorkerStatus:
        return WorkerStatus(self.process.is_running(), self.process.pid(), self.node)

    def start(self, timeout_s: float = 180.0) -> bool:
        if self.process.is_running():
            return False
        env = dict(os.environ)
        env.update(self._settings_environment())
        argv = worker_argv(QUEUES, self.concurrency, LOCAL_WORKER_NAME, "INFO")
        self.process.log_file.unlink(missing_ok=True)
        self.process.spawn(argv, env=env, cwd=REPO_ROOT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.process.is_running():
                raise RuntimeProblem(
                    f"the Celery worker exited during start-up:\n{log_tail(self.process.log_file)}"
                )
            if ping(self.settings, destination=[self.node], timeout_s=1.0):
                return True
        self.process.stop()
        raise RuntimeProblem(f"the Celery worker did not answer within {timeout_s:.0f} s")

    def stop(self) -> bool:
        # Warm shutdown first: the running task finishes (or, with acks_late, is redelivered).
        return self.process.stop(timeout_s=60)

    def _settings_environment(self) -> dict[str, str]:
        """The worker must see the same settings as the command that started it."""
        s = self.settings
        environment = {
            "MEDGRAPH_HOME": str(s.home),
            "MEDGRAPH_NEO4J_URI": s.bolt_uri,
            "MEDGRAPH_NEO4J_DATABASE": s.neo4j_database,
            # The worker reads Redis's password from <home>/secrets itself: it never travels
            # through the environment.
            "MEDGRAPH_REDIS_HOST": s.redis_host,
            "MEDGRAPH_REDIS_PORT": str(s.redis_port),
        }
        if s.redis_url:
            environment["MEDGRAPH_REDIS_URL"] = s.redis_url
        return environment
