"""Shared fixtures: a real Neo4j and Redis for the test session, on their own ports and data.

The environment is fixed here, before any medgraph import reads the settings, so that a
developer's running demo stack (default ports, .medgraph/) is never touched by the tests.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
# Several checkouts or developers on one machine each take a slot: own ports, own data.
TEST_SLOT = int(os.environ.get("MEDGRAPH_TEST_SLOT", "0"))
TEST_HOME = REPO_ROOT / ".medgraph" / f"test-{TEST_SLOT}"
TEST_ENVIRONMENT = {
    # Kept, so that a second import (`from tests.conftest import wipe_graph`) keeps the slot.
    "MEDGRAPH_TEST_SLOT": str(TEST_SLOT),
    "MEDGRAPH_HOME": str(TEST_HOME),
    "MEDGRAPH_NEO4J_BOLT_PORT": str(17687 + 10 * TEST_SLOT),
    "MEDGRAPH_NEO4J_HTTP_PORT": str(17474 + 10 * TEST_SLOT),
    "MEDGRAPH_REDIS_PORT": str(16379 + 10 * TEST_SLOT),
    "MEDGRAPH_API_PORT": str(15000 + 10 * TEST_SLOT),
    "MEDGRAPH_ORTHANC_HTTP_PORT": str(18042 + 10 * TEST_SLOT),
    "MEDGRAPH_ORTHANC_DICOM_PORT": str(14242 + 10 * TEST_SLOT),
    "MEDGRAPH_NEO4J_HEAP": "1g",
    "MEDGRAPH_NEO4J_PAGECACHE": "256m",
    # The suite starts several servers that each write a few MB of transactions; preallocated,
    # each would hold 512 MB of log files, and CI once ran out of disk.
    "MEDGRAPH_NEO4J_TX_LOG_PREALLOCATE": "false",
    # Workers refuse files outside the data roots; tests keep their files in pytest's temp
    # folders (and the bundled set). A test's own home (.medgraph/test-N) stays outside.
    "MEDGRAPH_DATA_ROOTS": json.dumps([str(REPO_ROOT / "data"), tempfile.gettempdir()]),
    # Fixtures rewrite the graph with Cypher between tests: changes from outside the platform,
    # which a live read model picks up in the background, a moment later. The API under test
    # checks the graph version on every search instead; the live model's own tests turn it on.
    "MEDGRAPH_SEARCH_LIVE_READ_MODEL": "false",
}
os.environ.update(TEST_ENVIRONMENT)
for _name in [n for n in os.environ if n.startswith("MEDGRAPH_") and n not in TEST_ENVIRONMENT]:
    # A developer's own overrides (a password, a remote URI) must not leak into the tests.
    del os.environ[_name]

from services.config import Settings  # noqa: E402
from services.graph.store import GraphStore, close_shared_drivers  # noqa: E402
from services.runtime.neo4j import Neo4jRuntime  # noqa: E402
from services.runtime.redis import RedisRuntime  # noqa: E402


@pytest.fixture(scope="session")
def settings() -> Settings:
    return Settings()


@pytest.fixture(scope="session")
def stack(settings: Settings) -> Iterator[Settings]:
    """The real local Neo4j and Redis, started fresh for this session and stopped after it."""
    neo4j_runtime = Neo4jRuntime(settings)
    redis_runtime = RedisRuntime(settings)
    neo4j_runtime.stop()
    redis_runtime.stop()
    shutil.rmtree(neo4j_runtime.data_dir, ignore_errors=True)
    shutil.rmtree(redis_runtime.home, ignore_errors=True)
    redis_runtime.start()
    neo4j_runtime.start()
    try:
        yield settings
    finally:
        close_shared_drivers()
        neo4j_runtime.stop()
        redis_runtime.stop()


@pytest.fixture(scope="session")
def graph_store(stack: Settings) -> GraphStore:
    store = GraphStore.from_settings(stack)
    store.apply_schema()
    return store


@pytest.fixture
def clean_graph(graph_store: GraphStore) -> GraphStore:
    """An empty database (schema kept) and no GDS projections."""
    wipe_graph(graph_store)
    return graph_store


def wipe_graph(store: GraphStore) -> None:
    store.run_text(
        "CALL gds.graph.list() YIELD graphName CALL gds.graph.drop(graphName) YIELD "
        "graphName AS dropped RETURN count(dropped)"
    )
    store.run_autocommit("MATCH (n) CALL (n) { DETACH DELETE n } IN TRANSACTIONS OF 5000 ROWS")


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """Where tests leave files worth looking at (screenshots, reports)."""
    path = REPO_ROOT / "test-artifacts"
    path.mkdir(exist_ok=True)
    return path


def pytest_report_header(config: pytest.Config) -> str:
    # The suite's servers and temporary folders need a few GB; a CI run once died of a full disk.
    free = {
        "repo": shutil.disk_usage(REPO_ROOT).free,
        "temp": shutil.disk_usage(tempfile.gettempdir()).free,
    }
    sizes = ", ".join(f"{name} {size / 2**30:.1f} GiB" for name, size in free.items())
    return f"free disk: {sizes}"
