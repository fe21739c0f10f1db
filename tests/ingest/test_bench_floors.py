"""The benchmarks' generated graphs are stored *linked*, as ingestion leaves a graph: each
image's ``knn_floor`` is its k-th nearest neighbour's cosine (else the next ingest takes every
image for unlinked and rebuilds all edges in bulk)."""

from __future__ import annotations

import numpy as np

from bench.similarity_graph import knn_edges, knn_floors
from bench.synthetic import generate
from services.ingest.knn import exact_knn, knn_floor


def test_floors_from_the_symmetric_graph_equal_ingestion_floors() -> None:
    data = generate(600, n_clusters=6, seed=4)
    k = 10
    floors = knn_floors(600, knn_edges(data.embeddings, k), k)
    _, cosines = exact_knn(data.embeddings, k)
    np.testing.assert_allclose(floors, knn_floor(cosines, k), atol=1e-6)


def test_an_image_with_fewer_than_k_edges_has_floor_minus_one() -> None:
    data = generate(5, n_clusters=1, seed=1)
    floors = knn_floors(5, knn_edges(data.embeddings, 4), 10)
    assert (floors == -1.0).all()
