"""Small helpers shared by test folders (fixtures live in conftest.py files)."""

from __future__ import annotations

import numpy as np
from flask.testing import FlaskClient

from services.auth.api_keys import create_api_key
from services.config import REPO_ROOT, Settings
from services.graph.store import GraphStore
from services.secrets import patient_key_secret
from workers.encoder.imaging import ReadLimits, read_image
from workers.encoder.labels import read_labels
from workers.ingest.edges import build_edges
from workers.ingest.pipeline import FileEntry, embed_files, patient_key, write_image_rows

BUNDLED_DIR = REPO_ROOT / "data" / "nih-cxr14-64px"


def authorise(
    client: FlaskClient, store: GraphStore, scopes: tuple[str, ...] = ("read", "write")
) -> str:
    """Gives a Flask test client a fresh API key (keys live in the graph, so wipes remove them)."""
    token = create_api_key(store, "tests", scopes).token  # type: ignore[arg-type]
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    return token


class PixelProjection:
    """Image codes without a trained network: mean-centred pixels times a fixed Gaussian matrix,
    L2-normalised (training the DenseNet first would take the tests ~12 minutes)."""

    model_version = "test-pixel-projection"

    def __init__(self, mean_pixels: np.ndarray, dimensions: int = 1024) -> None:
        self.mean = mean_pixels.ravel().astype(np.float64)
        self.projection = np.random.default_rng(0).standard_normal((self.mean.size, dimensions))

    def embed(self, images: list[np.ndarray]) -> np.ndarray:
        centred = np.stack([image.ravel().astype(np.float64) for image in images]) - self.mean
        codes = centred @ self.projection
        return (codes / np.linalg.norm(codes, axis=1, keepdims=True)).astype(np.float32)


def ingest_bundled(store: GraphStore, settings: Settings, count: int | None = None) -> int:
    """The first ``count`` (default all) images of the bundled NIH set through ingestion's own
    steps (labels, hashing, decoding, patient keys, node writes, exact symmetric kNN edges),
    with ``PixelProjection`` codes. Returns the number of images."""
    records = read_labels(BUNDLED_DIR / "labels.csv").records[:count]
    secret = patient_key_secret(settings)
    entries = [
        FileEntry(path=str(record.image_path), findings=list(record.findings),
                  patient_key=patient_key(secret, record.patient_id))
        for record in records
    ]  # fmt: skip
    mean = np.mean([read_image(record.image_path).pixels for record in records], axis=0)
    limits = ReadLimits(settings.max_file_bytes, settings.max_image_pixels)
    outcome = embed_files(entries, PixelProjection(mean), limits=limits, secret=secret)
    assert not outcome.failures, outcome.failures
    write_image_rows(store, outcome.rows, settings.write_batch_size)
    build_edges(store, settings, "bulk")
    return len(records)
