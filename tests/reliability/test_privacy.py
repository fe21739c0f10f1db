"""Acceptance 3 and the privacy rules: no DICOM identifier is stored or returned in clear, the
patient key is the HMAC of the PatientID with the settings secret, and files are served only
from the data roots (no path traversal of any kind)."""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import os
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from flask import Flask
from flask.testing import FlaskClient

from services.api.blueprints.images import thumbnails
from services.auth.guard import required_scope
from services.config import Settings
from services.graph.store import GraphStore
from services.ingest.jobs import JobProgress, JobTracker
from services.paths import NOT_UNDER_ROOTS
from services.secrets import patient_key_secret
from tests.reliability.conftest import SeededGraph
from tests.reliability.phi import all_phi_values, leaks, needles, redis_texts, texts_of
from tests.reliability.private_stack import WorkerProcess

pytestmark = [pytest.mark.neo4j, pytest.mark.redis, pytest.mark.slow]

API = "/api/v1"
STRATEGIES = ("region", "exact", "vector")
LEAKED_FILE_MARK = b"root:x:0:0"


@pytest.fixture(scope="module")
def uploads_done(
    seeded_graph: SeededGraph, reliability_app: Flask, graph_store: GraphStore
) -> list[tuple[str, bytes]]:
    """Searches with every DICOM (stored ones by key and by upload, the others by upload), and
    one upload kept with add=true (ingested through the API); returns (request, body) pairs."""
    graph = seeded_graph
    bodies: list[tuple[str, bytes]] = []
    with reliability_app.test_client() as client:
        for dicom in graph.dicoms + graph.upload_dicoms:
            for strategy in STRATEGIES:
                response = client.post(
                    f"{API}/search",
                    data={"file": (io.BytesIO(dicom.path.read_bytes()), "query.dcm"),
                          "strategy": strategy, "k": "20"},
                    headers=graph.headers(),
                    content_type="multipart/form-data",
                )  # fmt: skip
                assert response.status_code == 200, response.get_data(as_text=True)
                bodies.append((f"search upload {dicom.path.name} {strategy}", response.data))
        kept = graph.upload_dicoms[0]
        response = client.post(
            f"{API}/search",
            data={"file": (io.BytesIO(kept.path.read_bytes()), "kept.dcm"), "add": "true",
                  "k": "5", "strategy": "exact"},
            headers=graph.headers("write"),
            content_type="multipart/form-data",
        )  # fmt: skip
        assert response.status_code == 200, response.get_data(as_text=True)
        bodies.append(("search add=true", response.data))
        job_id = response.get_json()["query"]["ingest_job_id"]
        assert wait_for_job(graph, job_id).done == 1
        graph.job_ids.append(job_id)
        kept_key = hashlib.sha256(kept.path.read_bytes()).hexdigest()
        graph.image_keys.append(kept_key)
        graph.dicoms.append(kept)
        graph.upload_dicoms.remove(kept)
    return bodies


def wait_for_job(graph: SeededGraph, job_id: str, timeout_s: float = 240) -> JobProgress:
    tracker = JobTracker.from_settings(graph.settings)
    deadline = time.monotonic() + timeout_s
    while not (progress := tracker.progress(job_id)).finished:
        assert time.monotonic() < deadline, f"ingest job {job_id} did not finish"
        time.sleep(0.5)
    return progress


def route_arguments(graph: SeededGraph, store: GraphStore) -> dict[str, list[str]]:
    """Values for every path parameter the API declares."""
    jobs = [record["id"] for record in store.run_text("MATCH (j:IngestJob) RETURN j.id AS id")]
    communities = store.run_text("MATCH (c:Community) RETURN c.id AS id")
    # DICOMweb's (pseudonymous) UIDs of one stored DICOM image: the routes take the three
    # together, so one consistent triple (the listing routes return every image's).
    uids = store.run_text(
        "MATCH (i:Image) WHERE i.dicom_sop_uid IS NOT NULL RETURN i.dicom_study_uid AS study, "
        "i.dicom_series_uid AS series, i.dicom_sop_uid AS sop ORDER BY sop LIMIT 1"
    )
    return {
        "key": list(graph.image_keys),
        "community_id": [str(record["id"]) for record in communities],
        "job_id": sorted(set(jobs) | set(graph.job_ids)),
        **{name: sorted({record[name] for record in uids}) for name in ("study", "series", "sop")},
    }


