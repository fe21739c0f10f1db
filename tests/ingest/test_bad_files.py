"""Acceptance 3: corrupt files among good ones; also DICOM patients and the --no-wait path."""

from __future__ import annotations

import csv
import hmac
import shutil
from hashlib import sha256
from pathlib import Path

import numpy as np
import pytest

from services.config import Settings
from services.graph.store import GraphStore
from services.ingest.commands import EXIT_FILES_FAILED
from services.privacy import is_sealed, open_source
from services.secrets import patient_key_secret
from tests.ingest.conftest import BUNDLED_IMAGES, CliResult, file_sha256, image_property, wipe
from tests.support import dicom_bytes, dicom_dataset

pytestmark = [pytest.mark.neo4j, pytest.mark.redis, pytest.mark.slow]
GOOD_COUNT = 12
DICOM_PATIENT = "DICOM-PATIENT-0042"


def archive_dicom(patient_id: str, seed: int) -> bytes:
    pixels = (np.random.default_rng(seed).random((48, 40)) * 4095).astype(np.uint16)
    return dicom_bytes(dicom_dataset(pixels, patient_id=patient_id))


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, set[Path], set[Path]]:
    """images/: good PNGs (labelled), a PNG named .bin, two DICOMs, and broken files."""
    root = tmp_path_factory.mktemp("mixed")
    images = root / "images"
    (images / "nested").mkdir(parents=True)
    sources = sorted(BUNDLED_IMAGES.glob("*.png"))[:GOOD_COUNT]
    good: set[Path] = set()
    for position, source in enumerate(sources):
        target = (images / "nested" if position % 2 else images) / source.name
        shutil.copyfile(source, target)
        good.add(target)
    sniffed = images / "scan-without-extension.bin"  # found by content, not by name
    shutil.copyfile(sorted(BUNDLED_IMAGES.glob("*.png"))[GOOD_COUNT], sniffed)
    good.add(sniffed)
    for number in (1, 2):
        dicom = images / f"archive-{number}"  # DICOM without extension: the DICM marker
        dicom.write_bytes(archive_dicom(DICOM_PATIENT, number))
        good.add(dicom)

    png = sources[0].read_bytes()
    bad = {
        images / "truncated.png": png[: len(png) // 2],
        images / "garbage.png": bytes(range(256)) * 8,
        images / "empty.jpg": b"",
        images / "header-only.jpeg": b"\xff\xd8\xff\xe0" + b"\x00" * 40,
        images / "nested" / "not-dicom.dcm": b"this is a text file, not a DICOM object\n",
        images / "broken-dicom": b"\x00" * 128 + b"DICM" + b"\x02\x00\x10\x00garbage" * 5,
    }
    for path, data in bad.items():
        path.write_bytes(data)
    (images / "notes.txt").write_text("scanner notes; not an image, skipped silently\n")

    with (root / "labels.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["Image Index", "Finding Labels", "Follow-up #", "Patient ID"])
        for position, source in enumerate(sources):
            findings = "Effusion|Mass" if position % 3 == 0 else "No Finding"
            name = f"nested/{source.name}" if position % 2 else source.name
            writer.writerow([name, findings, 0, f"P{position % 4}"])
    return root, good, set(bad)


@pytest.fixture(scope="module")
def mixed_ingest(
    mixed_folder, graph_store: GraphStore, ingest_worker: str, medgraph_cli,
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[CliResult, Path]:  # fmt: skip
    """The mixed folder ingested once into an emptied graph: the CLI result and its report."""
    root, _, _ = mixed_folder
    wipe(graph_store)
    report = tmp_path_factory.mktemp("report") / "failures.csv"
    result = medgraph_cli(
        "ingest", root / "images", "--labels", root / "labels.csv", "--report", report,
        "--no-local-worker", "--no-progress",
    )  # fmt: skip
    return result, report


def test_good_files_stored_bad_ones_reported_with_reasons(
    mixed_folder, mixed_ingest: tuple[CliResult, Path], graph_store: GraphStore, settings: Settings
) -> None:
    root, good, bad = mixed_folder
    result, report = mixed_ingest
    assert result.returncode == EXIT_FILES_FAILED, result.output
    assert f"{len(good)} stored, {len(bad)} failed" in result.output

    with report.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    reported = {Path(row["file"]): row["reason"] for row in rows}
    assert set(reported) == bad, "every bad file reported, and only those"
    assert all(reason.strip() for reason in reported.values())
    assert "empty" in reported[root / "images" / "empty.jpg"]
    assert "truncated" in reported[root / "images" / "truncated.png"]
    assert "not a PNG, JPEG or DICOM" in reported[root / "images" / "garbage.png"]

    stored = image_property(graph_store, "source")
    assert {file_sha256(path) for path in good} == set(stored)
    # The graph keeps each path sealed (issue 26); opened with the secret, they are the files.
    assert all(is_sealed(source) for source in stored.values())
    secret = patient_key_secret(settings)
    assert {Path(open_source(secret, source)) for source in stored.values()} == good


def test_labels_and_dicom_patients(
    mixed_folder, mixed_ingest: tuple[CliResult, Path], settings: Settings,
    graph_store: GraphStore,
) -> None:  # fmt: skip
    """After the mixed ingest: CSV labels where given, else the DICOM PatientID."""
    root, _, _ = mixed_folder
    secret = patient_key_secret(settings)
    findings = image_property(graph_store, "findings")
    patients = image_property(graph_store, "patient_key")
    modality = image_property(graph_store, "modality")
    dicom_patient = hmac.new(secret, DICOM_PATIENT.encode(), sha256).hexdigest()
    for number in (1, 2):
        key = file_sha256(root / "images" / f"archive-{number}")
        assert patients[key] == dicom_patient
        assert modality[key] == "DX"
        assert findings[key] is None, "no label: findings unknown, not 'No Finding'"
    sniffed = file_sha256(root / "images" / "scan-without-extension.bin")
    assert patients[sniffed] is None and findings[sniffed] is None
    links = graph_store.run_text(
        "MATCH (p:Patient)-[:HAS_IMAGE]->(i:Image) RETURN p.key AS patient, count(i) AS images"
    )
    counts = {record["patient"]: record["images"] for record in links}
    assert counts[dicom_patient] == 2
    labelled = [hmac.new(secret, f"P{n}".encode(), sha256).hexdigest() for n in range(4)]
    assert sum(counts[key] for key in labelled) == GOOD_COUNT
    with_mass = [key for key, value in findings.items() if value == ["Effusion", "Mass"]]
    assert len(with_mass) == len(range(0, GOOD_COUNT, 3))


def test_no_wait_then_status(
    mixed_folder, graph_store: GraphStore, ingest_worker: str, medgraph_cli, tmp_path: Path
) -> None:
    root, good, bad = mixed_folder
    queued = medgraph_cli(
        "ingest", root / "images", "--no-wait", "--job-id", "mixed-no-wait", "--no-local-worker"
    )
    assert queued.returncode == 0, queued.output
    assert "ingest-status mixed-no-wait" in queued.output

    report = tmp_path / "status.csv"
    status = medgraph_cli("ingest-status", "mixed-no-wait", "--wait", "--report", report)
    assert status.returncode == EXIT_FILES_FAILED, status.output
    with report.open(newline="") as handle:
        assert {Path(row["file"]) for row in csv.DictReader(handle)} == bad
    again = medgraph_cli("ingest-status", "mixed-no-wait")
    assert again.returncode == EXIT_FILES_FAILED and "done" in again.output

    unknown = medgraph_cli("ingest-status", "no-such-job")
    assert unknown.returncode == 1 and "no ingest job" in unknown.output


def test_missing_path_is_a_clear_error(medgraph_cli, ingest_env, tmp_path: Path) -> None:
    result = medgraph_cli("ingest", tmp_path / "nowhere", "--no-local-worker")
    assert result.returncode == 1
    assert "nowhere: no such file or folder" in result.output
    assert "Traceback" not in result.output
