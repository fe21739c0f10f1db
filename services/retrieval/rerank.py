"""Re-ranking a strategy's results by the images' predicted findings.

The encoder's classifier knows more about a film than its code's cosine shows: on unseen
patients the held-out evaluation (``medgraph evaluate --held-out``, row "re-ranked by findings")
gained 6.8 points of precision@50 on the 128-px set [+4.4, +9.6] by re-ordering the cosine's
first 8 x K results by how likely the two images' findings agree. Every image's calibrated
finding probabilities are stored at ingestion (``Image.finding_probabilities``,
``FeatureExtractor.embed_with_findings``) and held in the read model, so the search re-ranks in
memory:

    hits = service.search(query, k, strategy, filters, findings=query_probabilities)

Contract: ``query_probabilities`` float (F,) in [0, 1], the query's calibrated probabilities in
the stored images' finding order (the same checkpoint); the strategy is asked for
``RERANK_CANDIDATES_PER_K * k`` results (``region``: Algorithm 1 grows that larger region), which
are re-ordered by ``finding_agreement`` (ties and images stored without probabilities keep the
strategy's order, after the scored ones) and cut to k. ``SearchHits.cosines`` stay each hit's
cosine; ``SearchHits.agreement`` holds the scores the rank came from.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from services.retrieval.contract import FindingsUnavailable, SearchHits

if TYPE_CHECKING:  # only the type: the held-out evaluation uses this module without Neo4j
    from services.retrieval.readmodel import GraphSnapshot

# The re-ranking looks at this many times K of the strategy's results. On the bundled sets'
# held-out queries (bench/rerank_candidates.py) precision@50 keeps rising with more of them,
# but the 128-px set's ACG_p@50 peaks at 4-8 x K and falls beyond: 8 x K is the compromise.
RERANK_CANDIDATES_PER_K = 8
# A probability of exactly 0 or 1 must not give log(0).
PROBABILITY_FLOOR = 1e-6


def finding_agreement(query: np.ndarray, found: np.ndarray) -> np.ndarray:
    """log P(two images agree on every finding), summed over findings, if the calibrated
    probabilities held and the findings were independent: sum_f log(q_f d_f + (1-q_f)(1-d_f)).

    ``query`` (..., F) broadcasts against ``found`` (..., F); returns float64 (...). Higher is
    better; it prefers images whose findings are confidently the query's (for a normal film,
    clearly normal films over ambiguous ones at a similar cosine)."""
    query = np.clip(np.asarray(query, dtype=np.float64), PROBABILITY_FLOOR, 1 - PROBABILITY_FLOOR)
    found = np.clip(np.asarray(found, dtype=np.float64), PROBABILITY_FLOOR, 1 - PROBABILITY_FLOOR)
    return np.log(query * found + (1 - query) * (1 - found)).sum(axis=-1)


def check_query_probabilities(probabilities: object, snapshot: GraphSnapshot) -> np.ndarray:
    """The query's probabilities as float64 (F,), or FindingsUnavailable / ValueError."""
    stored = snapshot.finding_probabilities
    if stored.shape[1] == 0 or not np.isfinite(stored).all(axis=1).any():
        raise FindingsUnavailable(
            "no stored image has predicted findings (ingested before they were stored, or by "
            "an embedder without a classifier): ingest the images again to re-rank by findings"
        )
    vector = np.asarray(probabilities, dtype=np.float64)
    if vector.shape != (stored.shape[1],):
        raise FindingsUnavailable(
            f"the query has {vector.shape[-1] if vector.ndim else 0} predicted findings and the "
            f"stored images {stored.shape[1]}: they come from different encoder checkpoints"
        )
    if not np.all(np.isfinite(vector)) or vector.min() < 0 or vector.max() > 1:
        raise ValueError("query finding probabilities must be finite and within [0, 1]")
    return vector


def rerank_by_findings(
    hits: SearchHits, snapshot: GraphSnapshot, query_probabilities: np.ndarray, k: int
) -> SearchHits:
    """The k best of ``hits`` by ``finding_agreement`` with the query (stable: ties keep the
    strategy's order); images without stored probabilities come after every scored one."""
    with hits.diagnostics.stage("rerank"):
        rows = np.array([snapshot.key_index.get(key, -1) for key in hits.keys], dtype=np.int64)
        scores = np.full(len(rows), -np.inf)
        known = rows >= 0
        if known.any():
            found = snapshot.finding_probabilities[rows[known]]
            scored = finding_agreement(query_probabilities[None, :], found)
            scores[known] = np.where(np.isfinite(found).all(axis=1), scored, -np.inf)
        order = np.argsort(-scores, kind="stable")[:k]
    hits.diagnostics.rerank_candidates = len(hits.keys)
    return SearchHits(
        keys=tuple(hits.keys[i] for i in order),
        cosines=hits.cosines[order],
        communities=tuple(hits.communities[i] for i in order),
        findings=tuple(hits.findings[i] for i in order),
        diagnostics=hits.diagnostics,
        agreement=scores[order].astype(np.float32),
    )
