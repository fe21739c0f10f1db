"""Issue 25: the hostile-input tests extended to the DICOMweb routes of `medgraph serve`.

Decompression and deflate bombs, bodies over the upload limit, broken multipart framing, too
many parts, parts that are not DICOM, instances without UIDs, PHI or wildcard matching, huge
numbers: each gets a 4xx (JSON, or for STOW-RS the standard store response naming the reason),
never a 5xx, and the API stays up under its memory budget. STOW-RS is tested after the other
hostile files (pytest runs files in name order), so the budget check covers these too.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
import requests
from pydicom.uid import generate_uid

from tests.reliability.conftest import API_RSS_BUDGET_BYTES, SeededGraph, ServedApi
from tests.reliability.hostile_files import deflated_dicom, plain_dicom, png
from tests.support import dicom_bytes, dicom_dataset

pytestmark = [pytest.mark.neo4j, pytest.mark.redis, pytest.mark.slow]

SIDE = math.isqrt(80_000_000 - 1)
BOUNDARY = "medgraph-hostile"
DICOM_JSON = "application/dicom+json"


def multipart(parts: list[bytes], media_type: str = "application/dicom", close: bool = True
              ) -> bytes:  # fmt: skip
    body = b"".join(
        f"--{BOUNDARY}\r\nContent-Type: {media_type}\r\n\r\n".encode() + part + b"\r\n"
        for part in parts
    )
    return body + (f"--{BOUNDARY}--\r\n".encode() if close else b"")


def related(media_type: str = "application/dicom") -> str:
    return f'multipart/related; type="{media_type}"; boundary={BOUNDARY}'


def without_uids() -> bytes:
    dataset = dicom_dataset(np.full((32, 32), 100, dtype=np.uint16))
    del dataset.SOPInstanceUID
    return dicom_bytes(dataset)


def with_uids() -> bytes:
    dataset = dicom_dataset(
        np.full((32, 32), 100, dtype=np.uint16),
        StudyInstanceUID=generate_uid(),
        SeriesInstanceUID=generate_uid(),
    )
    return dicom_bytes(dataset)


@dataclass(frozen=True)
class Stow:
    name: str
    body: Callable[[], bytes]
    content_type: str
    status: int
    words: str
    path: str = "/dicomweb/studies"


STOW_CASES = [
    Stow("deflate-bomb", lambda: multipart([deflated_dicom(16500, 16500, bits=8)]), related(),
         409, "inflates"),
    Stow("square-16bit-deflated", lambda: multipart([deflated_dicom(SIDE, SIDE)]), related(),
         409, "max_decode_mib"),
    Stow("over-upload-limit", lambda: multipart([plain_dicom(5000, 5000)]), related(), 413,
         "limit"),
    Stow("no-boundary", lambda: multipart([plain_dicom(8, 8)]),
         'multipart/related; type="application/dicom"', 400, "boundary"),
    Stow("xml-type", lambda: multipart([plain_dicom(8, 8)]), related("application/dicom+xml"),
         415, "application/dicom"),
    Stow("form-data", lambda: multipart([plain_dicom(8, 8)]),
         f"multipart/form-data; boundary={BOUNDARY}", 415, "multipart/related"),
    Stow("cut-off-body", lambda: multipart([plain_dicom(8, 8)], close=False), related(), 400,
         "closing boundary"),
    Stow("boundary-missing-in-body", lambda: b"just bytes", related(), 400, "boundary"),
    Stow("empty-body", lambda: b"", related(), 400, "boundary"),
    Stow("too-many-parts", lambda: multipart([b"x"] * 501), related(), 413, "over the limit"),
    Stow("part-is-png-typed", lambda: multipart([png(8, 8)], "image/png"), related(), 409,
         "not application/dicom"),
    Stow("png-as-dicom", lambda: multipart([png(8, 8)]), related(), 409, "not a DICOM instance"),
    Stow("no-sop-instance-uid", lambda: multipart([without_uids()]), related(), 409,
         "SOPInstanceUID"),
    Stow("garbage-instance", lambda: multipart([b"\0" * 132 + b"garbage"]), related(), 409,
         "not a PNG, JPEG or DICOM"),
    Stow("empty-instance", lambda: multipart([b""]), related(), 409, "empty"),
    Stow("another-study", lambda: multipart([with_uids()]), related(), 409,
         "another study", "/dicomweb/studies/1.2.3"),
]  # fmt: skip


@pytest.mark.parametrize("case", STOW_CASES, ids=[case.name for case in STOW_CASES])
def test_hostile_stow_gets_a_4xx_with_the_reason(
    served_api: ServedApi, seeded_graph: SeededGraph, case: Stow
) -> None:
    response = requests.post(
        served_api.url + case.path, data=case.body(), timeout=300,
        headers={**seeded_graph.headers("write"), "Content-Type": case.content_type},
    )  # fmt: skip
    assert served_api.alive(), served_api.log_tail()
    assert response.status_code == case.status, (response.status_code, response.text[:500])
    if response.headers["Content-Type"] == DICOM_JSON:
        failures = response.json()["00081198"]["Value"]
        reason = failures[0]["00991010"]["Value"][0]
        assert "00081199" not in response.json()  # nothing stored
    else:
        assert response.headers["Content-Type"].startswith("application/json")
        reason = response.json()["error"]["message"]
    assert case.words in reason, reason


QUERY_CASES = [
    ("/dicomweb/instances?PatientName=Quixotesh", 400, "keeps no PHI"),
    ("/dicomweb/studies?00100020=PID-ZQ-48151623", 400, "keeps no PHI"),
    ("/dicomweb/studies?StudyInstanceUID=1.2*", 400, "wildcard"),
    (f"/dicomweb/series?limit={2**64}", 400, "limit"),
    ("/dicomweb/instances?offset=-1", 400, "offset"),
    ("/dicomweb/instances?limit=ten", 400, "whole number"),
    ("/dicomweb/studies/1/series/2/instances/3/rendered", 404, "no stored instance"),
    (f"/dicomweb/studies/1/series/2/instances/3/similar?k={2**64}", 422, "k"),
    ("/dicomweb/studies/1/series/2/instances/3/similar?strategy=x", 422, "strategy"),
    ("/dicomweb/studies/1/series/2/instances/3/similar?k=5", 404, "no stored instance"),
]


@pytest.mark.parametrize("path, status, words", QUERY_CASES, ids=[c[0] for c in QUERY_CASES])
def test_hostile_query_gets_a_json_4xx(
    served_api: ServedApi, seeded_graph: SeededGraph, path: str, status: int, words: str
) -> None:
    response = requests.get(served_api.url + path, headers=seeded_graph.headers(), timeout=60)
    assert response.status_code == status, (response.status_code, response.text[:500])
    assert words in response.json()["error"]["message"]


def test_a_read_key_cannot_store(served_api: ServedApi, seeded_graph: SeededGraph) -> None:
    response = requests.post(
        f"{served_api.url}/dicomweb/studies", data=multipart([plain_dicom(8, 8)]), timeout=60,
        headers={**seeded_graph.headers("read"), "Content-Type": related()},
    )  # fmt: skip
    assert response.status_code == 403


def test_the_seeded_dicoms_are_listed_by_pseudonymous_uids_only(
    served_api: ServedApi, seeded_graph: SeededGraph
) -> None:
    response = requests.get(f"{served_api.url}/dicomweb/instances",
                            headers=seeded_graph.headers(), timeout=60)  # fmt: skip
    assert response.status_code == 200
    listed = response.json()
    assert len(listed) == len(seeded_graph.dicoms)
    originals = {d.tags[name] for d in seeded_graph.dicoms for name in
                 ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")}  # fmt: skip
    assert not any(original in response.text for original in originals)
    assert all(item["00080018"]["Value"][0].startswith("2.25.") for item in listed)


def test_the_api_stayed_up_under_its_memory_budget_after_dicomweb(served_api: ServedApi) -> None:
    assert requests.get(f"{served_api.url}/api/v1/health", timeout=30).status_code == 200
    assert served_api.peak_rss() < API_RSS_BUDGET_BYTES