# Query strings that make data endpoints return as much as they can.
LARGEST_QUERIES = {
    f"{API}/images/<key>/neighbourhood": "?hops=3&max_nodes=1000",
    f"{API}/communities": "?limit=1000",
    f"{API}/communities/<int(signed=True):community_id>": "?members=1000",
}


def every_get_response(
    app: Flask, client: FlaskClient, graph: SeededGraph, store: GraphStore
) -> Iterator[tuple[str, int, bytes]]:
    """GET every route of the app with every stored value of its parameters."""
    arguments = route_arguments(graph, store)
    for rule in app.url_map.iter_rules():
        if "GET" not in (rule.methods or set()):
            continue
        if rule.endpoint == "static" or rule.endpoint.endswith(".static"):
            continue  # files shipped with the code; traversal is tested below
        names = sorted(rule.arguments)
        unknown = [name for name in names if name not in arguments]
        assert not unknown, f"route {rule.rule} takes {unknown}: teach this test to fill them"
        combinations: list[dict[str, str]] = [{}]
        for name in names:
            combinations = [{**c, name: value} for c in combinations for value in arguments[name]]
        for values in combinations:
            url = _fill(rule.rule, values) + LARGEST_QUERIES.get(rule.rule, "")
            # Write-scope reads (the audit trail) are read with a write key.
            scope = "write" if required_scope(app, rule.endpoint) == "write" else "read"
            response = client.get(url, headers=graph.headers(scope))
            yield url, response.status_code, response.data


def _fill(rule: str, values: dict[str, str]) -> str:
    return re.sub(r"<(?:[^:>]+:)?(\w+)>", lambda match: values[match.group(1)], rule)


def response_texts(body: bytes) -> list[str]:
    """JSON bodies as their strings and integers (floats skipped), anything else as bytes."""
    try:
        return list(texts_of(json.loads(body)))
    except (ValueError, UnicodeDecodeError):
        return [body.decode("latin-1")]


def stored_texts(store: GraphStore) -> Iterator[tuple[str, str]]:
    """(where, text) for every label, type, property name and value in the database."""
    for record in store.run_text(
        "MATCH (n) RETURN elementId(n) AS id, labels(n) AS labels, properties(n) AS props"
    ):
        for text in texts_of([record["labels"], record["props"]]):
            yield f"node {record['labels']} {record['id']}", text
    for record in store.run_text(
        "MATCH ()-[r]->() RETURN elementId(r) AS id, type(r) AS type, properties(r) AS props"
    ):
        for text in texts_of([record["type"], record["props"]]):
            yield f"relationship {record['type']} {record['id']}", text


def test_no_phi_value_is_stored_or_returned_anywhere(
    seeded_graph: SeededGraph,
    uploads_done: list[tuple[str, bytes]],
    reliability_app: Flask,
    graph_store: GraphStore,
    reliability_worker: WorkerProcess,
) -> None:
    graph = seeded_graph
    search = needles(all_phi_values(graph.dicoms + graph.upload_dicoms))
    assert len(search) > 200

    stored = list(stored_texts(graph_store))
    assert any(text == "CR" for _, text in stored), "the scan reads the stored values"
    leaked = {where: leaks([text], search) for where, text in stored}
    assert not {where: found for where, found in leaked.items() if found}, "PHI in Neo4j"

    responses = list(uploads_done)
    statuses: dict[str, int] = {}
    with reliability_app.test_client() as client:
        for url, status, body in every_get_response(reliability_app, client, graph, graph_store):
            statuses[url] = status
            responses.append((url, body))
    # /ready may say 503 on a busy machine (its worker ping times out); data endpoints may not.
    failing = {url: status for url, status in statuses.items() if status >= 400}
    failing.pop(f"{API}/ready", None)
    assert not failing, f"data endpoints that did not answer: {failing}"
    # The endpoints that return each stored DICOM's data were among them.
    for dicom in graph.dicoms:
        key = hashlib.sha256(dicom.path.read_bytes()).hexdigest()
        for suffix in ("", "/thumbnail", "/file", "/neighbourhood?hops=3&max_nodes=1000"):
            assert f"{API}/images/{key}{suffix}" in statuses
    found = {where: leaks(response_texts(body), search) for where, body in responses}
    assert not {where: values for where, values in found.items() if values}, "PHI in the API"

    redis_found = {where: leaks([text], search) for where, text in redis_texts(graph.settings)}
    assert not {where: v for where, v in redis_found.items() if v}, "PHI in Redis"
    assert not leaks([reliability_worker.log()], search), "PHI in the worker log"


