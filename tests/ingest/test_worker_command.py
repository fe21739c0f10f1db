"""`medgraph worker` starts a real Celery worker on the chosen queues."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from services.config import REPO_ROOT
from workers.celery_app import app

pytestmark = [pytest.mark.redis]


def test_worker_command_consumes_the_chosen_queue(ingest_env: dict[str, str]) -> None:
    node = f"worker-cli-{os.getpid()}@{os.uname().nodename}"
    process = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "worker", "-Q", "graph", "-c", "1", "-n", node],
        cwd=REPO_ROOT, env=ingest_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not app.control.ping(destination=[node], timeout=0.5):
            assert process.poll() is None, process.stdout.read().decode() if process.stdout else ""
            assert time.monotonic() < deadline, "the worker did not answer"
        queues = app.control.inspect(destination=[node], timeout=2).active_queues()
        assert [queue["name"] for queue in queues[node]] == ["graph"]
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    assert process.returncode == 0


def test_worker_command_rejects_unknown_queues(medgraph_cli) -> None:
    result = medgraph_cli("worker", "--queues", "embed,gpu")
    assert result.returncode == 2
    assert "unknown queues ['gpu']" in result.output
