"""Strategy ``exact``: brute-force cosine against every stored embedding (the ground truth).

The embeddings live in an in-process matrix cache (:class:`EmbeddingCache`): float32 (N, 1024)
plus integer codes for patient keys and modalities and a boolean column per finding, so filters
are numpy masks. The cache is keyed by the *graph version* — the number of :Image nodes, the
latest ``ingested_at`` and the graph generation that every delete and relabel bumps
(``cypher/search_graph_version.cypher``, three index/count-store reads, about a millisecond) —
checked on every request; a different version reloads the matrix (streamed record by record: at
223,648 images it takes tens of seconds and holds ~0.9 GB), so a deleted image or a changed
finding is never served from it. An embedding rewritten in place by a new ingest without a new
``ingested_at`` is not noticed: call ``invalidate()``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np

from services.graph.cypher import load_cypher
from services.graph.store import GraphStore
from services.retrieval.contract import (
    EMBEDDING_DIM,
    GraphNotReady,
    SearchDiagnostics,
    SearchFilters,
    SearchHits,
    Strategy,
)

GraphVersion = tuple[int, str | None, int]  # images, latest ingested_at, generation


@dataclass
class EmbeddingMatrix:
    version: GraphVersion
    keys: np.ndarray  # str (N,)
    matrix: np.ndarray  # float32 (N, 1024), unit rows
    patient_codes: np.ndarray  # int32 (N,), -1 = no patient key
    patient_code_of: dict[str, int]
    modality_codes: np.ndarray  # int32 (N,), -1 = none
    modality_code_of: dict[str, int]
    findings: list[tuple[str, ...]]
    key_index: dict[str, int] = field(default_factory=dict)
    _finding_columns: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.key_index = {str(key): i for i, key in enumerate(self.keys)}

    def __len__(self) -> int:
        return len(self.keys)

    def finding_column(self, finding: str | None, no_finding: bool) -> np.ndarray:
        name = "\x00no-finding" if no_finding else str(finding)
        column = self._finding_columns.get(name)
        if column is None:
            if no_finding:
                column = np.array([not f for f in self.findings], dtype=bool)
            else:
                column = np.array([finding in f for f in self.findings], dtype=bool)
            self._finding_columns[name] = column
        return column

    def eligible(self, filters: SearchFilters) -> np.ndarray:
        mask = np.ones(len(self), dtype=bool)
        for key in filters.exclude_keys:
            position = self.key_index.get(key)
            if position is not None:
                mask[position] = False
        if filters.exclude_patient_key is not None:
            code = self.patient_code_of.get(filters.exclude_patient_key)
            if code is not None:
                mask &= self.patient_codes != code
        if filters.modality is not None:
            mask &= self.modality_codes == self.modality_code_of.get(filters.modality, -2)
        params = filters.cypher_params()
        if params["finding"] is not None or params["no_finding"]:
            mask &= self.finding_column(params["finding"], bool(params["no_finding"]))  # type: ignore[arg-type]
        return mask


class EmbeddingCache:
    """One matrix per process, reloaded when the graph version changes (thread-safe)."""

    def __init__(self, store: GraphStore) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._matrix: EmbeddingMatrix | None = None
        self.loads = 0

    def version(self) -> GraphVersion:
        record = self.store.query("search_graph_version")[0]
        return int(record["images"]), record["latest"], int(record["generation"])

    def invalidate(self) -> None:
        with self._lock:
            self._matrix = None

    def get(self, diagnostics: SearchDiagnostics | None = None) -> EmbeddingMatrix:
        diagnostics = diagnostics or SearchDiagnostics(strategy="exact")
        with diagnostics.stage("version_check"):
            version = self.version()
        with self._lock:
            if self._matrix is None or self._matrix.version != version:
                with diagnostics.stage("load_matrix"):
                    self._matrix = self._load(version)
                    self.loads += 1
            return self._matrix

    def _load(self, version: GraphVersion) -> EmbeddingMatrix:
        capacity = max(version[0], 1)
        matrix = np.empty((capacity, EMBEDDING_DIM), dtype=np.float32)
        keys: list[str] = []
        patient_code_of: dict[str, int] = {}
        modality_code_of: dict[str, int] = {}
        patient_codes: list[int] = []
        modality_codes: list[int] = []
        findings: list[tuple[str, ...]] = []
        # Streamed: holding every record's list of floats at once would take ~30x the matrix.
        with self.store.driver.session(database=self.store.database) as session:
            for record in session.run(load_cypher("search_embeddings")):
                row = len(keys)
                if row >= matrix.shape[0]:  # images were added since the count was read
                    matrix = np.resize(matrix, (matrix.shape[0] * 2, EMBEDDING_DIM))
                matrix[row] = record["embedding"]
                keys.append(record["key"])
                patient = record["patient_key"]
                patient_codes.append(
                    -1
                    if patient is None
                    else patient_code_of.setdefault(patient, len(patient_code_of))
                )
                modality = record["modality"]
                modality_codes.append(
                    -1
                    if modality is None
                    else modality_code_of.setdefault(modality, len(modality_code_of))
                )
                findings.append(tuple(record["findings"] or ()))
        return EmbeddingMatrix(
            version=version,
            keys=np.array(keys, dtype=str),
            matrix=matrix[: len(keys)],
            patient_codes=np.array(patient_codes, dtype=np.int32),
            patient_code_of=patient_code_of,
            modality_codes=np.array(modality_codes, dtype=np.int32),
            modality_code_of=modality_code_of,
            findings=findings,
        )


def top_k_cosine(
    matrix: np.ndarray, keys: np.ndarray, query: np.ndarray, k: int, eligible: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Indices and float32 cosines of the k best eligible rows; ties broken by key."""
    scores = matrix @ query
    scores[~eligible] = -np.inf
    available = int(eligible.sum())
    k = min(k, available)
    if k == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    if k < len(scores):
        candidates = np.argpartition(-scores, k - 1)[:k]
        # Rows tied with the k-th score but left out by argpartition must compete on the key.
        threshold = scores[candidates].min()
        candidates = np.flatnonzero(scores >= threshold)
    else:
        candidates = np.flatnonzero(eligible)
    order = np.lexsort((keys[candidates], -scores[candidates]))[:k]
    chosen = candidates[order]
    return chosen, scores[chosen].astype(np.float32)


