"""Ingestion test fixtures: a real Celery worker process on the test Redis and Neo4j, a small
encoder checkpoint, and the `medgraph` CLI run as a subprocess (real exit codes)."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from services.config import REPO_ROOT, Settings
from services.encoder.checkpoint import EncoderCheckpoint, save_checkpoint
from services.encoder.labels import FINDINGS_NIH
from services.encoder.network import build_densenet121
from services.encoder.preprocessing import Normalisation
from services.graph.store import GraphStore
from services.jobs import worker_argv
from workers.celery_app import app

BUNDLED_DIR = REPO_ROOT / "data" / "nih-cxr14-64px"
BUNDLED_IMAGES = BUNDLED_DIR / "images"
BUNDLED_LABELS = BUNDLED_DIR / "labels.csv"
CLI_TIMEOUT_S = 600


@dataclass(frozen=True)
class CliResult:
    returncode: int
    output: str


@pytest.fixture(scope="session")
def ingest_checkpoint(settings: Settings) -> Path:
    """A DenseNet-121 checkpoint made with the encoder's own API: seeded random weights.

    Training is the encoder's concern (and minutes on 2 cores); ingestion only needs a fixed,
    deterministic network. Its codes are unit vectors like a trained one's, only more alike.
    """
    path = settings.home / "models" / "ingest-test-encoder.pt"
    if not path.is_file():
        torch.manual_seed(0)
        model = build_densenet121(len(FINDINGS_NIH))
        save_checkpoint(
            path,
            EncoderCheckpoint(
                findings=FINDINGS_NIH,
                image_size=64,
                normalisation=Normalisation(0.5, 0.25),
                state_dict=dict(model.state_dict()),
            ),
        )
    return path


@pytest.fixture(scope="session")
def ingest_env(stack: Settings, ingest_checkpoint: Path) -> dict[str, str]:
    """The test slot's MEDGRAPH_ settings plus the test checkpoint, for every subprocess."""
    env = dict(os.environ)
    env["MEDGRAPH_ENCODER_CHECKPOINT"] = str(ingest_checkpoint)
    env["PYTHONPATH"] = str(REPO_ROOT)
    return env


@pytest.fixture(scope="session")
def ingest_worker(stack: Settings, ingest_env: dict[str, str]) -> Iterator[str]:
    """A real worker: ``celery -A workers.celery_app worker -Q embed,graph -c 2``."""
    slot = os.environ.get("MEDGRAPH_TEST_SLOT", "0")
    hostname = f"ingest-test-{slot}-{os.getpid()}@%h"
    log_path = stack.home / "logs" / "ingest-test-worker.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            worker_argv(("embed", "graph"), 2, hostname, "INFO"),
            cwd=REPO_ROOT, env=ingest_env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    node = hostname.replace("%h", os.uname().nodename)
    deadline = time.monotonic() + 120
    try:
        while not app.control.ping(destination=[node], timeout=0.5):
            if process.poll() is not None or time.monotonic() > deadline:
                log_tail = log_path.read_text()[-3000:]
                raise RuntimeError(f"the test worker did not start:\n{log_tail}")
        yield node
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


@pytest.fixture(scope="session")
def medgraph_cli(ingest_env: dict[str, str]) -> Callable[..., CliResult]:
    """Runs ``medgraph ARGS...`` in a subprocess with the test settings."""

    def run(*args: str | Path, timeout_s: float = CLI_TIMEOUT_S) -> CliResult:
        completed = subprocess.run(
            [sys.executable, "-m", "services.cli", *map(str, args)],
            cwd=REPO_ROOT, env=ingest_env, capture_output=True, text=True, timeout=timeout_s,
        )  # fmt: skip
        return CliResult(completed.returncode, completed.stdout + completed.stderr)

    return run


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def graph_counts(store: GraphStore) -> dict[str, int]:
    """Counts that an idempotent re-ingest must leave as they are. The search side's change log
    (:GraphChange, :GraphState) is bookkeeping, not data: every write transaction logs an entry,
    one that changed nothing included."""
    queries = {
        "images": "MATCH (i:Image) RETURN count(i) AS n",
        "patients": "MATCH (p:Patient) RETURN count(p) AS n",
        "similar": "MATCH ()-[r:SIMILAR]->() RETURN count(r) AS n",
        "has_image": "MATCH ()-[r:HAS_IMAGE]->() RETURN count(r) AS n",
        "graph_nodes": "MATCH (n) WHERE NOT n:IngestJob AND NOT n:GraphChange AND NOT n:GraphState "
        "RETURN count(n) AS n",
        "relationships": "MATCH ()-[r]->() RETURN count(r) AS n",
    }
    return {name: int(store.run_text(text)[0]["n"]) for name, text in queries.items()}


def stored_embeddings(store: GraphStore) -> tuple[list[str], np.ndarray]:
    records = store.run_text(
        "MATCH (i:Image) RETURN i.key AS key, i.embedding AS embedding ORDER BY key"
    )
    keys = [record["key"] for record in records]
    return keys, np.array([record["embedding"] for record in records], dtype=np.float64)


def stored_edges(store: GraphStore) -> list[dict]:
    return [
        record.data()
        for record in store.run_text(
            "MATCH (a:Image)-[r:SIMILAR]->(b:Image) "
            "RETURN elementId(r) AS id, a.key AS a, b.key AS b, r.weight AS weight"
        )
    ]


def exact_top_k(matrix: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Reference kNN in float64 numpy: (indices (n, k), full similarity matrix)."""
    similarity = matrix @ matrix.T
    np.fill_diagonal(similarity, -np.inf)
    return np.argsort(-similarity, axis=1, kind="stable")[:, :k], similarity


def image_property(store: GraphStore, name: str) -> dict[str, object]:
    """key -> the property ``name`` of every :Image."""
    records = store.run_text("MATCH (i:Image) RETURN i.key AS key, i[$name] AS value", name=name)
    return {record["key"]: record["value"] for record in records}


def wipe(store: GraphStore) -> None:
    """An empty database, schema kept (as the shared ``clean_graph`` fixture, for wider scopes).

    Never import ``tests.conftest`` for this: a second import of it re-reads the test slot from
    an environment it already cleaned, and would point the session at slot 0.
    """
    store.run_autocommit("MATCH (n) CALL (n) { DETACH DELETE n } IN TRANSACTIONS OF 5000 ROWS")
