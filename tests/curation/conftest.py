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
from services.communities.job import run_clustering
from services.config import REPO_ROOT, Settings
from services.curation.deletion import upload_folder
from services.encoder.labels import read_labels
from services.graph.store import GraphStore
from tests.conftest import wipe_graph
from tests.support import authorise, ingest_bundled

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
    folder = upload_folder(settings)
    folder.mkdir(parents=True, exist_ok=True)
    source_of: dict[str, Path] = {}
    raw_patient_of: dict[str, str] = {}
    uploaded: list[str] = []

    def source(index: int, path: Path) -> Path:
        key = hashlib.sha256(path.read_bytes()).hexdigest()
        raw_patient_of[key] = records[index].patient_id
        if index % (len(records) // UPLOADED) == 7 and len(uploaded) < UPLOADED:
            copy = folder / f"{key}.png"
            shutil.copyfile(path, copy)
            uploaded.append(key)
            path = copy
        source_of[key] = path
        return path

    ingest_bundled(store, settings, source=source)
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