class ExactSearch:
    name = Strategy.EXACT

    def __init__(self, store: GraphStore, cache: EmbeddingCache | None = None) -> None:
        self.store = store
        self.cache = cache or EmbeddingCache(store)

    def search(self, query: np.ndarray, k: int, filters: SearchFilters) -> SearchHits:
        diagnostics = SearchDiagnostics(strategy=self.name.value)
        embeddings = self.cache.get(diagnostics)
        if len(embeddings) == 0:
            raise GraphNotReady("no stored images to search; ingest some first")
        diagnostics.database_size = len(embeddings)
        diagnostics.images_examined = len(embeddings)
        with diagnostics.stage("score"):
            eligible = embeddings.eligible(filters)
            chosen, cosines = top_k_cosine(
                embeddings.matrix, embeddings.keys, query.astype(np.float32), k, eligible
            )
        keys = tuple(str(key) for key in embeddings.keys[chosen])
        with diagnostics.stage("details"):
            details = {
                record["key"]: record
                for record in self.store.query("search_details", keys=list(keys))
            }
        return SearchHits(
            keys=keys,
            cosines=cosines,
            communities=tuple(_community(details.get(key)) for key in keys),
            findings=tuple(embeddings.findings[embeddings.key_index[key]] for key in keys),
            diagnostics=diagnostics,
        )


def _community(record: object) -> int | None:
    if record is None:
        return None
    value = record["community"]  # type: ignore[index]
    return None if value is None else int(value)
