"""POST /api/v1/search: stored-key and uploaded queries, every strategy, and bad requests."""

from __future__ import annotations

import io

import numpy as np
import pytest
from flask.testing import FlaskClient
from pydicom.uid import SecondaryCaptureImageStorage

from services.config import Settings
from services.encoder.extractor import FeatureExtractor
from services.encoder.imaging import read_image
from services.graph.store import GraphStore
from tests.api.conftest import MAX_UPLOAD, QUERY_EDGES, ApiGraph, exact_top
from tests.retrieval.reference import reference_region_search
from tests.support import dicom_bytes, dicom_dataset

pytestmark = pytest.mark.neo4j


def search(client: FlaskClient, **payload: object) -> dict:
    response = client.post("/api/v1/search", json=payload)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def result_keys(body: dict) -> list[str]:
    return [result["key"] for result in body["results"]]


def embed_file(api_settings: Settings, data: bytes, name: str) -> np.ndarray:
    extractor = FeatureExtractor(api_settings.encoder_checkpoint).load()  # type: ignore[arg-type]
    return extractor.embed([read_image(data, name=name).pixels])[0].astype(np.float64)


@pytest.mark.parametrize("k", [15, 50])
def test_region_search_by_key_returns_the_reference_order(
    client: FlaskClient, api_graph: ApiGraph, k: int
) -> None:
    for query_key in api_graph.keys[3:40:12]:
        body = search(client, key=query_key, k=k, strategy="region")
        same_patient = {
            key for key, p in api_graph.patient_of.items() if p == api_graph.patient_of[query_key]
        }
        expected = reference_region_search(
            api_graph.graph, api_graph.community_of, api_graph.embeddings,
            api_graph.embeddings[query_key], query_edges=QUERY_EDGES, k=k, excluded=same_patient,
        )  # fmt: skip
        assert result_keys(body) == expected
        assert [r["rank"] for r in body["results"]] == list(range(1, len(expected) + 1))
        assert body["query"] == {
            "source": "key", "key": query_key, "stored": True, "modality": None,
            "patient_excluded": True, "ingest_job_id": None,
        }  # fmt: skip
        diagnostics = body["diagnostics"]
        first = diagnostics["communities_visited"][0]
        assert diagnostics["community"] == first
        assert diagnostics["community_size"] == list(api_graph.community_of.values()).count(first)
        assert diagnostics["database_size"] == len(api_graph.keys)
        assert 0 < diagnostics["images_examined"] <= 2 * len(api_graph.keys)
        assert {"load_query", "seed", "grow"} <= set(diagnostics["stage_ms"])
        for result in body["results"]:
            assert result["community"] == api_graph.community_of[result["key"]]
            assert result["findings"] == list(api_graph.findings[result["key"]])
            assert result["thumbnail_url"] == f"/api/v1/images/{result['key']}/thumbnail"
            expected_cosine = float(
                np.dot(api_graph.embeddings[result["key"]], api_graph.embeddings[query_key])
            )
            assert result["cosine"] == pytest.approx(expected_cosine, abs=1e-5)


def test_exact_and_vector_by_key(client: FlaskClient, api_graph: ApiGraph) -> None:
    query_key = api_graph.keys[7]
    same_patient = {
        key for key, p in api_graph.patient_of.items() if p == api_graph.patient_of[query_key]
    }
    expected = exact_top(
        api_graph, api_graph.embeddings[query_key].astype(np.float64), 20, same_patient
    )
    exact = search(client, key=query_key, k=20, strategy="exact")
    assert result_keys(exact) == expected
    assert exact["diagnostics"]["images_examined"] == len(api_graph.keys)
    vector = search(client, key=query_key, k=20, strategy="vector")
    assert len(set(result_keys(vector)) & set(expected)) >= 18  # HNSW is approximate
    included = search(client, key=query_key, k=20, strategy="exact", exclude_same_patient=False)
    assert result_keys(included) == exact_top(
        api_graph, api_graph.embeddings[query_key].astype(np.float64), 20, {query_key}
    )


def test_finding_and_modality_filters(client: FlaskClient, api_graph: ApiGraph) -> None:
    query_key = api_graph.keys[0]
    for strategy in ("region", "exact", "vector"):
        body = search(client, key=query_key, k=10, strategy=strategy, finding="No Finding")
        assert body["results"] and all(r["findings"] == [] for r in body["results"])
        body = search(client, key=query_key, k=5, strategy=strategy, modality="DX")
        assert body["results"] == []
        body = search(client, key=query_key, k=5, strategy=strategy, modality="PNG")
        assert len(body["results"]) == 5


