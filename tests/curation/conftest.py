"""The bundled NIH set (733 real images) ingested through ingestion's own steps (exact kNN edges
with their floors) and clustered by the clustering job, with three of its files kept in the
upload folder as ``add=true`` would keep them."""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from flask import Flask
from flask.testing import FlaskClient

from services.api import create_app
from services.config import REPO_ROOT, Settings
from services.curation.deletion import upload_folder
from services.graph.store import GraphStore
from services.secrets import patient_key_secret
from tests.conftest import wipe_graph
from tests.support import PixelProjection, authorise
from workers.communities.job import run_clustering
from workers.encoder.imaging import ReadLimits, read_image
from workers.encoder.labels import read_labels
from workers.ingest.edges import build_edges
from workers.ingest.pipeline import FileEntry, embed_files, patient_key, write_image_rows

BUNDLED = REPO_ROOT / "data" / "nih-cxr14-64px"
UPLOADED = 3  # files stored in the upload folder, as add=true keeps them


@dataclass
class BundledGraph:
    settings: Settings  # data roots: the bundled folder and a temporary root with uploads
    keys: list[str]
    raw_patient_of: dict[str, str]  # key -> raw NIH patient id (only the test knows it)
    source_of: dict[str, Path]
    embedding_of: dict[str, np.ndarray]
    uploaded: list[str]  # keys whose file lies in the upload folder


def build_bundled_graph(store: GraphStore, settings: Settings) -> BundledGraph:
    wipe_graph(store)
    records = read_labels(BUNDLED / "labels.csv").records
    secret = patient_key_secret(settings)
    folder = upload_folder(settings)
    folder.mkdir(parents=True, exist_ok=True)
    entries: list[FileEntry] = []
    raw_patient_of: dict[str, str] = {}
    source_of: dict[str, Path] = {}
    uploaded: list[str] = []
    for index, record in enumerate(records):
        key = hashlib.sha256(record.image_path.read_bytes()).hexdigest()
        path = record.image_path
        if index % (len(records) // UPLOADED) == 7 and len(uploaded) < UPLOADED:
            path = folder / f"{key}.png"
            shutil.copyfile(record.image_path, path)
            uploaded.append(key)
        entries.append(
            FileEntry(path=str(path), findings=list(record.findings),
                      patient_key=patient_key(secret, record.patient_id))
        )  # fmt: skip
        raw_patient_of[key] = record.patient_id
        source_of[key] = path
    mean = np.mean([read_image(record.image_path).pixels for record in records], axis=0)
    limits = ReadLimits(settings.max_file_bytes, settings.max_image_pixels)
    outcome = embed_files(entries, PixelProjection(mean), limits=limits, secret=secret)
    assert not outcome.failures, outcome.failures
    write_image_rows(store, outcome.rows, settings.write_batch_size)
    build_edges(store, settings, "bulk")
    run_clustering(store, settings, algorithm="leiden")
    embedding_of = {
        record["key"]: np.asarray(record["embedding"], dtype=np.float32)
        for record in store.run_text(
            "MATCH (i:Image) RETURN i.key AS key, i.embedding AS embedding"
        )
    }
    return BundledGraph(
        settings, sorted(embedding_of), raw_patient_of, source_of, embedding_of, uploaded
    )


@pytest.fixture(scope="module")
def curation_settings(stack: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    root = tmp_path_factory.mktemp("curation-root")
    return stack.model_copy(
        update={"data_roots": [BUNDLED.parent, root], "api_upload_dir": root / "uploads",
                "api_rate_limit_per_minute": 0}
    )  # fmt: skip


@pytest.fixture(scope="module")
def bundled_graph(graph_store: GraphStore, curation_settings: Settings) -> BundledGraph:
    return build_bundled_graph(graph_store, curation_settings)


@pytest.fixture(scope="module")
def curation_app(curation_settings: Settings, graph_store: GraphStore) -> Flask:
    application = create_app(curation_settings)
    application.config["TESTING"] = False
    return application


@pytest.fixture
def writer(curation_app: Flask, graph_store: GraphStore) -> FlaskClient:
    client = curation_app.test_client()
    authorise(client, graph_store, ("read", "write"))
    return client