def test_served_dicom_files_are_deidentified_copies(
    seeded_graph: SeededGraph, api: FlaskClient, uploads_done: list
) -> None:
    dicom = seeded_graph.dicoms[0]
    original = dicom.path.read_bytes()
    key = hashlib.sha256(original).hexdigest()
    response = api.get(f"{API}/images/{key}/file", headers=seeded_graph.headers())
    assert response.status_code == 200
    assert response.mimetype == "application/dicom"
    served = pydicom.dcmread(io.BytesIO(response.data))
    source = pydicom.dcmread(dicom.path)
    assert served.PixelData == source.PixelData, "the pixels are served unchanged"
    assert (served.Rows, served.Columns, served.Modality) == (source.Rows, source.Columns, "CR")
    assert served.PatientIdentityRemoved == "YES"
    for keyword in dicom.tags:
        if keyword != "SOPInstanceUID":
            assert keyword not in served, f"{keyword} left in the served file"
    assert served.SOPInstanceUID != dicom.tags["SOPInstanceUID"]


def test_patient_key_is_the_hmac_of_the_patient_id_with_the_settings_secret(
    seeded_graph: SeededGraph, graph_store: GraphStore, settings: Settings, uploads_done: list
) -> None:
    secret = patient_key_secret(settings)
    by_patient: dict[str, set[str]] = {}
    for dicom in seeded_graph.dicoms:
        key = hashlib.sha256(dicom.path.read_bytes()).hexdigest()
        record = graph_store.run_text(
            "MATCH (i:Image {key: $key}) OPTIONAL MATCH (p:Patient)-[:HAS_IMAGE]->(i) "
            "RETURN i.patient_key AS patient_key, collect(p.key) AS patients",
            key=key,
        )[0]
        expected = hmac.new(secret, dicom.patient_id.encode(), hashlib.sha256).hexdigest()
        assert record["patient_key"] == expected
        assert record["patients"] == [expected]
        unkeyed = hashlib.sha256(dicom.patient_id.encode()).hexdigest()
        other_secret = hmac.new(b"another secret", dicom.patient_id.encode(), hashlib.sha256)
        assert expected not in (unkeyed, other_secret.hexdigest())
        by_patient.setdefault(dicom.patient, set()).add(expected)
    # One pseudonym per patient: patient A's two studies share one :Patient node.
    assert all(len(keys) == 1 for keys in by_patient.values())
    assert len({next(iter(keys)) for keys in by_patient.values()}) == len(by_patient)
    configured = settings.model_copy(update={"patient_key_secret": "configured-in-settings"})
    assert patient_key_secret(configured) == b"configured-in-settings"


# --- files only from the data roots -------------------------------------------------------------
@pytest.fixture
def outside_copy(seeded_graph: SeededGraph, tmp_path: Path) -> Iterator[tuple[str, Path, Path]]:
    """(image key, its file, an identical copy outside every data root)."""
    key = seeded_graph.image_keys[0]
    inside = next(
        path for path in (seeded_graph.root / "images").iterdir()
        if hashlib.sha256(path.read_bytes()).hexdigest() == key
    )  # fmt: skip
    outside = tmp_path / "outside" / "copy.png"
    outside.parent.mkdir()
    outside.write_bytes(inside.read_bytes())
    yield key, inside, outside