def test_upload_png(client: FlaskClient, api_graph: ApiGraph, api_settings: Settings) -> None:
    path = api_graph.held_out[0]
    data = path.read_bytes()
    query = embed_file(api_settings, data, path.name)
    response = client.post(
        "/api/v1/search",
        data={"file": (io.BytesIO(data), path.name), "k": "12", "strategy": "exact"},
        content_type="multipart/form-data",
    )
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert result_keys(body) == exact_top(api_graph, query, 12, set())
    assert body["query"]["source"] == "upload"
    assert body["query"]["stored"] is False
    assert body["query"]["modality"] == "PNG"
    assert {"decode", "embed"} <= set(body["diagnostics"]["stage_ms"])
    for strategy in ("region", "vector"):
        response = client.post(
            "/api/v1/search",
            data={"file": (io.BytesIO(data), path.name), "strategy": strategy},
            content_type="multipart/form-data",
        )
        assert response.status_code == 200, response.get_json()
        assert len(response.get_json()["results"]) == min(50, len(api_graph.keys))


def test_upload_of_a_stored_image_never_returns_itself(
    client: FlaskClient, api_graph: ApiGraph
) -> None:
    key = api_graph.keys[5]
    data = api_graph.path_of[key].read_bytes()
    response = client.post(
        "/api/v1/search",
        data={"file": (io.BytesIO(data), "x.png"), "k": "70", "strategy": "exact"},
        content_type="multipart/form-data",
    )
    body = response.get_json()
    assert body["query"]["key"] == key and body["query"]["stored"] is True
    assert key not in result_keys(body)
    same_patient = {k for k, p in api_graph.patient_of.items() if p == api_graph.patient_of[key]}
    assert not same_patient & set(result_keys(body))


def query_dicom(pixels: np.ndarray, patient_id: str) -> bytes:
    """``pixels`` (floats in [0, 1]) as a 12-bit secondary-capture DICOM of ``patient_id``."""
    stored = (pixels.astype(np.float64) * 4095).round().astype(np.uint16)
    return dicom_bytes(
        dicom_dataset(stored, patient_id=patient_id, sop_class=SecondaryCaptureImageStorage)
    )


def test_upload_dicom_excludes_its_patient(
    client: FlaskClient, api_graph: ApiGraph, api_settings: Settings
) -> None:
    # A patient with several stored images; the DICOM carries that patient's raw id.
    patients = [api_graph.raw_patient_of[key] for key in api_graph.keys]
    raw_id = max(set(patients), key=patients.count)
    theirs = {key for key in api_graph.keys if api_graph.raw_patient_of[key] == raw_id}
    assert len(theirs) >= 2
    pixels = read_image(api_graph.path_of[sorted(theirs)[0]]).pixels
    data = query_dicom(pixels, raw_id)
    query = embed_file(api_settings, data, "query.dcm")
    k = len(api_graph.keys)

    def upload(**fields: str) -> dict:
        response = client.post(
            "/api/v1/search",
            data={"file": (io.BytesIO(data), "query.dcm"), "k": str(k), **fields},
            content_type="multipart/form-data",
        )
        assert response.status_code == 200, response.get_json()
        return response.get_json()

    body = upload(strategy="exact")
    assert body["query"]["modality"] == "DX"
    assert body["query"]["patient_excluded"] is True
    assert result_keys(body) == exact_top(api_graph, query, k, theirs)
    kept = upload(strategy="exact", exclude_same_patient="false")
    assert kept["query"]["patient_excluded"] is False
    assert theirs <= set(result_keys(kept))
    region = upload(strategy="region")
    assert region["results"] and not theirs & set(result_keys(region))


# --- bad requests: each a 4xx with a JSON message, never a 500 --------------------------------
def test_no_query(client: FlaskClient) -> None:
    for response in (
        client.post("/api/v1/search"),
        client.post("/api/v1/search", data={"k": "5"}, content_type="multipart/form-data"),
        client.post("/api/v1/search", json={"k": 5}),
    ):
        assert response.status_code == 400
        assert "upload an image file" in response.get_json()["error"]["message"]


