"""The DICOMweb and PACS tests' servers: `medgraph serve` as its own process (waitress, as in
production, so `dicomweb-client` talks HTTP to it), a real Celery worker, and API keys."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
from dicomweb_client.api import DICOMwebClient

from services.auth.api_keys import create_api_key
from services.config import REPO_ROOT, Settings
from services.graph.store import GraphStore

# The ingest tests' seeded encoder and real worker (session fixtures, shared).
from tests.ingest.conftest import ingest_checkpoint, ingest_env, ingest_worker  # noqa: F401

MAX_UPLOAD_BYTES = 4 * 1024 * 1024


@dataclass
class ServedArchive:
    """``medgraph serve`` on its own data root; ``restart()`` kills it and starts it again."""

    root: Path
    settings: Settings
    env: dict[str, str]
    port: int
    read_token: str
    write_token: str
    log_path: Path
    process: subprocess.Popen[bytes] | None = field(default=None)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def headers(self, scope: str = "read") -> dict[str, str]:
        token = self.write_token if scope == "write" else self.read_token
        return {"Authorization": f"Bearer {token}"}

    def client(self, scope: str = "read") -> DICOMwebClient:
        return DICOMwebClient(f"{self.url}/dicomweb", headers=self.headers(scope))

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "services.cli", "serve"],
                cwd=REPO_ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + 120
        while True:
            try:
                if requests.get(f"{self.url}/api/v1/health", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"medgraph serve did not start:\n{self.log_tail()}")
            time.sleep(0.3)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def log_tail(self, characters: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-characters:]


def archive_settings(settings: Settings, root: Path, checkpoint: Path) -> Settings:
    return settings.model_copy(
        update={
            "data_roots": [root],
            "api_upload_dir": root / "uploads",
            "encoder_checkpoint": checkpoint,
            "api_max_upload_bytes": MAX_UPLOAD_BYTES,
            "api_rate_limit_per_minute": 0,
            "api_auth_failures_per_minute": 0,
        }
    )


@pytest.fixture(scope="session")
def served_archive(
    graph_store: GraphStore,
    settings: Settings,
    ingest_checkpoint: Path,  # noqa: F811
    ingest_env: dict[str, str],  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServedArchive]:
    root = tmp_path_factory.mktemp("dicomweb") / "root"
    root.mkdir()
    archive = archive_settings(settings, root, ingest_checkpoint)
    port = settings.api_port + 2
    env = dict(ingest_env)
    env.update(
        MEDGRAPH_DATA_ROOTS=json.dumps([str(root)]),
        MEDGRAPH_API_PORT=str(port),
        MEDGRAPH_API_UPLOAD_DIR=str(root / "uploads"),
        MEDGRAPH_API_MAX_UPLOAD_BYTES=str(MAX_UPLOAD_BYTES),
        MEDGRAPH_API_RATE_LIMIT_PER_MINUTE="0",
        MEDGRAPH_API_AUTH_FAILURES_PER_MINUTE="0",
        MEDGRAPH_API_THREADS="4",
    )
    log_path = settings.home / "logs" / f"dicomweb-api-{os.getpid()}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.unlink(missing_ok=True)
    served = ServedArchive(
        root, archive, env, port,
        create_api_key(graph_store, "dicomweb-read", ("read",)).token,
        create_api_key(graph_store, "dicomweb-write", ("read", "write")).token,
        log_path,
    )  # fmt: skip
    served.start()
    try:
        yield served
    finally:
        served.kill()


def wait_for_instances(
    archive: ServedArchive, study_uids: list[str], count: int, timeout_s: float = 240
) -> list[dict]:
    """QIDO-RS instances of these studies, once ``count`` of them are listed."""
    client = archive.client()
    deadline = time.monotonic() + timeout_s
    while True:
        found = [
            item
            for study in study_uids
            for item in client.search_for_instances(study_instance_uid=study)
        ]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(1.0)
