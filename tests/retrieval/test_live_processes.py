"""Two `medgraph serve` processes against one Neo4j and Redis: both find a newly ingested image,
neither returns a deleted one once its DELETE has answered, and a process killed while it
applies changes answers correctly after its restart."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.auth.api_keys import create_api_key
from services.config import REPO_ROOT, Settings
from services.graph.store import GraphStore
from services.retrieval.service import RetrievalService
from tests.retrieval.live_graph import LiveGraph, ingest_logged, stored_graph

pytestmark = pytest.mark.neo4j
STRATEGIES = ("community_ranked", "exact", "region")


class Server:
    """One `medgraph serve` process, started and stopped by this test (by its process id)."""

    def __init__(self, settings: Settings, port: int, token: str) -> None:
        self.port = port
        self.token = token
        self.log = (settings.home / f"live-serve-{port}.log").open("ab")
        self.process = subprocess.Popen(
            [str(Path(sys.executable).parent / "medgraph"), "serve", "--port", str(port),
             "--threads", "4"],
            cwd=REPO_ROOT, stdout=self.log,
            env={**os.environ, "OMP_NUM_THREADS": "1", "MEDGRAPH_SEARCH_LIVE_READ_MODEL": "true"},
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while True:
            try:
                self.call("GET", "/api/v1/health")
                return
            except (urllib.error.URLError, ConnectionError):
                assert self.process.poll() is None, "medgraph serve exited"
                assert time.monotonic() < deadline, "medgraph serve did not start"
                time.sleep(0.3)

    def call(self, method: str, path: str, body: dict | None = None) -> dict:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}",
            data=None if body is None else json.dumps(body).encode(),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {self.token}"},
            method=method,
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            return json.loads(response.read())

    def search(self, key: str, strategy: str = "community_ranked", k: int = 10) -> tuple:
        body = self.call("POST", "/api/v1/search", {"key": key, "k": k, "strategy": strategy})
        return tuple(hit["key"] for hit in body["results"])

    def stop(self, kill: bool = False) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


@pytest.fixture
def live_setup(
    clean_graph: GraphStore, settings: Settings
) -> Iterator[tuple[LiveGraph, list[Server], str]]:
    graph = stored_graph(clean_graph, settings, n=200, extra=12)
    token = create_api_key(clean_graph, "live-test", ("read", "write")).token
    servers = [Server(settings, settings.api_port + offset, token) for offset in (1, 2)]
    try:
        yield graph, servers, token
    finally:
        for server in servers:
            server.stop()


def original_of(graph: LiveGraph, index: int) -> str:
    """The stored image the extra image ``index`` is a near copy of."""
    embeddings = graph.embeddings[: graph.stored]
    return graph.keys[int((embeddings @ graph.embeddings[index]).argmax())]


def test_two_api_processes_find_new_images_and_never_return_deleted_ones(
    live_setup: tuple[LiveGraph, list[Server], str], clean_graph: GraphStore, settings: Settings
) -> None:
    graph, servers, token = live_setup
    first, second = servers
    index = graph.stored
    query = original_of(graph, index)
    for server in servers:
        assert graph.keys[index] not in server.search(query)

    (new,) = ingest_logged(clean_graph, graph, [index])
    for server in servers:
        deadline = time.monotonic() + 15
        while new not in server.search(query):
            assert time.monotonic() < deadline, f"port {server.port} never found the new image"
            time.sleep(0.05)

    # Deleted through one process: from the moment the DELETE answered, neither returns it.
    first.call("DELETE", f"/api/v1/images/{new}")
    for server in (second, first):
        for strategy in STRATEGIES:
            assert new not in server.search(query, strategy)
    stored_victim = second.search(query, "exact")[0]
    second.call("DELETE", f"/api/v1/images/{stored_victim}")
    for server in (first, second):
        for strategy in STRATEGIES:
            assert stored_victim not in server.search(query, strategy)

    # Killed while changes arrive: after a restart it answers as a model loaded afresh.
    more = list(range(index + 1, index + 12))
    ingest_logged(clean_graph, graph, more[:5])
    second.stop(kill=True)
    ingest_logged(clean_graph, graph, more[5:])
    servers[1] = second = Server(settings, second.port, token)
    reference = RetrievalService(clean_graph, settings)
    probes = [original_of(graph, i) for i in more] + graph.keys[:200:40]
    for key in probes:
        for strategy in STRATEGIES:
            expected = reference.search_by_key(key, 10, strategy).keys
            assert second.search(key, strategy) == expected
    deadline = time.monotonic() + 15
    while first.search(probes[0], "exact") != reference.search_by_key(probes[0], 10, "exact").keys:
        assert time.monotonic() < deadline, "the other process never caught up"
        time.sleep(0.1)
    for key in probes:
        for strategy in STRATEGIES:
            assert first.search(key, strategy) == reference.search_by_key(key, 10, strategy).keys