def traversal_sources(root: Path, outside: Path) -> dict[str, str]:
    """Stored ``source`` values that name ``outside`` (or nothing) by tricks."""
    link = root / f"link-{uuid.uuid4().hex[:6]}.png"
    link.symlink_to(outside)
    linked_dir = root / f"dir-{uuid.uuid4().hex[:6]}"
    linked_dir.symlink_to(outside.parent, target_is_directory=True)
    up = os.path.relpath(outside, root)
    return {
        "absolute path outside": str(outside),
        "dot-dot out of the root": f"{root}/{up}",
        "dot-dot after a folder": f"{root}/images/../{up}",
        "symlink to a file outside": str(link),
        "symlinked folder outside": str(linked_dir / outside.name),
        "file URL outside": f"file://{outside}",
        "relative path": up,
        "home-relative path": "~/" + outside.name,
        "url-encoded dot-dot": f"{root}/%2e%2e/{up}",
        "url-encoded slashes": f"{root}/..%2F..%2F{up}",
        "remote URL": f"http://127.0.0.1:1/{outside.name}",
        "NUL byte": f"{root}/images/x.png\x00{outside}",
        "empty": "",
    }


def test_stored_paths_outside_the_data_roots_are_never_served(
    seeded_graph: SeededGraph,
    api: FlaskClient,
    graph_store: GraphStore,
    outside_copy: tuple[str, Path, Path],
) -> None:
    key, inside, outside = outside_copy
    sources = traversal_sources(seeded_graph.root, outside)
    set_source = "MATCH (i:Image {key: $key}) SET i.source = $source"
    served: dict[str, int] = {}
    try:
        for trick, source in sources.items():
            graph_store.run_text(set_source, key=key, source=source)
            for endpoint in ("file", "thumbnail"):
                if endpoint == "thumbnail":
                    thumbnails._items.clear()  # rendered earlier from the real file
                response = api.get(f"{API}/images/{key}/{endpoint}", headers=seeded_graph.headers())
                served[f"{trick} ({endpoint})"] = response.status_code
                assert response.is_json, (trick, endpoint, response.data[:200])
        assert all(status == 404 for status in served.values()), served
    finally:
        graph_store.run_text(set_source, key=key, source=str(inside))
    response = api.get(f"{API}/images/{key}/file", headers=seeded_graph.headers())
    assert response.status_code == 200 and response.data == inside.read_bytes()


TRAVERSAL_URLS = (
    f"{API}/images/../../../../etc/passwd",
    f"{API}/images/..%2F..%2F..%2F..%2Fetc%2Fpasswd/file",
    f"{API}/images/%2e%2e%2f%2e%2e%2fetc%2fpasswd/file",
    f"{API}/images/%252e%252e%252fetc%252fpasswd/file",
    f"{API}/images/....//....//etc/passwd/file",
    f"{API}/images/%2Fetc%2Fpasswd/thumbnail",
    f"{API}/images/..%5c..%5cetc%5cpasswd/file",
    "/dashboard/static/../../../../etc/passwd",
    "/dashboard/static/..%2F..%2F..%2F..%2Fetc%2Fpasswd",
    "/dashboard/static/%2e%2e/%2e%2e/blueprint.py",
    "/dashboard/static//etc/passwd",
    "/dashboard/static/js/..%2F..%2F..%2Fblueprint.py",
    "/api/static/../../../../etc/passwd",
    "/api/static/%2e%2e%2f%2e%2e%2fapp.py",
    "/api/static/..%252f..%252fapp.py",
    "/api/static//etc/passwd",
)


@pytest.mark.parametrize("url", TRAVERSAL_URLS)
def test_urls_cannot_reach_files_outside_their_folders(
    seeded_graph: SeededGraph, api: FlaskClient, url: str
) -> None:
    # Werkzeug answers a doubled slash with a redirect to the merged path; follow it.
    response = api.get(url, headers=seeded_graph.headers(), follow_redirects=True)
    assert response.status_code in (400, 404), (url, response.status_code)
    assert LEAKED_FILE_MARK not in response.data
    assert b"def create_app" not in response.data and b"Blueprint(" not in response.data


