"""Acceptance 2 of deletion: deleting a patient (API and CLI, by the raw DICOM PatientID) removes
every image of that patient, and the raw id - or any other identifier of that patient - appears
nowhere: not in Neo4j, Redis, the logs, the audit trail or any response."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from flask import Flask

from services.config import REPO_ROOT
from services.graph.store import GraphStore
from services.ingest.jobs import JobTracker
from services.ingest.pipeline import patient_key
from services.ingest.submit import follow, plan_ingest, submit
from services.secrets import patient_key_secret
from tests.curation.invariants import graph_problems
from tests.reliability.conftest import SeededGraph
from tests.reliability.phi import PhiDicom, all_phi_values, leaks, needles
from tests.reliability.private_stack import WorkerProcess
from tests.reliability.test_privacy import redis_texts, response_texts, stored_texts

pytestmark = [pytest.mark.neo4j, pytest.mark.redis, pytest.mark.slow]

API = "/api/v1"


def ingest_files(graph: SeededGraph, dicoms: list[PhiDicom]) -> None:
    """The DICOM files through a real ingest job (the worker computes the patient key).

    They are copied under the data root first: ingest refuses files outside the roots, and the
    upload DICOMs are kept outside it on purpose (tests/reliability/conftest.py)."""
    job_id = f"deletion-phi-{uuid.uuid4().hex[:8]}"
    folder = graph.root / job_id
    folder.mkdir()
    copies = [Path(shutil.copy2(dicom.path, folder / dicom.path.name)) for dicom in dicoms]
    submit(plan_ingest(copies, graph.settings), graph.settings, job_id)
    tracker = JobTracker.from_settings(graph.settings)
    final = follow(tracker, job_id, lambda _: None, poll_s=0.2, timeout_s=300)
    assert (final.status, final.failed) == ("done", 0), tracker.failures(job_id)
    graph.job_ids.append(job_id)


def patient_images(store: GraphStore, key: str) -> int:
    return int(
        store.run_text(
            "MATCH (i:Image) WHERE i.patient_key = $p OR EXISTS { (:Patient {key: $p})-->(i) } "
            "RETURN count(i) AS n",
            p=key,
        )[0]["n"]
    )


def test_deleting_a_patient_removes_every_image_and_leaves_no_trace_of_the_id(
    seeded_graph: SeededGraph,
    reliability_app: Flask,
    graph_store: GraphStore,
    reliability_worker: WorkerProcess,
    caplog: pytest.LogCaptureFixture,
) -> None:
    graph = seeded_graph
    patient = [dicom for dicom in graph.upload_dicoms if dicom.patient == "D"]
    assert len(patient) == 2
    raw_id = patient[0].patient_id
    hmac_key = patient_key(patient_key_secret(graph.settings), raw_id)
    search = needles(all_phi_values(patient))
    caplog.set_level(logging.DEBUG)
    bodies: list[tuple[str, bytes]] = []

    # Through the API.
    ingest_files(graph, patient)
    assert patient_images(graph_store, hmac_key) == 2
    with reliability_app.test_client() as client:
        response = client.post(f"{API}/patients/delete", json={"patient_id": raw_id},
                               headers=graph.headers("write"))  # fmt: skip
        assert response.status_code == 200, response.get_json()
        bodies.append(("delete patient", response.data))
        assert response.get_json()["images"] == 2
        # Files outside the upload folder are the user's: kept, and the response says so.
        assert all(item["file"] == "kept" for item in response.get_json()["deleted"])
        assert all(dicom.path.exists() for dicom in patient)
        again = client.post(f"{API}/patients/delete", json={"patient_id": raw_id},
                            headers=graph.headers("write"))  # fmt: skip
        assert again.status_code == 404
        bodies.append(("delete patient again", again.data))
        refused = client.post(f"{API}/patients/delete", json={"patient_id": raw_id},
                              headers=graph.headers("read"))  # fmt: skip
        assert refused.status_code == 403
        audit = client.get(f"{API}/audit?limit=1000", headers=graph.headers("write"))
        assert audit.status_code == 200
        bodies.append(("audit", audit.data))
    assert patient_images(graph_store, hmac_key) == 0
    assert not graph_store.run_text("MATCH (p:Patient {key: $p}) RETURN p", p=hmac_key)
    assert graph_problems(graph_store, graph.settings.knn_k) == []

    # Through the CLI, the id on standard input.
    ingest_files(graph, patient)
    assert patient_images(graph_store, hmac_key) == 2
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}  # the session's Neo4j, Redis and secrets
    cli = subprocess.run(
        [sys.executable, "-m", "services.cli", "delete", "--patient-id", "-"],
        input=raw_id + "\n", cwd=REPO_ROOT, env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert cli.returncode == 0, cli.stdout + cli.stderr
    bodies.append(("cli", (cli.stdout + cli.stderr).encode()))
    assert patient_images(graph_store, hmac_key) == 0
    assert graph_problems(graph_store, graph.settings.knn_k) == []

    # The scan: the search strings find the id when it is there (the scanner can fail) ...
    assert leaks([f"x {raw_id.lower()} y"], search)
    assert leaks([hashlib.sha256(raw_id.encode()).hexdigest()], search)
    # ... and find nothing in Neo4j, Redis, the logs and the responses.
    stored = {where: leaks([text], search) for where, text in stored_texts(graph_store)}
    assert not {where: found for where, found in stored.items() if found}, "PHI in Neo4j"
    in_redis = {where: leaks([text], search) for where, text in redis_texts(graph.settings)}
    assert not {where: found for where, found in in_redis.items() if found}, "PHI in Redis"
    responses = {where: leaks(response_texts(body), search) for where, body in bodies}
    assert not {where: found for where, found in responses.items() if found}, "PHI in responses"
    assert not leaks([record.getMessage() for record in caplog.records], search), "PHI logged"
    assert not leaks([reliability_worker.log()], search), "PHI in the worker log"
    logs = [path.read_text(errors="replace") for path in (graph.settings.home / "logs").glob("*")
            if path.is_file()]  # fmt: skip
    assert not leaks(logs, search), "PHI in a log file"
