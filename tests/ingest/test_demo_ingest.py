"""Acceptance 1 and 2: the bundled NIH set through the real CLI, Celery worker, Redis and Neo4j."""

from __future__ import annotations

import csv
import hmac
from hashlib import sha256
from pathlib import Path

import numpy as np
import pytest

from services.config import Settings
from services.encoder.extractor import FeatureExtractor
from services.encoder.imaging import read_image
from services.encoder.labels import FINDINGS_NIH, read_labels
from services.graph.store import GraphStore
from services.privacy import SEALED_PREFIX, open_source
from services.secrets import patient_key_secret
from tests.ingest.conftest import (
    BUNDLED_DIR,
    BUNDLED_IMAGES,
    BUNDLED_LABELS,
    exact_top_k,
    file_sha256,
    graph_counts,
    image_property,
    stored_edges,
    stored_embeddings,
    wipe,
)

pytestmark = [pytest.mark.neo4j, pytest.mark.redis, pytest.mark.slow]
TIE_TOLERANCE = 1e-6


@pytest.fixture(scope="module")
def demo_ingest(graph_store: GraphStore, ingest_worker: str, medgraph_cli, tmp_path_factory):
    """The bundled set ingested once from an empty database."""
    wipe(graph_store)
    report = tmp_path_factory.mktemp("demo") / "failures.csv"
    result = medgraph_cli(
        "ingest", BUNDLED_DIR, "--labels", BUNDLED_LABELS, "--report", report,
        "--job-id", "demo-first", "--no-local-worker", "--no-progress",
    )  # fmt: skip
    assert result.returncode == 0, result.output
    return result, report


def test_one_image_per_distinct_file_with_csv_findings_and_patients(
    demo_ingest, graph_store: GraphStore, settings: Settings
) -> None:
    result, report = demo_ingest
    files = sorted(BUNDLED_IMAGES.glob("*.png"))
    by_key = {file_sha256(file): file for file in files}
    records = graph_store.run_text(
        "MATCH (i:Image) OPTIONAL MATCH (p:Patient)-[:HAS_IMAGE]->(i) "
        "RETURN i.key AS key, i.source AS source, i.findings AS findings, "
        "i.patient_key AS patient_key, collect(p.key) AS patients, i.modality AS modality, "
        "i.width AS width, i.height AS height, i.file_bytes AS file_bytes, "
        "size(i.embedding) AS dims, i.model_version AS model_version, "
        "i.ingested_at IS NOT NULL AS dated"
    )
    stored = {record["key"]: record for record in records}
    assert len(records) == len(stored) == len(by_key), "one :Image per distinct content"
    assert set(stored) == set(by_key)

    labels = {record.image_path.name: record for record in read_labels(BUNDLED_LABELS).records}
    secret = patient_key_secret(settings)
    for key, file in by_key.items():
        node, label = stored[key], labels[file.name]
        assert Path(open_source(secret, node["source"]) or "") == file.absolute()
        assert node["source"].startswith(SEALED_PREFIX) and file.stem not in node["source"]
        assert sorted(node["findings"]) == sorted(label.findings)
        expected_patient = hmac.new(secret, label.patient_id.encode(), sha256).hexdigest()
        assert node["patient_key"] == expected_patient
        assert node["patients"] == [expected_patient], "exactly one HAS_IMAGE, to its patient"
        assert (node["modality"], node["width"], node["height"]) == ("PNG", 64, 64)
        assert node["file_bytes"] == file.stat().st_size
        assert node["dims"] == 1024 and node["model_version"] and node["dated"]

    raw_ids = sorted({label.patient_id for label in labels.values()})
    counts = graph_counts(graph_store)
    assert counts["patients"] == len(raw_ids) == 215
    leaked = graph_store.run_text(
        "MATCH (n) UNWIND keys(n) AS name WITH n[name] AS value "
        "WHERE value IN $raw RETURN count(*) AS n",
        raw=raw_ids,
    )[0]["n"]
    assert leaked == 0, "a raw patient id is stored somewhere"

    with report.open(newline="") as handle:
        assert list(csv.reader(handle)) == [["file", "reason"]]
    assert "733 stored, 0 failed" in result.output


def test_reingesting_changes_no_counts(
    demo_ingest, graph_store: GraphStore, medgraph_cli, tmp_path: Path
) -> None:
    before = graph_counts(graph_store)
    first_seen = image_property(graph_store, "ingested_at")
    edges_before = {edge["id"]: edge for edge in stored_edges(graph_store)}

    result = medgraph_cli(
        "ingest", BUNDLED_DIR, "--labels", BUNDLED_LABELS, "--report", tmp_path / "again.csv",
        "--job-id", "demo-again", "--no-local-worker", "--no-progress",
    )  # fmt: skip
    assert result.returncode == 0, result.output

    assert graph_counts(graph_store) == before
    # ingested_at is when a node was first written.
    assert image_property(graph_store, "ingested_at") == first_seen
    assert {edge["id"]: edge for edge in stored_edges(graph_store)} == edges_before
    # The only new node is the job's own record.
    jobs = graph_store.run_text("MATCH (j:IngestJob) RETURN j.id AS id, j.done AS done")
    assert {record["id"]: record["done"] for record in jobs} == {
        "demo-first": 733, "demo-again": 733,
    }  # fmt: skip