def test_ingest_paths_must_lie_under_a_data_root(
    seeded_graph: SeededGraph, api: FlaskClient, graph_store: GraphStore, tmp_path: Path
) -> None:
    root = seeded_graph.root
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x.png").write_bytes((root / "images").iterdir().__next__().read_bytes())
    linked = root / f"linked-{uuid.uuid4().hex[:6]}"
    linked.symlink_to(outside, target_is_directory=True)
    up = os.path.relpath(outside, root)
    attempts = {
        "/etc": NOT_UNDER_ROOTS,
        "/": NOT_UNDER_ROOTS,
        str(outside): NOT_UNDER_ROOTS,
        f"{root}/{up}": NOT_UNDER_ROOTS,
        str(linked): NOT_UNDER_ROOTS,
        f"{root}/images/../{up}/x.png": NOT_UNDER_ROOTS,
        "images": "must be an absolute path",
        "~/x.png": "must be an absolute path",
        f"file://{outside}": "must be an absolute path",
        f"{root}/%2e%2e/{up}": NOT_UNDER_ROOTS,
    }
    jobs_before = graph_store.run_text("MATCH (j:IngestJob) RETURN count(j) AS n")[0]["n"]
    for path, message in attempts.items():
        response = api.post(
            f"{API}/jobs/ingest", json={"paths": [path]}, headers=seeded_graph.headers("write")
        )
        assert response.status_code == 422, (path, response.get_json())
        assert message in response.get_json()["error"]["message"], path
    labels = api.post(
        f"{API}/jobs/ingest",
        json={"paths": [str(root / "images")], "labels": "/etc/passwd"},
        headers=seeded_graph.headers("write"),
    )
    assert labels.status_code == 422
    assert f"labels '/etc/passwd' {NOT_UNDER_ROOTS}" in labels.get_json()["error"]["message"]
    jobs_after = graph_store.run_text("MATCH (j:IngestJob) RETURN count(j) AS n")[0]["n"]
    assert jobs_after == jobs_before, "a refused request started a job"


def test_an_upload_file_name_cannot_choose_where_it_is_kept(
    seeded_graph: SeededGraph, api: FlaskClient, uploads_done: list, tmp_path: Path
) -> None:
    target = tmp_path / "escaped.dcm"
    dicom = seeded_graph.upload_dicoms[0]
    name = "../" * 12 + str(target).lstrip("/")
    response = api.post(
        f"{API}/search",
        data={"file": (io.BytesIO(dicom.path.read_bytes()), name), "add": "true", "k": "3",
              "strategy": "exact"},
        headers=seeded_graph.headers("write"),
        content_type="multipart/form-data",
    )  # fmt: skip
    assert response.status_code == 200, response.get_json()
    assert not target.exists()
    key = hashlib.sha256(dicom.path.read_bytes()).hexdigest()
    assert (seeded_graph.settings.api_upload_dir / f"{key}.dcm").is_file()  # type: ignore[operator]
    wait_for_job(seeded_graph, response.get_json()["query"]["ingest_job_id"])


def test_the_scan_finds_a_planted_identifier(
    seeded_graph: SeededGraph, graph_store: GraphStore
) -> None:
    """The scan above can fail: identifiers planted in Neo4j in disguise are found."""
    search = needles(all_phi_values(seeded_graph.dicoms + seeded_graph.upload_dicoms))
    name = seeded_graph.dicoms[0].tags["PatientName"]
    birth = seeded_graph.dicoms[0].tags["PatientBirthDate"]
    planted = {
        "hex": name.encode().hex(),
        "upper": name.upper(),
        "sha": hashlib.sha256(seeded_graph.dicoms[0].patient_id.encode()).hexdigest(),
        "iso": f"born {birth[:4]}-{birth[4:6]}-{birth[6:]}",
        "given": name.split("^")[1],
    }
    graph_store.run_text("CREATE (:PlantedLeak $props)", props=planted)
    try:
        texts = [text for _, text in stored_texts(graph_store)]
        for disguise, value in planted.items():
            assert leaks([value], search), disguise
        assert len(leaks(texts, search)) >= 2  # the name and the id, found in disguise
    finally:
        graph_store.run_text("MATCH (n:PlantedLeak) DELETE n")
