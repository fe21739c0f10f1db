"""Celery workers on this machine: who is listening, and a worker started for one job."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from services import jobs
from services.config import REPO_ROOT, Settings
from services.runtime.processes import RuntimeProblem, log_tail


def listening_queues(settings: Settings, timeout_s: float = 1.0) -> set[str]:
    """Queues some running worker consumes (empty when none answers within ``timeout_s``)."""
    return jobs.listening_queues(settings, timeout_s)


class LocalWorker:
    """A worker subprocess for the duration of one command (``medgraph ingest`` on its own)."""

    def __init__(self, settings: Settings, concurrency: int = 2) -> None:
        self.settings = settings
        self.concurrency = concurrency
        self.hostname = f"medgraph-local-{os.getpid()}@%h"
        self.log_file: Path = settings.home / "logs" / f"worker-{os.getpid()}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 120.0) -> None:
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("wb") as log:
            self.process = subprocess.Popen(
                jobs.worker_argv(jobs.QUEUES, self.concurrency, self.hostname, "INFO"),
                cwd=REPO_ROOT, env=os.environ.copy(), stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C in the terminal reaches us, not the worker
            )  # fmt: skip
        node = self.hostname.replace("%h", os.uname().nodename)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeProblem(
                    f"the local Celery worker exited during start-up:\n{log_tail(self.log_file)}"
                )
            if jobs.ping(self.settings, destination=[node], timeout_s=0.5):
                return
        self.stop()
        raise RuntimeProblem(f"the local Celery worker did not answer within {timeout_s:.0f}s")

    def stop(self, timeout_s: float = 60.0) -> None:
        """Warm shutdown (finish the running task), then kill if it hangs."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    def __enter__(self) -> LocalWorker:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()
