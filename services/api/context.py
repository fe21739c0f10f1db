"""What the API shares within one process: the settings, the graph store on the process-wide
Neo4j driver (``shared_driver``), the retrieval service (with its embedding matrix cache) and the
encoder, loaded on the first upload and kept."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from flask import Flask, current_app

from services.config import Settings
from services.encoder.imaging import DecodeGate, ReadLimits
from services.graph.store import GraphStore
from services.retrieval.service import RetrievalService

if TYPE_CHECKING:
    from services.encoder.extractor import FeatureExtractor

EXTENSION = "medgraph"


@dataclass
class ApiContext:
    settings: Settings
    _store: GraphStore | None = None
    _retrieval: RetrievalService | None = None
    _extractor: FeatureExtractor | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    # One forward pass at a time: torch already uses every core for one, and a shared model is
    # not documented as safe for concurrent calls.
    _embed_lock: threading.Lock = field(default_factory=threading.Lock)
    # Bounds the images decoded and held as pixels at once (see services/encoder/imaging.py).
    decode_gate: DecodeGate = field(init=False)

    def __post_init__(self) -> None:
        self.decode_gate = DecodeGate(self.settings.decode_slots, self.settings.decode_wait_s)

    @property
    def read_limits(self) -> ReadLimits:
        return ReadLimits.from_settings(self.settings)

    @property
    def store(self) -> GraphStore:
        if self._store is None:
            with self._lock:
                if self._store is None:
                    self._store = GraphStore.from_settings(self.settings)
        return self._store

    @property
    def retrieval(self) -> RetrievalService:
        if self._retrieval is None:
            store = self.store
            with self._lock:
                if self._retrieval is None:
                    self._retrieval = RetrievalService(
                        store, self.settings, live=self.settings.search_live_read_model
                    )
        return self._retrieval

    def embed_with_findings(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The float32 (1024,) unit code of one decoded image and its calibrated predicted
        findings (F,), from one forward pass."""
        extractor = self.extractor()
        with self._embed_lock:
            codes, probabilities = extractor.embed_with_findings([pixels])
        return codes[0], probabilities[0]

    def extractor(self) -> FeatureExtractor:
        """The encoder, loaded once per process (the first upload pays for it; without a
        configured checkpoint, ``ensure_demo_checkpoint`` may first train the demo one)."""
        if self._extractor is None:
            with self._lock:
                if self._extractor is None:
                    # defers torch: the API starts without it; the first upload loads it
                    from services.encoder.extractor import FeatureExtractor, ensure_demo_checkpoint

                    checkpoint = ensure_demo_checkpoint(self.settings)
                    self._extractor = FeatureExtractor(
                        checkpoint, device=self.settings.encoder_device
                    ).load()
        return self._extractor


def install_context(app: Flask, settings: Settings) -> ApiContext:
    context = ApiContext(settings)
    app.extensions[EXTENSION] = context
    return context


def api_context() -> ApiContext:
    return current_app.extensions[EXTENSION]  # type: ignore[no-any-return]
