"""Small helpers shared by test folders (fixtures live in conftest.py files)."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
from flask.testing import FlaskClient
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from services.auth.api_keys import create_api_key
from services.config import REPO_ROOT, Settings
from services.encoder.imaging import ReadLimits, read_image
from services.encoder.labels import read_labels
from services.graph.store import GraphStore
from services.ingest.edges import build_edges
from services.ingest.pipeline import FileEntry, embed_files, patient_key, write_image_rows
from services.secrets import patient_key_secret

BUNDLED_DIR = REPO_ROOT / "data" / "nih-cxr14-64px"
DX_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"  # SOP class: Digital X-Ray, for presentation
CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"  # SOP class: Computed Radiography


def authorise(
    client: FlaskClient, store: GraphStore, scopes: tuple[str, ...] = ("read", "write")
) -> str:
    """Gives a Flask test client a fresh API key (keys live in the graph, so wipes remove them)."""
    token = create_api_key(store, "tests", scopes).token  # type: ignore[arg-type]
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    return token


class PixelProjection:
    """Image codes without a trained network: mean-centred pixels times a fixed Gaussian matrix,
    L2-normalised (training the DenseNet first would take the tests ~12 minutes). Its "finding
    probabilities" are the sigmoid of 14 more fixed projections: deterministic, varied, in
    [0, 1], with no medical meaning."""

    model_version = "test-pixel-projection"
    findings = 14

    def __init__(self, mean_pixels: np.ndarray, dimensions: int = 1024) -> None:
        self.mean = mean_pixels.ravel().astype(np.float64)
        generator = np.random.default_rng(0)
        self.projection = generator.standard_normal((self.mean.size, dimensions))
        self.finding_projection = generator.standard_normal((self.mean.size, self.findings))

    def embed(self, images: list[np.ndarray]) -> np.ndarray:
        return self.embed_with_findings(images)[0]

    def embed_with_findings(self, images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        centred = np.stack([image.ravel().astype(np.float64) for image in images]) - self.mean
        codes = centred @ self.projection
        logits = centred @ self.finding_projection / np.sqrt(self.mean.size)
        return (
            (codes / np.linalg.norm(codes, axis=1, keepdims=True)).astype(np.float32),
            (1.0 / (1.0 + np.exp(-logits))).astype(np.float32),
        )


def ingest_bundled(
    store: GraphStore,
    settings: Settings,
    count: int | None = None,
    source: Callable[[int, Path], Path] | None = None,
) -> int:
    """The first ``count`` (default all) images of the bundled NIH set through ingestion's own
    steps (labels, hashing, decoding, patient keys, node writes, exact symmetric kNN edges),
    with ``PixelProjection`` codes. ``source(index, bundled file)`` may name another file (a
    copy) to ingest instead. Returns the number of images."""
    records = read_labels(BUNDLED_DIR / "labels.csv").records[:count]
    secret = patient_key_secret(settings)
    pick = source or (lambda _index, path: path)
    entries = [
        FileEntry(path=str(pick(index, record.image_path)), findings=list(record.findings),
                  patient_key=patient_key(secret, record.patient_id))
        for index, record in enumerate(records)
    ]  # fmt: skip
    mean = np.mean([read_image(record.image_path).pixels for record in records], axis=0)
    limits = ReadLimits(settings.max_file_bytes, settings.max_image_pixels)
    outcome = embed_files(entries, PixelProjection(mean), limits=limits, secret=secret)
    assert not outcome.failures, outcome.failures
    write_image_rows(store, outcome.rows, settings.write_batch_size)
    build_edges(store, settings, "bulk")
    return len(records)


def dicom_dataset(
    stored: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    patient_id: str | None = None,
    modality: str = "DX",
    sop_class: str = DX_IMAGE_STORAGE,
    **elements: object,
) -> Dataset:
    """A DICOM dataset with ``stored`` (unsigned ints) as its pixel data; ``elements`` are set
    by keyword last, so they can also overwrite what the pixels implied (to make bad files)."""
    dataset = Dataset()
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset.file_meta.MediaStorageSOPClassUID = sop_class
    dataset.SOPClassUID = sop_class
    dataset.SOPInstanceUID = generate_uid()
    dataset.Modality = modality
    if patient_id is not None:
        dataset.PatientID = patient_id
    dataset.set_pixel_data(stored, photometric, bits_stored, generate_instance_uid=False)
    for keyword, value in elements.items():
        setattr(dataset, keyword, value)
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    return dataset


def dicom_bytes(dataset: Dataset) -> bytes:
    """A Part 10 file (preamble, DICM marker, file meta) of ``dataset``."""
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
