"""Read leases (services/graph/changes.py, services/retrieval/cache.py): a live API process that
holds one searches without a Redis round trip, every deletion waits for it before it answers,
and a process whose lease ended or lapsed is neither waited for nor trusted."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from services.config import Settings
from services.curation.deletion import delete_images
from services.graph.changes import (
    READER,
    READERS,
    Change,
    publish_tombstones,
    redis_client,
    renew_read_lease,
)
from services.graph.store import GraphStore
from services.retrieval import cache as cache_module
from services.retrieval.contract import SearchFilters
from services.retrieval.service import RetrievalService
from tests.retrieval.live_graph import STRATEGIES, LiveGraph, stored_graph

pytestmark = pytest.mark.neo4j
SALT = b"test-salt"


@pytest.fixture
def graph(clean_graph: GraphStore, settings: Settings) -> LiveGraph:
    return stored_graph(clean_graph, settings, n=200, extra=0)


def leased_service(store: GraphStore, settings: Settings, lease_s: float) -> RetrievalService:
    """A live service (no background follow: only deleted keys change its snapshot) once it
    holds its read lease."""
    quiet = settings.model_copy(
        update={"search_follow_interval_s": 3600.0, "search_read_lease_s": lease_s}
    )
    service = RetrievalService(store, quiet, live=True)
    service.read_model.get()  # the first load, and the lease thread started
    deadline = time.monotonic() + 30
    while not service.read_model.stats()["lease_renewals"]:
        assert time.monotonic() < deadline, "no read lease was taken"
        time.sleep(0.01)
    return service


@pytest.fixture
def leased(
    clean_graph: GraphStore, settings: Settings, graph: LiveGraph
) -> Iterator[RetrievalService]:
    # Renewed every 0.5 s: a deletion that did not wait for it would be searched before.
    service = leased_service(clean_graph, settings, lease_s=5.0)
    try:
        yield service
    finally:
        service.read_model.close()


def test_a_leased_process_searches_without_redis_and_never_returns_a_deleted_image(
    clean_graph: GraphStore, settings: Settings, graph: LiveGraph, leased: RetrievalService
) -> None:
    for victim in graph.keys[5:8]:
        query = graph.embedding_of(victim)
        for strategy in STRATEGIES:
            hits = leased.search(query, 3, strategy, SearchFilters())
            assert hits.keys[0] == victim
            assert "deleted_check" not in hits.diagnostics.stage_ms  # no Redis round trip
        assert leased.stored_query(victim).key == victim
        # As another API process would: stored, published, and answered only once this
        # process has applied it.
        delete_images(clean_graph, settings, [victim], actor="test", salt=SALT)
        for strategy in STRATEGIES:
            hits = leased.search(query, 3, strategy, SearchFilters())
            assert victim not in hits.keys, strategy
            assert "deleted_check" not in hits.diagnostics.stage_ms
        # Dropped by the lease thread, not by following the log.
        assert (leased.read_model.applies, leased.read_model.loads) == (0, 1)


def test_a_process_that_stopped_is_not_waited_for_and_checks_redis_again(
    clean_graph: GraphStore, settings: Settings, graph: LiveGraph, leased: RetrievalService
) -> None:
    leased.read_model.close()  # its lease given up: deletions do not wait for it
    victim = graph.keys[9]
    deadline = time.monotonic() + 10
    while leased.read_model._leaser is not None and leased.read_model._leaser.is_alive():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    epoch = leased.read_model.current().version[5]
    readers = redis_client(settings).smembers(READERS.format(epoch=epoch))
    assert leased.read_model._reader not in readers
    assert not redis_client(settings).exists(READER.format(epoch=epoch) + leased.read_model._reader)
    delete_images(clean_graph, settings, [victim], actor="test", salt=SALT)
    for strategy in STRATEGIES:
        hits = leased.search(graph.embedding_of(victim), 3, strategy, SearchFilters())
        assert victim not in hits.keys, strategy
        assert "deleted_check" in hits.diagnostics.stage_ms  # trusted no more: Redis is read


def test_a_stalled_lease_thread_lets_its_lease_lapse_before_a_deletion_answers(
    clean_graph: GraphStore,
    settings: Settings,
    graph: LiveGraph,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    service = leased_service(clean_graph, settings, lease_s=1.0)
    stalled = threading.Event()
    release = threading.Event()
    renew = cache_module.renew_read_lease

    def stall(*args: object, **kwargs: object) -> int:
        stalled.set()
        release.wait(30)  # a process whose lease thread hangs (a GIL-bound build, a pause)
        return renew(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(cache_module, "renew_read_lease", stall)
    try:
        assert stalled.wait(10)
        victim = graph.keys[11]
        delete_images(clean_graph, settings, [victim], actor="test", salt=SALT)
        for strategy in STRATEGIES:
            hits = service.search(graph.embedding_of(victim), 3, strategy, SearchFilters())
            assert victim not in hits.keys, strategy
            assert "deleted_check" in hits.diagnostics.stage_ms
    finally:
        release.set()
        service.read_model.close()


def test_a_deletion_waits_for_each_reader_until_it_applied_it_or_its_lease_ended(
    settings: Settings, graph: LiveGraph
) -> None:
    client = redis_client(settings)
    epoch = f"lease-test-{time.monotonic_ns()}"
    renew_read_lease(client, epoch, "behind", 0, 30.0)
    renew_read_lease(client, epoch, "lapsing", 0, 1.0)
    renew_read_lease(client, epoch, "ahead", 7, 30.0)
    published = threading.Event()

    def publish() -> None:
        publish_tombstones(settings, ["img-x"], Change(7, epoch))
        published.set()

    thread = threading.Thread(target=publish, daemon=True)
    thread.start()
    time.sleep(1.5)  # "lapsing" is over by now; "behind" holds for 30 s
    assert not published.is_set()
    assert renew_read_lease(client, epoch, "behind", 7, 30.0) == 7  # applied: acknowledged
    assert published.wait(10)
    assert client.smembers(f"medgraph:search:{epoch}:readers") == {"behind", "ahead"}
