"""The dashboard runs in real headless Chromium against the real Flask app over a real Neo4j.

The graph is built by the real ingestion and clustering code from a slice of the bundled NIH
set: ``embed_files`` (hashing, decoding, patient keys from the labels), ``write_image_rows``,
``build_edges`` (exact symmetric kNN) and ``run_clustering`` (communities with their finding
histograms). Only the encoder is replaced: the image codes are a fixed random projection of the
mean-centred pixels, not DenseNet codes, because these tests check the page, not the retrieval
quality, and must not train a network first.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from werkzeug.serving import BaseWSGIServer, make_server

from services.api.app import create_app
from services.auth.api_keys import create_api_key
from services.communities.job import ClusteringSummary, run_clustering
from services.config import Settings
from services.dashboard.screenshot import launch_chromium
from services.graph.store import GraphStore
from services.privacy import open_source
from services.secrets import patient_key_secret
from tests.conftest import wipe_graph
from tests.support import ingest_bundled

SEED_IMAGES = 150


@dataclass(frozen=True)
class StoredImage:
    key: str
    findings: tuple[str, ...]
    community: int | None
    patient_key: str | None
    source: str


@dataclass(frozen=True)
class SeededGraph:
    images: list[StoredImage]
    edges: list[tuple[str, str, float]]
    clustering: ClusteringSummary

    def neighbours(self, key: str, min_weight: float = -1.0) -> set[str]:
        found = set()
        for a, b, weight in self.edges:
            if weight >= min_weight and key in (a, b):
                found.add(b if a == key else a)
        return found

    @property
    def communities(self) -> set[int]:
        return {image.community for image in self.images if image.community is not None}

    def community_sizes(self) -> dict[int, int]:
        return dict(Counter(i.community for i in self.images if i.community is not None))


@pytest.fixture(scope="session")
def seeded_graph(graph_store: GraphStore, settings: Settings) -> SeededGraph:
    wipe_graph(graph_store)
    ingest_bundled(graph_store, settings, SEED_IMAGES)
    summary = run_clustering(graph_store, settings)
    edges = [
        (record["source"], record["target"], float(record["weight"]))
        for record in graph_store.query("similar_edges")
    ]
    secret = patient_key_secret(settings)
    images = [
        StoredImage(
            key=row["key"],
            findings=tuple(row["findings"] or ()),
            community=row["community"],
            patient_key=row["patient_key"],
            source=open_source(secret, row["source"]) or "",
        )
        for row in graph_store.query("image_overview")
    ]
    return SeededGraph(images=images, edges=edges, clustering=summary)


@pytest.fixture(scope="session")
def read_token(seeded_graph: SeededGraph, graph_store: GraphStore) -> str:
    """A read-scope API key, as a user would paste it into the page."""
    return create_api_key(graph_store, "dashboard-tests", ("read",)).token


@pytest.fixture(scope="session")
def dashboard_url(seeded_graph: SeededGraph, settings: Settings) -> Iterator[str]:
    """The real app (API + dashboard) on the slot's API port, in a thread of this process."""
    app = create_app(settings)
    server: BaseWSGIServer = make_server(settings.api_host, settings.api_port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="dashboard-test-server")
    thread.start()
    try:
        yield f"http://{settings.api_host}:{settings.api_port}/dashboard/"
    finally:
        server.shutdown()
        thread.join(timeout=10)


@pytest.fixture(scope="session")
def chromium() -> Iterator[object]:
    with launch_chromium() as browser:
        yield browser


@pytest.fixture
def page(chromium: object, artifacts_dir: Path) -> Iterator[object]:
    """A fresh laptop-sized tab; browser console errors are collected on ``page.console_errors``."""
    context = chromium.new_context(viewport={"width": 1366, "height": 900})  # type: ignore[attr-defined]
    # Generous: the development machine is shared and sometimes heavily loaded.
    context.set_default_timeout(90_000)
    tab = context.new_page()
    tab.console_errors = []
    tab.on(
        "console",
        lambda message: message.type == "error" and tab.console_errors.append(message.text),
    )
    tab.on("pageerror", lambda error: tab.console_errors.append(str(error)))
    try:
        yield tab
    finally:
        context.close()


@pytest.fixture
def keyed_page(page: object, read_token: str) -> object:
    """A tab whose session already holds the read key (as after typing it in once)."""
    page.context.add_init_script(  # type: ignore[attr-defined]
        f"sessionStorage.setItem('medgraph.apiKey', {read_token!r})"
    )
    return page


class Timings:
    """Wall-clock figures of page actions, written for the README (never asserted)."""

    def __init__(self) -> None:
        self.figures: dict[str, float] = {}

    def measure(self, name: str) -> _Stopwatch:
        return _Stopwatch(self, name)


class _Stopwatch:
    def __init__(self, timings: Timings, name: str) -> None:
        self.timings, self.name = timings, name

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.timings.figures[self.name] = round((time.perf_counter() - self.start) * 1000.0, 1)


@pytest.fixture(scope="session")
def timings(artifacts_dir: Path) -> Iterator[Timings]:
    collected = Timings()
    yield collected
    if collected.figures:
        (artifacts_dir / "dashboard-timings.json").write_text(
            json.dumps({"unit": "ms", "images": SEED_IMAGES, **collected.figures}, indent=2)
        )
