"""Liveness and readiness, jobs through a real Celery worker, and the API over HTTP (waitress)."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from services.auth.api_keys import create_api_key
from services.config import REPO_ROOT, Settings
from services.graph.store import GraphStore
from services.paths import NOT_UNDER_ROOTS
from tests.api.conftest import ApiGraph

pytestmark = pytest.mark.neo4j


def test_health(client: FlaskClient) -> None:
    response = client.get("/api/v1/health")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}


def test_ready_reports_each_component(client: FlaskClient) -> None:
    response = client.get("/api/v1/ready")
    body = response.get_json()
    assert body["checks"]["neo4j"]["ok"] is True, body
    assert "GDS" in body["checks"]["neo4j"]["detail"]
    assert body["checks"]["redis"]["ok"] is True, body
    if not body["checks"]["workers"]["ok"]:  # no worker of this test session is running
        assert response.status_code == 503
        assert body["ready"] is False
        assert "no Celery worker" in body["checks"]["workers"]["detail"]


def test_job_requests_are_checked(client: FlaskClient, tmp_path: Path) -> None:
    response = client.post("/api/v1/jobs/ingest", json={"paths": [str(tmp_path)]})
    assert response.status_code == 422
    assert NOT_UNDER_ROOTS in response.get_json()["error"]["message"]
    for body in ({"paths": []}, {"paths": ["relative/folder"]}, {"folder": "/x"}):
        response = client.post("/api/v1/jobs/ingest", json=body)
        assert response.status_code == 422, body
    response = client.post("/api/v1/jobs/cluster", json={"algorithm": "kmeans"})
    assert response.status_code == 422
    response = client.get("/api/v1/jobs/ingest-19990101-000000-abcdef")
    assert response.status_code == 404
    assert "no job" in response.get_json()["error"]["message"]


@pytest.fixture
def celery_worker(api_settings: Settings) -> Iterator[subprocess.Popen[bytes]]:
    """A real worker of both queues, started and stopped by this test (by its process id)."""
    environment = {
        **os.environ,
        "MEDGRAPH_ENCODER_CHECKPOINT": str(api_settings.encoder_checkpoint),
        "OMP_NUM_THREADS": "1",
    }
    log = (api_settings.home / "api-test-worker.log").open("wb")
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker", "-P", "solo",
         "-Q", "embed,graph", "-n", f"api-test-{os.getpid()}@%h", "--loglevel", "INFO",
         "--without-gossip", "--without-mingle"],
        cwd=REPO_ROOT, env=environment, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        yield worker
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        log.close()


def wait_for(check: Callable[[], object], timeout_s: float, what: str) -> object:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)


def finished_job(client: FlaskClient, job_id: str, timeout_s: float) -> dict:
    def state() -> dict | None:
        response = client.get(f"/api/v1/jobs/{job_id}")
        if response.status_code == 503:  # Redis or Neo4j busy for a moment: ask again
            return None
        body = response.get_json()
        assert response.status_code == 200, body
        return body if body["state"] in ("done", "failed") else None

    return wait_for(state, timeout_s, f"job {job_id}")  # type: ignore[return-value]


@pytest.mark.slow
def test_ready_ingest_cluster_and_add_with_a_real_worker(
    client: FlaskClient,
    api_graph: ApiGraph,
    api_settings: Settings,
    celery_worker: subprocess.Popen[bytes],
) -> None:
    wait_for(lambda: client.get("/api/v1/ready").status_code == 200, 120, "a ready worker")
    assert client.get("/api/v1/ready").get_json()["checks"]["workers"]["ok"] is True

    folder = api_graph.root / "incoming"
    folder.mkdir(exist_ok=True)
    for path in api_graph.held_out[:2]:
        shutil.copyfile(path, folder / path.name)
    response = client.post("/api/v1/jobs/ingest", json={"paths": [str(folder)]})
    assert response.status_code == 202, response.get_json()
    job = response.get_json()
    assert job["kind"] == "ingest" and job["detail"]["total"] == 2
    done = finished_job(client, job["id"], 240)
    assert done["state"] == "done", done
    assert done["detail"]["done"] == 2

    response = client.post("/api/v1/jobs/cluster", json={})
    assert response.status_code == 202
    cluster = finished_job(client, response.get_json()["id"], 240)
    assert cluster["state"] == "done", cluster
    assert cluster["detail"]["ran"] is True

    upload = api_graph.held_out[2]
    response = client.post(
        "/api/v1/search",
        data={"file": (io.BytesIO(upload.read_bytes()), upload.name), "add": "true", "k": "5"},
        content_type="multipart/form-data",
    )
    assert response.status_code == 200, response.get_json()
    query = response.get_json()["query"]
    assert query["stored"] is False and query["ingest_job_id"]
    added = finished_job(client, query["ingest_job_id"], 240)
    assert added["state"] == "done", added
    assert client.get(f"/api/v1/images/{query['key']}").status_code == 200


@pytest.fixture
def http_server(app: Flask, api_settings: Settings) -> Iterator[str]:
    from waitress.server import create_server

    server = create_server(app, host="127.0.0.1", port=api_settings.api_port, threads=4)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{api_settings.api_port}"
    finally:
        server.close()
        thread.join(timeout=10)


def test_search_over_http_with_waitress(
    http_server: str, api_graph: ApiGraph, graph_store: GraphStore
) -> None:
    token = create_api_key(graph_store, "http-test", ("read",)).token
    authorization = {"Authorization": f"Bearer {token}"}
    request = urllib.request.Request(
        f"{http_server}/api/v1/search",
        data=json.dumps({"key": api_graph.keys[0], "k": 7}).encode(),
        headers={"Content-Type": "application/json", **authorization},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        body = json.loads(response.read())
    assert len(body["results"]) == 7
    with pytest.raises(urllib.error.HTTPError) as error:
        unknown = f"{http_server}/api/v1/images/{'0' * 64}"
        urllib.request.urlopen(urllib.request.Request(unknown, headers=authorization), timeout=30)
    assert error.value.code == 404
    assert json.loads(error.value.read())["error"]["message"]
