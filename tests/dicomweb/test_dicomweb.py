"""Issue 25, acceptance 1: DICOMweb conformance with `dicomweb-client` as the client.

Twenty instances (uncompressed, RLE, JPEG 2000, JPEG Baseline; PHI in every header; one with a
cut-off pixel stream) are stored through STOW-RS into `medgraph serve`: 19 stored, 1 refused
with a reason, nothing else lost. QIDO-RS lists them, WADO-RS renders them, a stored instance
finds its similar images, a read key cannot store, and no PHI value reaches Neo4j or a response.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import pytest
import requests
from PIL import Image
from pydicom.dataset import Dataset

from services.graph.store import GraphStore
from services.privacy import pseudonymous_uid
from services.secrets import patient_key_secret
from tests.dicomweb.conftest import MAX_UPLOAD_BYTES, ServedArchive, wait_for_instances
from tests.dicomweb.instances import Instance, make_instances
from tests.reliability.phi import all_phi_values, leaks, needles, texts_of

pytestmark = [pytest.mark.neo4j, pytest.mark.redis, pytest.mark.slow]

COUNT = 20
BROKEN = 7  # a JPEG 2000 instance whose codestream is cut to 40 bytes


@dataclass
class Stored:
    instances: list[Instance]
    response: Dataset
    study_uids: list[str]  # pseudonymous, as the archive lists them
    listed: list[dict]  # QIDO-RS instances once ingested
    texts: list[str]  # every response body seen, for the PHI scan


@pytest.fixture(scope="module")
def stored(served_archive: ServedArchive, ingest_worker: str) -> Stored:
    instances = make_instances(COUNT, broken=BROKEN)
    assert {instance.syntax for instance in instances} >= {"rle", "jpeg2000", "jpeg-baseline"}
    response = served_archive.client("write").store_instances([i.dataset for i in instances])
    secret = patient_key_secret(served_archive.settings)
    studies = sorted({pseudonymous_uid(secret, i.phi.tags["StudyInstanceUID"]) for i in instances})
    listed = wait_for_instances(served_archive, studies, COUNT - 1)
    return Stored(instances, response, studies, listed, [str(response.to_json_dict())])


def test_stow_stores_19_and_refuses_the_broken_one_with_a_reason(stored: Stored) -> None:
    assert len(stored.response.ReferencedSOPSequence) == COUNT - 1
    (failure,) = stored.response.FailedSOPSequence
    assert failure.FailureReason == 0xC000
    reason = str(failure[0x0099, 0x1010].value)  # the whole reason (ErrorComment: 64 chars)
    assert reason.startswith(str(failure[0x0000, 0x0902].value))
    assert f"instance {BROKEN + 1} of {COUNT}" in reason
    assert "pixel data" in reason, reason
    for reference in stored.response.ReferencedSOPSequence:
        assert str(reference.RetrieveURL).startswith("/dicomweb/studies/")


def test_qido_lists_the_19_stored_instances_and_nothing_else(
    served_archive: ServedArchive, stored: Stored
) -> None:
    assert len(stored.listed) == COUNT - 1
    references = stored.response.ReferencedSOPSequence
    referenced = {str(ref.ReferencedSOPInstanceUID) for ref in references}
    listed = {Dataset.from_json(item).SOPInstanceUID for item in stored.listed}
    assert listed == referenced
    client = served_archive.client()
    studies = [Dataset.from_json(item) for item in client.search_for_studies()]
    ours = {study.StudyInstanceUID: study for study in studies if study.StudyInstanceUID in
            stored.study_uids}  # fmt: skip
    assert sorted(ours) == stored.study_uids
    assert sum(int(study.NumberOfStudyRelatedInstances) for study in ours.values()) == COUNT - 1
    series = client.search_for_series(study_instance_uid=stored.study_uids[0])
    assert len(series) == 1
    one = Dataset.from_json(series[0])
    instances = client.search_for_instances(
        study_instance_uid=one.StudyInstanceUID, series_instance_uid=one.SeriesInstanceUID
    )
    assert len(instances) == int(one.NumberOfSeriesRelatedInstances) > 0
    stored.texts += [str(studies), str(series), str(instances)]


def test_qido_pages_and_refuses_phi_and_wildcard_matching(
    served_archive: ServedArchive, stored: Stored
) -> None:
    client = served_archive.client()
    first = client.search_for_instances(study_instance_uid=stored.study_uids[0], limit=2)
    second = client.search_for_instances(study_instance_uid=stored.study_uids[0], limit=2,
                                         offset=2)  # fmt: skip
    assert len(first) == 2 and len(second) >= 1
    assert not {str(i) for i in first} & {str(i) for i in second}
    for query in ("PatientName=Quixotesh", "PatientID=x", "StudyInstanceUID=1.2*", "limit=0"):
        response = requests.get(f"{served_archive.url}/dicomweb/instances?{query}",
                                headers=served_archive.headers(), timeout=30)  # fmt: skip
        assert response.status_code == 400, (query, response.text)
        assert response.json()["error"]["message"]


def test_wado_rendered_returns_an_image(served_archive: ServedArchive, stored: Stored) -> None:
    client = served_archive.client()
    for item in stored.listed[:3]:
        instance = Dataset.from_json(item)
        png = client.retrieve_instance_rendered(
            instance.StudyInstanceUID, instance.SeriesInstanceUID, instance.SOPInstanceUID,
            media_types=("image/png",),
        )  # fmt: skip
        image = Image.open(io.BytesIO(png))
        assert image.format == "PNG" and image.size == (64, 64)
        low, high = image.getextrema()
        assert high - low > 50  # a chest film, not a blank
    jpeg = client.retrieve_instance_rendered(
        instance.StudyInstanceUID, instance.SeriesInstanceUID, instance.SOPInstanceUID,
        media_types=("image/jpeg",),
    )  # fmt: skip
    assert Image.open(io.BytesIO(jpeg)).format == "JPEG"
    missing = requests.get(
        f"{served_archive.url}/dicomweb/studies/1.2/series/3.4/instances/5.6/rendered",
        headers=served_archive.headers(), timeout=30,
    )  # fmt: skip
    assert missing.status_code == 404


def test_similar_images_of_a_stored_instance(served_archive: ServedArchive, stored: Stored) -> None:
    instance = Dataset.from_json(stored.listed[0])
    url = (f"{served_archive.url}/dicomweb/studies/{instance.StudyInstanceUID}/series/"
           f"{instance.SeriesInstanceUID}/instances/{instance.SOPInstanceUID}/similar")  # fmt: skip
    response = requests.get(url, params={"k": 5, "strategy": "exact"},
                            headers=served_archive.headers(), timeout=60)  # fmt: skip
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "application/dicom+json"
    results = [Dataset.from_json(item) for item in response.json()]
    assert len(results) == 5
    assert [int(result[0x0099, 0x1001].value) for result in results] == [1, 2, 3, 4, 5]
    cosines = [float(result[0x0099, 0x1002].value) for result in results]
    assert cosines == sorted(cosines, reverse=True)
    # Leave-one-out: the query itself is never among its results.
    assert instance.SOPInstanceUID not in {r.get("SOPInstanceUID") for r in results}
    stored.texts.append(response.text)


def test_a_read_key_cannot_store(served_archive: ServedArchive) -> None:
    (instance,) = make_instances(1, offset=30)
    with pytest.raises(requests.HTTPError) as refused:
        served_archive.client("read").store_instances([instance.dataset])
    assert refused.value.response.status_code == 403


def test_a_body_over_the_upload_limit_is_refused_before_it_is_read(
    served_archive: ServedArchive,
) -> None:
    response = requests.post(
        f"{served_archive.url}/dicomweb/studies",
        data=b"--b\r\n" + b"\0" * (MAX_UPLOAD_BYTES + 1),
        headers={**served_archive.headers("write"),
                 "Content-Type": 'multipart/related; type="application/dicom"; boundary=b'},
        timeout=60,
    )  # fmt: skip
    assert response.status_code == 413
    assert "limit" in response.json()["error"]["message"]


def test_no_phi_value_in_neo4j_or_in_any_response(
    graph_store: GraphStore, stored: Stored, served_archive: ServedArchive
) -> None:
    search = needles(all_phi_values(instance.phi for instance in stored.instances))
    records = graph_store.run_text("MATCH (n) RETURN properties(n) AS props")
    assert not leaks((text for r in records for text in texts_of(r["props"])), search)
    assert not leaks(stored.texts, search)
    assert not leaks([served_archive.log_tail(10**7)], search)
    kept = list((served_archive.root / "uploads" / "dicom").glob("*.dcm"))
    assert len(kept) == COUNT - 1
    assert not leaks((path.read_bytes().decode("latin-1") for path in kept), search)