def test_edges_are_the_exact_symmetric_knn_graph(
    demo_ingest, graph_store: GraphStore, settings: Settings
) -> None:
    k = settings.knn_k
    keys, matrix = stored_embeddings(graph_store)
    n = len(keys)
    position = {key: i for i, key in enumerate(keys)}
    top, similarity = exact_top_k(matrix, k)
    kth = similarity[np.arange(n), top[:, -1]]

    edges = stored_edges(graph_store)
    pairs: dict[tuple[int, int], float] = {}
    for edge in edges:
        assert edge["a"] < edge["b"], "one relationship per pair, smaller key -> larger key"
        a, b = position[edge["a"]], position[edge["b"]]
        assert (a, b) not in pairs
        pairs[(a, b)] = edge["weight"]
    weights = np.array(list(pairs.values()))
    cosines = np.array([similarity[a, b] for a, b in pairs])
    assert np.abs(weights - cosines).max() <= 1e-5, "weight = cosine of the stored embeddings"

    degree = np.zeros(n, dtype=int)
    for a, b in pairs:
        degree[a] += 1
        degree[b] += 1
    assert degree.min() >= min(k, n - 1)

    at_or_above_kth = np.zeros(n, dtype=int)
    for a, b in pairs:
        # Nothing but kNN pairs: b is among a's k nearest or a among b's (up to float ties).
        assert max(similarity[a, b] - kth[a], similarity[a, b] - kth[b]) >= -TIE_TOLERANCE
        at_or_above_kth[a] += similarity[a, b] >= kth[a] - TIE_TOLERANCE
        at_or_above_kth[b] += similarity[a, b] >= kth[b] - TIE_TOLERANCE
    for i in range(n):
        for j in top[i]:
            if similarity[i, j] > kth[i] + TIE_TOLERANCE:  # clearly among the k nearest
                assert (min(i, j), max(i, j)) in pairs, f"{keys[j]} is among {keys[i]}'s k nearest"
    # ... and the k-th place is filled too (by any of the images tied for it).
    assert at_or_above_kth.min() >= min(k, n - 1)

    floors = image_property(graph_store, "knn_floor")
    assert np.allclose([floors[key] for key in keys], kth, atol=1e-5)


def test_predicted_findings_are_stored_and_backfilled(
    demo_ingest,
    graph_store: GraphStore,
    ingest_checkpoint: Path,
    medgraph_cli,
    tmp_path: Path,
    settings: Settings,
) -> None:
    """Every image keeps the encoder's calibrated predicted findings (for the search's
    re-ranking); an image stored before they were kept gets them on the next ingest, and the
    search side's read model sees the change."""
    records = graph_store.run_text(
        "MATCH (i:Image) RETURN i.key AS key, i.source AS source, "
        "i.finding_probabilities AS probabilities ORDER BY i.key"
    )
    assert all(len(record["probabilities"] or []) == len(FINDINGS_NIH) for record in records)
    sample = records[:6]
    secret = patient_key_secret(settings)
    extractor = FeatureExtractor(ingest_checkpoint).load()
    _, expected = extractor.embed_with_findings(
        [
            read_image(Path(open_source(secret, record["source"]) or "")).pixels
            for record in sample
        ]  # fmt: skip
    )
    np.testing.assert_allclose([record["probabilities"] for record in sample], expected, atol=1e-5)

    stripped = [record["key"] for record in records[:5]]
    graph_store.run_text(
        "UNWIND $keys AS key MATCH (i:Image {key: key}) REMOVE i.finding_probabilities",
        keys=stripped,
    )
    # The counter's node exists from here on, so the counts below compare like with like.
    generation = graph_store.query("graph_generation_bump")[0]["generation"]
    counts = graph_counts(graph_store)
    edges = {edge["id"]: edge for edge in stored_edges(graph_store)}
    result = medgraph_cli(
        "ingest", BUNDLED_DIR, "--labels", BUNDLED_LABELS, "--report", tmp_path / "fill.csv",
        "--job-id", "demo-backfill", "--no-local-worker", "--no-progress",
    )  # fmt: skip
    assert result.returncode == 0, result.output

    refilled = image_property(graph_store, "finding_probabilities")
    for record in records[:5]:
        np.testing.assert_allclose(refilled[record["key"]], record["probabilities"], atol=1e-5)
    assert graph_store.query("search_graph_version")[0]["generation"] > generation
    assert graph_counts(graph_store) == counts
    assert {edge["id"]: edge for edge in stored_edges(graph_store)} == edges, (
        "same model version: the edges stay"
    )
