"""Bad input: image files, label CSVs, API requests and settings that must be refused.

Every case gets an error whose message names the problem; the API keeps answering (health after
each case), and the stored graph is exactly as before (counts and a checksum of every label,
relationship and property).
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from flask.testing import FlaskClient
from pydantic import ValidationError

from services.config import REPO_ROOT, Settings
from services.graph.store import GraphStore
from services.ingest.jobs import JobTracker
from services.paths import NOT_UNDER_ROOTS
from tests.reliability.bad_files import BadFile, bad_files, write_bad_files
from tests.reliability.conftest import MAX_UPLOAD_BYTES, SeededGraph, graph_fingerprint

pytestmark = [pytest.mark.neo4j, pytest.mark.redis]

API = "/api/v1"
BAD_FILES = bad_files()


@pytest.fixture
def unchanged(seeded_graph: SeededGraph, api: FlaskClient, graph_store: GraphStore):
    """Checks, after the test, that the API still answers and the graph is as it was."""
    before = graph_fingerprint(graph_store)
    yield
    health = api.get(f"{API}/health")
    assert health.status_code == 200 and health.get_json() == {"status": "ok"}
    after = graph_fingerprint(graph_store)
    assert after.counts == before.counts
    assert after.digest == before.digest, "a refused input changed the stored graph"


def error_message(response: Any) -> str:
    assert response.is_json, response.data[:300]
    body = response.get_json()
    assert set(body) == {"error"} and body["error"]["status"] == response.status_code
    return body["error"]["message"]


# --- image files -------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", BAD_FILES, ids=[bad.name for bad in BAD_FILES])
def test_bad_image_upload_is_refused(
    bad: BadFile, seeded_graph: SeededGraph, api: FlaskClient, unchanged: None
) -> None:
    response = api.post(
        f"{API}/search",
        data={"file": (io.BytesIO(bad.data), bad.name), "k": "5"},
        headers=seeded_graph.headers("write"),
        content_type="multipart/form-data",
    )
    message = error_message(response)
    expected_status = 400 if not bad.data else 422
    assert response.status_code == expected_status, message
    # The reason, never the client's file name (names carry identifiers; issue 26).
    assert "uploaded" in message and bad.problem in message, message
    assert bad.name not in message, message


def test_bad_image_files_in_an_ingest_are_each_reported_and_nothing_is_stored(
    seeded_graph: SeededGraph, api: FlaskClient, graph_store: GraphStore, reliability_worker: Any
) -> None:
    folder = seeded_graph.root / "bad-files"
    written = write_bad_files(folder)
    before = graph_fingerprint(graph_store, ignore_labels=("IngestJob",))
    response = api.post(
        f"{API}/jobs/ingest", json={"paths": [str(folder)]}, headers=seeded_graph.headers("write")
    )
    assert response.status_code == 202, response.get_json()
    job_id = response.get_json()["id"]
    tracker = JobTracker.from_settings(seeded_graph.settings)
    deadline = time.monotonic() + 300
    while not (progress := tracker.progress(job_id)).finished:
        assert time.monotonic() < deadline, "the ingest of bad files did not end"
        time.sleep(0.5)
    assert (progress.status, progress.done, progress.failed) == ("done", 0, len(written))
    reasons = dict(tracker.failures(job_id))
    for path, bad in written.items():
        assert bad.problem in reasons[str(path)], (path.name, reasons[str(path)])
    status = api.get(f"{API}/jobs/{job_id}", headers=seeded_graph.headers())
    assert status.get_json()["detail"]["failed"] == len(written)
    after = graph_fingerprint(graph_store, ignore_labels=("IngestJob",))
    assert (after.counts, after.digest) == (before.counts, before.digest)


# --- label CSVs --------------------------------------------------------------------------------
NIH_HEADER = "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"  # noqa: E501


def nih_row(image: str, findings: str = "No Finding", patient: str = "42") -> str:
    return f"{image},{findings},0,{patient},58,M,PA,2500,2048,0.14,0.14"


ACCENTED = "Jos\u00e9"


@dataclass(frozen=True)
class BadCsv:
    name: str
    content: Callable[[list[str]], bytes]  # the data root's image names -> file content
    problem: str


BAD_CSVS = [
    BadCsv("empty", lambda _: b"", "the label file is empty"),
    BadCsv("header-only", lambda _: NIH_HEADER.encode() + b"\n", "has a header but no rows"),
    BadCsv(
        "missing-column",
        lambda names: ("Image Index,Finding Labels\n" + f"{names[0]},No Finding\n").encode(),
        "lacks the columns ['Patient ID']",
    ),
    BadCsv(
        "unrecognised-columns",
        lambda names: f"Picture,Diagnosis\n{names[0]},Mass\n".encode(),
        "cannot tell the label format",
    ),
    BadCsv(
        "missing-patient-column",
        lambda names: (
            "Image Index,Finding Labels,Patient Age\n" + f"{names[0]},No Finding,40\n"
        ).encode(),
        "lacks the columns ['Patient ID']",
    ),
    BadCsv(
        "unknown-finding",
        lambda names: f"{NIH_HEADER}\n{nih_row(names[0], 'Dragonpox')}\n".encode(),
        "unknown findings ['Dragonpox']",
    ),
    BadCsv(
        "no-finding-and-findings",
        lambda names: f"{NIH_HEADER}\n{nih_row(names[0], 'No Finding|Mass')}\n".encode(),
        "'No Finding' together with findings",
    ),
    BadCsv(
        "latin-1",
        lambda names: f"{NIH_HEADER}\n{nih_row(names[0], patient=ACCENTED)}\n".encode("latin-1"),
        "not a UTF-8 CSV text file",
    ),
    BadCsv(
        "utf-16",
        lambda names: f"{NIH_HEADER}\n{nih_row(names[0])}\n".encode("utf-16"),
        "binary content",
    ),
    BadCsv(
        "duplicate-rows",
        lambda names: f"{NIH_HEADER}\n{nih_row(names[0])}\n{nih_row(names[0])}\n".encode(),
        "image listed more than once",
    ),
    BadCsv(
        "missing-file",
        lambda names: f"{NIH_HEADER}\n{nih_row('00000000_000.png')}\n".encode(),
        "rows point to missing image files: line 2",
    ),
    BadCsv(
        "wrong-field-count",
        lambda names: f"{NIH_HEADER}\n{nih_row(names[0])}\n{names[1]},Mass\n".encode(),
        "line 3 has 2 fields",
    ),
    BadCsv(
        "empty-patient",
        lambda names: f"{NIH_HEADER}\n{nih_row(names[0], patient='')}\n".encode(),
        "empty 'Patient ID'",
    ),
    BadCsv(
        "duplicate-columns",
        lambda names: b"Image Index,Image Index,Patient ID\na,b,c\n",
        "duplicate columns in the header",
    ),
    BadCsv("binary", lambda _: bytes(range(256)) * 4, "binary content"),
]


@pytest.mark.parametrize("bad", BAD_CSVS, ids=[bad.name for bad in BAD_CSVS])
def test_bad_label_csv_is_refused(
    bad: BadCsv, seeded_graph: SeededGraph, api: FlaskClient, graph_store: GraphStore,
    unchanged: None,
) -> None:  # fmt: skip
    images = seeded_graph.root / "images"
    names = sorted(path.name for path in images.iterdir())
    csv_path = images.parent / f"labels-{bad.name}.csv"
    csv_path.write_bytes(bad.content(names))
    jobs_before = graph_store.run_text("MATCH (j:IngestJob) RETURN count(j) AS n")[0]["n"]
    response = api.post(
        f"{API}/jobs/ingest",
        json={"paths": [str(images)], "labels": str(csv_path)},
        headers=seeded_graph.headers("write"),
    )
    message = error_message(response)
    assert response.status_code == 422, message
    assert str(csv_path) in message and bad.problem in message, message
    assert graph_store.run_text("MATCH (j:IngestJob) RETURN count(j) AS n")[0]["n"] == jobs_before


def test_a_label_path_that_is_a_folder_or_missing_is_refused(
    seeded_graph: SeededGraph, api: FlaskClient, unchanged: None
) -> None:
    images = seeded_graph.root / "images"
    for labels, problem in ((images, "is a directory"), (images / "none.csv", NOT_UNDER_ROOTS)):
        response = api.post(
            f"{API}/jobs/ingest",
            json={"paths": [str(images)], "labels": str(labels)},
            headers=seeded_graph.headers("write"),
        )
        assert response.status_code == 422 and problem in error_message(response)


# --- API requests ------------------------------------------------------------------------------
@dataclass(frozen=True)
class BadRequest:
    name: str
    method: str
    url: str
    kwargs: Callable[[SeededGraph], dict[str, Any]]
    status: int
    problem: str
    scope: str = "write"


def _json(body: Any) -> Callable[[SeededGraph], dict[str, Any]]:
    return lambda _: {"json": body}


def _upload(data: bytes, name: str = "query.png", **fields: str):
    return lambda _: {
        "data": {"file": (io.BytesIO(data), name), **fields},
        "content_type": "multipart/form-data",
    }


def _stored_key(**fields: Any) -> Callable[[SeededGraph], dict[str, Any]]:
    return lambda graph: {"json": {"key": graph.image_keys[0], **fields}}


PNG_BYTES = (REPO_ROOT / "data" / "nih-cxr14-64px" / "images").iterdir().__next__().read_bytes()
UNKNOWN_KEY = "0" * 64
KEY_PATH = f"{API}/images/{{key}}"

BAD_REQUESTS = [
    BadRequest("search-invalid-json", "POST", f"{API}/search",
               lambda _: {"data": b"{not json", "content_type": "application/json"},
               400, "must be a JSON object"),
    BadRequest("search-json-array", "POST", f"{API}/search", _json([1, 2]), 400,
               "must be a JSON object"),
    BadRequest("search-invalid-utf8", "POST", f"{API}/search",
               lambda _: {"data": b'{"key": "\xff\xfe"}', "content_type": "application/json"},
               400, "must be a JSON object"),
    BadRequest("search-k-text", "POST", f"{API}/search", _stored_key(k="ten"), 422, "k:"),
    BadRequest("search-k-zero", "POST", f"{API}/search", _stored_key(k=0), 422, "k:"),
    BadRequest("search-k-negative", "POST", f"{API}/search", _stored_key(k=-3), 422, "k:"),
    BadRequest("search-k-too-large", "POST", f"{API}/search", _stored_key(k=10**7), 422,
               "k must be between 1 and"),
    BadRequest("search-k-float", "POST", f"{API}/search", _stored_key(k=2.5), 422, "k:"),
    BadRequest("search-unknown-strategy", "POST", f"{API}/search",
               _stored_key(strategy="telepathy"), 422, "strategy:"),
    BadRequest("search-unknown-key", "POST", f"{API}/search", _json({"key": UNKNOWN_KEY}), 404,
               "no stored image has the key"),
    BadRequest("search-key-not-text", "POST", f"{API}/search", _json({"key": 12345}), 422,
               "key:"),
    BadRequest("search-key-too-long", "POST", f"{API}/search", _json({"key": "a" * 5000}), 422,
               "key:"),
    BadRequest("search-unknown-field", "POST", f"{API}/search", _stored_key(kk=3), 422,
               "kk: Extra inputs are not permitted"),
    BadRequest("search-bad-boolean", "POST", f"{API}/search",
               _stored_key(exclude_same_patient="maybe"), 422, "exclude_same_patient:"),
    BadRequest("search-finding-too-long", "POST", f"{API}/search",
               _stored_key(finding="x" * 500), 422, "finding:"),
    BadRequest("search-no-query", "POST", f"{API}/search", _json({"k": 3}), 400, "no query"),
    BadRequest("search-key-and-file", "POST", f"{API}/search",
               lambda graph: _upload(PNG_BYTES, key=graph.image_keys[0])(graph), 422,
               "either an image file or a key"),
    BadRequest("search-add-with-key", "POST", f"{API}/search", _stored_key(add=True), 422,
               "add=true applies to uploaded images only"),
    BadRequest("search-text-plain", "POST", f"{API}/search",
               lambda _: {"data": b"key=abc", "content_type": "text/plain"}, 415,
               "unsupported content type"),
    BadRequest("search-oversized-upload", "POST", f"{API}/search",
               _upload(b"\x89PNG\r\n\x1a\n" + b"\x00" * MAX_UPLOAD_BYTES), 413,
               f"larger than the limit of {MAX_UPLOAD_BYTES} bytes"),
    BadRequest("search-wrong-file-field", "POST", f"{API}/search",
               lambda _: {"data": {"image": (io.BytesIO(PNG_BYTES), "q.png")},
                          "content_type": "multipart/form-data"}, 422,
               "unexpected file field(s) image"),
    BadRequest("search-wrong-method", "GET", f"{API}/search", lambda _: {}, 405,
               "method is not allowed"),
    BadRequest("image-unknown-key", "GET", f"{API}/images/{UNKNOWN_KEY}", lambda _: {}, 404,
               "no stored image has the key", "read"),
    BadRequest("thumbnail-unknown-key", "GET", f"{API}/images/{UNKNOWN_KEY}/thumbnail",
               lambda _: {}, 404, "no stored image has the key", "read"),
    BadRequest("neighbourhood-hops-too-many", "GET", KEY_PATH + "/neighbourhood?hops=9",
               lambda _: {}, 422, "hops:", "read"),
    BadRequest("neighbourhood-weight-text", "GET", KEY_PATH + "/neighbourhood?min_weight=heavy",
               lambda _: {}, 422, "min_weight:", "read"),
    BadRequest("neighbourhood-weight-nan", "GET", KEY_PATH + "/neighbourhood?min_weight=nan",
               lambda _: {}, 422, "min_weight:", "read"),
    BadRequest("neighbourhood-max-nodes-zero", "GET", KEY_PATH + "/neighbourhood?max_nodes=0",
               lambda _: {}, 422, "max_nodes:", "read"),
    BadRequest("neighbourhood-unknown-parameter", "GET", KEY_PATH + "/neighbourhood?depth=2",
               lambda _: {}, 422, "unknown query parameter(s): depth", "read"),
    BadRequest("communities-limit-zero", "GET", f"{API}/communities?limit=0", lambda _: {}, 422,
               "limit:", "read"),
    BadRequest("communities-offset-negative", "GET", f"{API}/communities?offset=-1",
               lambda _: {}, 422, "offset:", "read"),
    BadRequest("community-unknown", "GET", f"{API}/communities/987654", lambda _: {}, 404,
               "no community has the id 987654", "read"),
    BadRequest("community-not-a-number", "GET", f"{API}/communities/abc", lambda _: {}, 404,
               "not found", "read"),
    BadRequest("community-members-too-many", "GET", f"{API}/communities/0?members=5000",
               lambda _: {}, 422, "members:", "read"),
    BadRequest("job-unknown", "GET", f"{API}/jobs/ingest-19700101-000000-abcdef", lambda _: {},
               404, "no job has the id", "read"),
    BadRequest("job-invalid-id", "GET", f"{API}/jobs/..%2F..%2Fetc", lambda _: {}, 404,
               "not found", "read"),
    BadRequest("ingest-no-body", "POST", f"{API}/jobs/ingest", lambda _: {}, 400,
               "needs a JSON body"),
    BadRequest("ingest-form-body", "POST", f"{API}/jobs/ingest",
               lambda _: {"data": {"paths": "/x"}}, 415, "application/json"),
    BadRequest("ingest-empty-paths", "POST", f"{API}/jobs/ingest", _json({"paths": []}), 422,
               "paths:"),
    BadRequest("ingest-paths-not-a-list", "POST", f"{API}/jobs/ingest",
               _json({"paths": "/data"}), 422, "paths:"),
    BadRequest("ingest-missing-path", "POST", f"{API}/jobs/ingest",
               lambda graph: {"json": {"paths": [str(graph.root / "nothing-here")]}}, 422,
               NOT_UNDER_ROOTS),
    BadRequest("cluster-unknown-algorithm", "POST", f"{API}/jobs/cluster",
               _json({"algorithm": "kmeans"}), 422, "algorithm:"),
    BadRequest("cluster-negative-resolution", "POST", f"{API}/jobs/cluster",
               _json({"resolution": -1}), 422, "resolution:"),
    BadRequest("cluster-seed-text", "POST", f"{API}/jobs/cluster", _json({"seed": "lucky"}), 422,
               "seed:"),
    BadRequest("unknown-route", "GET", f"{API}/nothing-here", lambda _: {}, 404, "not found",
               "read"),
    BadRequest("delete-unknown-image", "DELETE", f"{API}/images/{UNKNOWN_KEY}", lambda _: {},
               404, "no stored image has the key"),
    BadRequest("delete-image-read-key", "DELETE", KEY_PATH, lambda _: {}, 403, "write", "read"),
    BadRequest("relabel-no-finding-and-mass", "PATCH", KEY_PATH,
               _json({"findings": ["No Finding", "Mass"]}), 422, "cannot be combined"),
    BadRequest("relabel-findings-not-a-list", "PATCH", KEY_PATH, _json({"findings": "Mass"}),
               422, "findings"),
    BadRequest("relabel-unknown-image", "PATCH", f"{API}/images/{UNKNOWN_KEY}",
               _json({"findings": ["Mass"]}), 404, "no stored image has the key"),
    BadRequest("delete-patient-empty-id", "POST", f"{API}/patients/delete",
               _json({"patient_id": "  "}), 422, "patient id is empty"),
    BadRequest("image-put-not-allowed", "PUT", KEY_PATH, lambda _: {}, 405,
               "method is not allowed"),
]  # fmt: skip


@pytest.mark.parametrize("bad", BAD_REQUESTS, ids=[bad.name for bad in BAD_REQUESTS])
def test_bad_request_is_refused(
    bad: BadRequest, seeded_graph: SeededGraph, api: FlaskClient, unchanged: None
) -> None:
    url = bad.url.replace("{key}", seeded_graph.image_keys[0])
    response = api.open(
        url, method=bad.method, headers=seeded_graph.headers(bad.scope), **bad.kwargs(seeded_graph)
    )
    message = error_message(response)
    assert response.status_code == bad.status, message
    assert bad.problem.lower() in message.lower(), message


# --- settings ----------------------------------------------------------------------------------
BAD_SETTINGS = [
    ("MEDGRAPH_NEO4J_BOLT_PORT", "70000", "neo4j_bolt_port", "less than or equal to 65535"),
    ("MEDGRAPH_REDIS_PORT", "six", "redis_port", "valid integer"),
    ("MEDGRAPH_API_PORT", "0", "api_port", "greater than or equal to 1"),
    ("MEDGRAPH_NEO4J_URI", "http//localhost", "neo4j_uri", "bolt://"),
    ("MEDGRAPH_NEO4J_URI", "mysql://127.0.0.1:3306", "neo4j_uri", "bolt://"),
    ("MEDGRAPH_REDIS_URL", "127.0.0.1:6379", "redis_url", "redis://"),
    ("MEDGRAPH_MAX_IMAGE_PIXELS", "-5", "max_image_pixels", "greater than 0"),
    ("MEDGRAPH_MAX_FILE_BYTES", "0", "max_file_bytes", "greater than 0"),
    ("MEDGRAPH_API_MAX_UPLOAD_BYTES", "-1", "api_max_upload_bytes", "greater than or equal to"),
    ("MEDGRAPH_KNN_K", "0", "knn_k", "greater than or equal to 1"),
    ("MEDGRAPH_MIN_COSINE", "2", "min_cosine", "less than or equal to 1"),
    ("MEDGRAPH_CLUSTER_ALGORITHM", "kmeans", "cluster_algorithm", "should match pattern"),
    ("MEDGRAPH_INGEST_FILES_PER_TASK", "-1", "ingest_files_per_task", "greater than or equal"),
    ("MEDGRAPH_API_THREADS", "many", "api_threads", "valid integer"),
]


@pytest.mark.parametrize(
    "variable, value, field, problem", BAD_SETTINGS, ids=[f"{v}={x}" for v, x, _, _ in BAD_SETTINGS]
)
def test_bad_setting_is_refused_naming_the_field(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, field: str, problem: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError) as refused:
        Settings(_env_file=None)  # type: ignore[call-arg]
    message = str(refused.value)
    assert field in message and problem in message, message


@pytest.mark.parametrize(
    "variable, value, problem",
    [
        ("MEDGRAPH_NEO4J_BOLT_PORT", "70000", "less than or equal to 65535"),
        ("MEDGRAPH_NEO4J_URI", "mysql://127.0.0.1:3306", "bolt://"),
        ("MEDGRAPH_DATA_ROOTS", "/data/images", "JSON list"),
    ],
)
def test_the_command_line_names_a_bad_setting_without_a_traceback(
    variable: str, value: str, problem: str
) -> None:
    env = {**os.environ, variable: value}
    result = subprocess.run(
        [sys.executable, "-m", "services.cli", "config"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    assert variable in result.stderr and problem in result.stderr, result.stderr


def test_the_corpus_is_large_enough() -> None:
    corpus = len(BAD_FILES) + len(BAD_CSVS) + 2 + len(BAD_REQUESTS) + len(BAD_SETTINGS) + 3
    assert corpus >= 30