def test_corrupt_and_empty_files(client: FlaskClient) -> None:
    corrupt = b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 50
    response = client.post(
        "/api/v1/search",
        data={"file": (io.BytesIO(corrupt), "broken.png")},
        content_type="multipart/form-data",
    )
    assert response.status_code == 422
    message = response.get_json()["error"]["message"]
    # The reason, not the client's file name (names carry identifiers; issue 26).
    assert "cannot read the uploaded image" in message and "broken.png" not in message
    response = client.post(
        "/api/v1/search",
        data={"file": (io.BytesIO(b"just some text"), "notes.txt")},
        content_type="multipart/form-data",
    )
    assert response.status_code == 422
    assert "not a PNG, JPEG or DICOM" in response.get_json()["error"]["message"]
    response = client.post(
        "/api/v1/search",
        data={"file": (io.BytesIO(b""), "empty.png")},
        content_type="multipart/form-data",
    )
    assert response.status_code == 400
    assert "empty" in response.get_json()["error"]["message"]


@pytest.mark.parametrize("k", [0, -3, 1001, 10**9, "many", 2.5])
def test_k_out_of_range(client: FlaskClient, api_graph: ApiGraph, k: object) -> None:
    response = client.post("/api/v1/search", json={"key": api_graph.keys[0], "k": k})
    assert response.status_code == 422
    assert "k" in response.get_json()["error"]["message"]


def test_unknown_key_and_strategy(client: FlaskClient, api_graph: ApiGraph) -> None:
    response = client.post("/api/v1/search", json={"key": "0" * 64})
    assert response.status_code == 404
    assert "no stored image has the key" in response.get_json()["error"]["message"]
    response = client.post("/api/v1/search", json={"key": api_graph.keys[0], "strategy": "magic"})
    assert response.status_code == 422
    assert "strategy" in response.get_json()["error"]["message"]
    response = client.post("/api/v1/search", json={"key": api_graph.keys[0], "colour": "red"})
    assert response.status_code == 422
    assert "colour" in response.get_json()["error"]["message"]


def test_oversized_upload(client: FlaskClient) -> None:
    response = client.post(
        "/api/v1/search",
        data={"file": (io.BytesIO(b"\0" * (MAX_UPLOAD + 1)), "huge.png")},
        content_type="multipart/form-data",
    )
    assert response.status_code == 413
    body = response.get_json()
    assert str(MAX_UPLOAD) in body["error"]["message"]


def test_malformed_bodies(client: FlaskClient, api_graph: ApiGraph) -> None:
    response = client.post("/api/v1/search", data="{not json", content_type="application/json")
    assert response.status_code == 400
    response = client.post("/api/v1/search", json=[1, 2, 3])
    assert response.status_code == 400
    response = client.post("/api/v1/search", data="hello", content_type="text/plain")
    assert response.status_code == 415
    path = api_graph.path_of[api_graph.keys[0]]
    response = client.post(
        "/api/v1/search",
        data={"file": (io.BytesIO(path.read_bytes()), "a.png"), "key": api_graph.keys[1]},
        content_type="multipart/form-data",
    )
    assert response.status_code == 422
    assert "not both" in response.get_json()["error"]["message"]
    response = client.post("/api/v1/search", json={"key": api_graph.keys[0], "add": True})
    assert response.status_code == 422
    assert "uploaded images only" in response.get_json()["error"]["message"]


# --- rerank=findings ---------------------------------------------------------------------------
def agreement(query: np.ndarray, found: np.ndarray) -> float:
    """log P(all findings agree), written here independently of services.retrieval."""
    q = np.clip(query.astype(np.float64), 1e-6, 1 - 1e-6)
    d = np.clip(found.astype(np.float64), 1e-6, 1 - 1e-6)
    return float(np.log(q * d + (1 - q) * (1 - d)).sum())


def reranked(
    graph: ApiGraph, query_findings: np.ndarray, candidates: list[str], k: int
) -> list[str]:
    scores = {key: agreement(query_findings, graph.probabilities[key]) for key in candidates}
    position = {key: index for index, key in enumerate(candidates)}
    return sorted(candidates, key=lambda key: (-scores[key], position[key]))[:k]


