"""A graph of real bundled NIH images, with real files behind it, for the REST API tests.

The encoder is a DenseNet-121 with random (seeded) weights saved as a proper checkpoint: its
codes carry no medical meaning, but they are deterministic, so what the API returns can be
checked against what the test computes independently from the same codes.
"""

from __future__ import annotations

import csv
import hashlib
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import networkx as nx
import numpy as np
import pytest
import torch
from flask import Flask
from flask.testing import FlaskClient

from services.api import create_app
from services.config import REPO_ROOT, Settings
from services.encoder.checkpoint import EncoderCheckpoint, save_checkpoint
from services.encoder.extractor import FeatureExtractor
from services.encoder.imaging import read_image
from services.encoder.network import build_densenet121
from services.encoder.preprocessing import Normalisation
from services.evaluation.fixtures import PreparedImage, write_graph
from services.graph.store import GraphStore
from services.ingest.pipeline import patient_key
from services.secrets import patient_key_secret
from tests.conftest import wipe_graph
from tests.retrieval.reference import knn_edges
from tests.support import authorise

BUNDLED = REPO_ROOT / "data" / "nih-cxr14-64px"
STORED_IMAGES = 72
HELD_OUT = 4
QUERY_EDGES = 6
MAX_UPLOAD = 256 * 1024


@dataclass
class ApiGraph:
    root: Path  # the data root holding the files
    keys: list[str]
    embeddings: dict[str, np.ndarray]
    edges: dict[tuple[str, str], float]
    community_of: dict[str, int]
    findings: dict[str, tuple[str, ...]]
    patient_of: dict[str, str]  # key -> patient key (HMAC)
    raw_patient_of: dict[str, str]  # key -> the NIH patient id (only the test knows it)
    path_of: dict[str, Path]
    held_out: list[Path]  # bundled files not in the graph, for uploads
    probabilities: dict[str, np.ndarray]  # key -> the encoder's calibrated predicted findings

    @property
    def graph(self) -> nx.Graph:
        graph = nx.Graph()
        graph.add_nodes_from(self.keys)
        graph.add_weighted_edges_from((a, b, w) for (a, b), w in self.edges.items())
        return graph


@pytest.fixture(scope="session")
def random_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    findings = ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule")
    model = build_densenet121(len(findings))
    checkpoint = EncoderCheckpoint(
        findings=findings,
        image_size=64,
        normalisation=Normalisation(0.5, 0.25),
        state_dict=model.state_dict(),
    )
    return save_checkpoint(tmp_path_factory.mktemp("model") / "random-densenet.pt", checkpoint)


@pytest.fixture(scope="session")
def api_settings(
    settings: Settings, random_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    root = tmp_path_factory.mktemp("data-root")
    return settings.model_copy(
        update={
            "data_roots": [root],
            "encoder_checkpoint": random_checkpoint,
            "api_max_upload_bytes": MAX_UPLOAD,
            "region_query_edges": QUERY_EDGES,
        }
    )


def bundled_labels() -> list[dict[str, str]]:
    with (BUNDLED / "labels.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


RUN_ID = "api-test-graph"


@pytest.fixture(scope="session")
def api_graph_data(api_settings: Settings) -> ApiGraph:
    """The files, codes, edges and communities (computed once per session)."""
    root = api_settings.data_roots[0]
    images_dir = root / "nih"
    images_dir.mkdir(exist_ok=True)
    rows = bundled_labels()[: STORED_IMAGES + HELD_OUT]
    secret = patient_key_secret(api_settings)
    extractor = FeatureExtractor(api_settings.encoder_checkpoint).load()  # type: ignore[arg-type]
    paths = []
    for row in rows:
        target = images_dir / row["Image Index"]
        shutil.copyfile(BUNDLED / "images" / row["Image Index"], target)
        paths.append(target)
    codes, predicted = extractor.embed_with_findings(
        [read_image(path).pixels for path in paths[:STORED_IMAGES]]
    )
    keys, embeddings, findings, patient_of, raw_patient_of, path_of = [], {}, {}, {}, {}, {}
    probabilities = {}
    for row, path, code, prediction in zip(rows, paths, codes, predicted, strict=False):
        key = hashlib.sha256(path.read_bytes()).hexdigest()
        keys.append(key)
        embeddings[key] = code
        probabilities[key] = prediction
        labels = [] if row["Finding Labels"] == "No Finding" else row["Finding Labels"].split("|")
        findings[key] = tuple(labels)
        raw_patient_of[key] = row["Patient ID"]
        patient_of[key] = patient_key(secret, row["Patient ID"])
        path_of[key] = path
    edges = knn_edges(embeddings, 5)
    graph = nx.Graph()
    graph.add_nodes_from(keys)
    graph.add_weighted_edges_from((a, b, w) for (a, b), w in edges.items())
    communities = nx.community.louvain_communities(graph, weight="weight", seed=3)
    community_of = {key: index for index, members in enumerate(communities) for key in members}
    return ApiGraph(
        root=root,
        keys=keys,
        embeddings=embeddings,
        edges=edges,
        community_of=community_of,
        findings=findings,
        patient_of=patient_of,
        raw_patient_of=raw_patient_of,
        path_of=path_of,
        held_out=paths[STORED_IMAGES:],
        probabilities=probabilities,
    )


@pytest.fixture
def api_graph(graph_store: GraphStore, api_graph_data: ApiGraph) -> ApiGraph:
    """The graph in Neo4j, written again whenever another test changed the database."""
    state = graph_store.run_text(
        "MATCH (i:Image) WITH count(i) AS images "
        "OPTIONAL MATCH (r:ClusteringRun {id: $run}) RETURN images, count(r) AS runs",
        run=RUN_ID,
    )[0]
    if state["images"] != STORED_IMAGES or state["runs"] != 1:
        write_api_graph(graph_store, api_graph_data)
    return api_graph_data


def write_api_graph(store: GraphStore, data: ApiGraph) -> None:
    wipe_graph(store)
    keys, embeddings, community_of = data.keys, data.embeddings, data.community_of
    findings, patient_of, path_of, edges = data.findings, data.patient_of, data.path_of, data.edges
    write_graph(
        store,
        [
            PreparedImage(
                key=key,
                embedding=embeddings[key],
                community=community_of[key],
                findings=findings[key],
                patient_key=patient_of[key],
                source=str(path_of[key]),
                file_bytes=path_of[key].stat().st_size,
                finding_probabilities=tuple(data.probabilities[key].tolist()),
            )
            for key in keys
        ],
        [(a, b, w) for (a, b), w in edges.items()],
        run_id=RUN_ID,
    )
    store.run_text("CALL db.awaitIndexes(120)")


@pytest.fixture(scope="session")
def app(api_settings: Settings, graph_store: GraphStore) -> Flask:
    application = create_app(api_settings)
    application.config["TESTING"] = False  # errors must go through the JSON handlers
    return application


@pytest.fixture
def client(app: Flask, api_graph: ApiGraph, graph_store: GraphStore) -> Iterator[FlaskClient]:
    with app.test_client() as test_client:
        authorise(test_client, graph_store)
        yield test_client


def exact_top(graph: ApiGraph, query: np.ndarray, k: int, excluded: set[str]) -> list[str]:
    """Brute force written here, independently of services.retrieval."""
    candidates = [key for key in graph.keys if key not in excluded]
    scores = {
        key: float(np.dot(graph.embeddings[key].astype(np.float64), query)) for key in candidates
    }
    return sorted(candidates, key=lambda key: (-scores[key], key))[:k]
