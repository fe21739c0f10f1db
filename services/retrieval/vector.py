"""Strategy ``vector``: Neo4j's vector index alone (HNSW, approximate), filtered after the fact.

The index cannot filter while it searches, so it is asked for more candidates than ``k``
(``k`` plus the excluded keys, twice that when a patient is excluded, eight times that with a
finding or modality filter) and asked again with four times as many while too few pass the
filters. Rank = the index's score; the cosines returned are recomputed from the embeddings.
"images examined" counts the candidates the index returned: the nodes HNSW visits internally
are not exposed.
"""

from __future__ import annotations

import numpy as np

from services.graph.store import GraphStore
from services.retrieval.contract import (
    GraphNotReady,
    SearchDiagnostics,
    SearchFilters,
    SearchHits,
    Strategy,
)


class VectorIndexSearch:
    name = Strategy.VECTOR

    def __init__(self, store: GraphStore, *, max_index_candidates: int = 10_000) -> None:
        self.store = store
        self.max_index_candidates = max_index_candidates

    def search(
        self, query: np.ndarray, k: int, filters: SearchFilters, snapshot: object = None
    ) -> SearchHits:
        diagnostics = SearchDiagnostics(strategy=self.name.value)
        fetch = k + len(filters.exclude_keys) + (k if filters.exclude_patient_key else 0)
        if filters.restrictive:
            fetch *= 8
        embedding = query.astype(np.float64).tolist()
        params = filters.cypher_params()
        with diagnostics.stage("index"):
            while True:
                fetch = min(fetch, self.max_index_candidates)
                record = self.store.query(
                    "search_vector", embedding=embedding, fetch=fetch, k=k, **params
                )[0]
                images = int(record["images"])
                hits = record["hits"]
                if len(hits) >= k or fetch >= min(images, self.max_index_candidates):
                    break
                fetch *= 4
        if images == 0:
            raise GraphNotReady("no stored images to search; ingest some first")
        diagnostics.database_size = images
        diagnostics.images_examined = min(fetch, images)
        return SearchHits(
            keys=tuple(hit["key"] for hit in hits),
            cosines=np.array([hit["cosine"] for hit in hits], dtype=np.float32),
            communities=tuple(
                None if hit["community"] is None else int(hit["community"]) for hit in hits
            ),
            findings=tuple(tuple(hit["findings"] or ()) for hit in hits),
            diagnostics=diagnostics,
        )