def test_rerank_by_findings_reorders_the_strategys_first_8k_results(
    client: FlaskClient, api_graph: ApiGraph
) -> None:
    k = 6
    for query_key in api_graph.keys[5:60:18]:
        same_patient = {
            key for key, p in api_graph.patient_of.items() if p == api_graph.patient_of[query_key]
        }
        query = api_graph.embeddings[query_key].astype(np.float64)
        query_findings = api_graph.probabilities[query_key]

        body = search(client, key=query_key, k=k, strategy="exact", rerank="findings")
        candidates = exact_top(api_graph, query, 8 * k, same_patient)
        expected = reranked(api_graph, query_findings, candidates, k)
        assert result_keys(body) == expected
        assert expected != candidates[:k], "the re-ranking changed nothing: a weak test"
        scores = [result["finding_agreement"] for result in body["results"]]
        assert scores == sorted(scores, reverse=True)
        for result in body["results"]:
            found = api_graph.probabilities[result["key"]]
            assert result["finding_agreement"] == pytest.approx(agreement(query_findings, found))
            cosine = float(np.dot(api_graph.embeddings[result["key"]], query))
            assert result["cosine"] == pytest.approx(cosine, abs=1e-5)
        diagnostics = body["diagnostics"]
        assert diagnostics["rerank"] == "findings"
        assert diagnostics["rerank_candidates"] == len(candidates) == 8 * k
        assert "rerank" in diagnostics["stage_ms"]

        # region: Algorithm 1 grows a region of 8 k images, which are then re-ranked.
        body = search(client, key=query_key, k=k, strategy="region", rerank="findings")
        region = reference_region_search(
            api_graph.graph, api_graph.community_of, api_graph.embeddings, query,
            query_edges=QUERY_EDGES, k=8 * k, excluded=same_patient,
        )  # fmt: skip
        assert result_keys(body) == reranked(api_graph, query_findings, region, k)

    plain = search(client, key=api_graph.keys[5], k=k, strategy="exact")
    assert plain["diagnostics"]["rerank"] == "none"
    assert plain["diagnostics"]["rerank_candidates"] is None
    assert all(result["finding_agreement"] is None for result in plain["results"])


def test_rerank_by_findings_of_an_uploaded_query(
    client: FlaskClient, api_graph: ApiGraph, api_settings: Settings
) -> None:
    path = api_graph.held_out[1]
    data = path.read_bytes()
    extractor = FeatureExtractor(api_settings.encoder_checkpoint).load()  # type: ignore[arg-type]
    codes, predicted = extractor.embed_with_findings([read_image(data, name=path.name).pixels])
    response = client.post(
        "/api/v1/search",
        data={"file": (io.BytesIO(data), path.name), "k": "5", "strategy": "exact",
              "rerank": "findings"},
        content_type="multipart/form-data",
    )  # fmt: skip
    assert response.status_code == 200, response.get_json()
    candidates = exact_top(api_graph, codes[0].astype(np.float64), 40, set())
    assert result_keys(response.get_json()) == reranked(api_graph, predicted[0], candidates, 5)


def test_rerank_refusals(client: FlaskClient, api_graph: ApiGraph, graph_store: GraphStore) -> None:
    response = client.post(
        "/api/v1/search",
        json={"key": api_graph.keys[0], "strategy": "vector", "rerank": "findings"},
    )
    assert response.status_code == 422
    assert "not vector" in response.get_json()["error"]["message"]
    response = client.post("/api/v1/search", json={"key": api_graph.keys[0], "rerank": "cosine"})
    assert response.status_code == 422

    # A stored image without predicted findings (ingested before they were stored): a clear
    # 409, and its neighbours still re-rank when they are the query.
    query_key = api_graph.keys[0]
    other_key = next(
        key
        for key in api_graph.keys
        if api_graph.patient_of[key] != api_graph.patient_of[query_key]
    )
    graph_store.run_text(
        "MATCH (i:Image {key: $key}) REMOVE i.finding_probabilities", key=query_key
    )
    graph_store.query("graph_generation_bump")
    try:
        response = client.post("/api/v1/search", json={"key": query_key, "rerank": "findings"})
        assert response.status_code == 409
        message = response.get_json()["error"]["message"]
        assert query_key in message and "ingest it again" in message
        body = search(
            client, key=other_key, k=len(api_graph.keys), strategy="exact", rerank="findings"
        )
        assert result_keys(body)[-1] == query_key, "the image without findings comes last"
        assert body["results"][-1]["finding_agreement"] is None
        # Values that are not probabilities (a hand-edited graph) count as missing: no 500.
        tampered = [1.5, -2.0] + [0.5] * (len(api_graph.probabilities[query_key]) - 2)
        graph_store.run_text(
            "MATCH (i:Image {key: $key}) SET i.finding_probabilities = $values",
            key=query_key,
            values=tampered,
        )
        graph_store.query("graph_generation_bump")
        response = client.post("/api/v1/search", json={"key": query_key, "rerank": "findings"})
        assert response.status_code == 409
    finally:
        graph_store.run_text(
            "MATCH (i:Image {key: $key}) SET i.finding_probabilities = $probabilities",
            key=query_key,
            probabilities=api_graph.probabilities[query_key].astype(float).tolist(),
        )
        graph_store.query("graph_generation_bump")
