"""DICOM instances per second into the archive: through DICOMweb STOW-RS, and through Orthanc
with `medgraph follow orthanc` (issue 25).

Against its own stack (home `.medgraph/bench-dicom`, its own ports; never the demo's or a test
slot's): Neo4j, Redis, one local Celery worker (2 processes), `medgraph serve` and Orthanc with
the follower. N new instances (bundled 64-px chest films as 12-bit CR, uncompressed, RLE and
JPEG 2000 in turn, fresh UIDs each run so nothing is reused) go in by each path, timed from the
first byte sent until every one is an embedded and linked ``:Image`` (``knn_floor`` set), after
a warm-up of each path, in ``--rounds`` alternating rounds. STOW-RS sends batches of ``--batch``
instances with `dicomweb-client`; the Orthanc path stores each into Orthanc over its REST API,
as a modality or a PACS forward would. The encoder is the demo checkpoint when one exists, else
a seeded random DenseNet-121 (the cost per image is the same).

    .venv/bin/python -m bench.dicom_throughput [--instances 200] [--batch 20] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from dicomweb_client.api import DICOMwebClient
from PIL import Image
from pydicom.uid import JPEG2000Lossless, RLELossless, generate_uid

from services.auth.api_keys import create_api_key
from services.config import Settings
from services.graph.store import GraphStore, close_shared_drivers
from services.privacy import pseudonymous_uid
from services.runtime.neo4j import Neo4jRuntime
from services.runtime.orthanc import FollowerRuntime, OrthancRuntime, authorization
from services.runtime.redis import RedisRuntime
from services.runtime.worker import WorkerRuntime
from services.secrets import patient_key_secret
from tests.support import BUNDLED_DIR, CR_IMAGE_STORAGE, dicom_bytes, dicom_dataset

HOME = Path(__file__).resolve().parent.parent / ".medgraph" / "bench-dicom"
RESULTS = Path(__file__).resolve().parent / "results" / "dicom_throughput.json"
PORTS = {
    "MEDGRAPH_NEO4J_BOLT_PORT": "28187",
    "MEDGRAPH_NEO4J_HTTP_PORT": "27974",
    "MEDGRAPH_REDIS_PORT": "26979",
    "MEDGRAPH_API_PORT": "25340",
    "MEDGRAPH_ORTHANC_HTTP_PORT": "28142",
    "MEDGRAPH_ORTHANC_DICOM_PORT": "24342",
}
SYNTAXES = ("explicit", "rle", "jpeg2000")


def configure_environment() -> None:
    """Every MEDGRAPH_ setting of this run, in the environment the servers inherit."""
    for name in [name for name in os.environ if name.startswith("MEDGRAPH_")]:
        del os.environ[name]
    root = HOME / "data"
    root.mkdir(parents=True, exist_ok=True)
    os.environ.update(PORTS)
    os.environ.update(
        MEDGRAPH_HOME=str(HOME),
        MEDGRAPH_DATA_ROOTS=json.dumps([str(root)]),
        MEDGRAPH_API_UPLOAD_DIR=str(root / "uploads"),
        MEDGRAPH_API_RATE_LIMIT_PER_MINUTE="0",
        MEDGRAPH_NEO4J_HEAP="1g",
        MEDGRAPH_NEO4J_PAGECACHE="256m",
        MEDGRAPH_API_MAX_UPLOAD_BYTES=str(64 * 1024 * 1024),
        PYTHONPATH=str(HOME.parent.parent),
    )


def instances(count: int) -> list[Any]:
    paths = sorted((BUNDLED_DIR / "images").glob("*.png"))
    made = []
    for index in range(count):
        grey = np.asarray(Image.open(paths[index % len(paths)]).convert("L"), dtype=np.uint16)
        dataset = dicom_dataset(
            grey * 16, modality="CR", sop_class=CR_IMAGE_STORAGE, WindowCenter=2048,
            WindowWidth=4096, PatientID=f"BENCH-{index % 50}", StudyInstanceUID=generate_uid(),
            SeriesInstanceUID=generate_uid(),
        )  # fmt: skip
        syntax = SYNTAXES[index % len(SYNTAXES)]
        if syntax == "rle":
            dataset.compress(RLELossless, generate_instance_uid=False)
        elif syntax == "jpeg2000":
            dataset.compress(JPEG2000Lossless, generate_instance_uid=False)
        made.append(dataset)
    return made


def linked_count(store: Any, studies: list[str]) -> int:
    record = store.run_text(
        "MATCH (i:Image) WHERE i.dicom_study_uid IN $studies AND i.knn_floor IS NOT NULL "
        "RETURN count(i) AS linked",
        studies=studies,
    )[0]
    return int(record["linked"])


def wait_linked(store: Any, studies: list[str], count: int, timeout_s: float = 3600) -> float:
    deadline = time.monotonic() + timeout_s
    while linked_count(store, studies) < count:
        if time.monotonic() > deadline:
            raise SystemExit(f"only {linked_count(store, studies)} of {count} linked in time")
        time.sleep(0.5)
    return time.monotonic()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=200)
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of each path")
    args = parser.parse_args()
    configure_environment()

    from bench.load_test import encoder_checkpoint  # defers torch: the random checkpoint

    settings = Settings()
    checkpoint, encoder = encoder_checkpoint(settings)
    os.environ["MEDGRAPH_ENCODER_CHECKPOINT"] = str(checkpoint)
    settings = Settings()
    runtimes = [RedisRuntime(settings), Neo4jRuntime(settings), WorkerRuntime(settings),
                OrthancRuntime(settings), FollowerRuntime(settings)]  # fmt: skip
    api = None
    try:
        for runtime in runtimes:
            runtime.start()
        store = GraphStore.from_settings(settings)
        store.apply_schema()
        token = create_api_key(store, "bench-dicom", ("read", "write")).token
        log = (HOME / "logs" / "bench-api.log").open("ab")
        api = subprocess.Popen([sys.executable, "-m", "services.cli", "serve"], stdout=log,
                               stderr=subprocess.STDOUT)  # fmt: skip
        base = f"http://127.0.0.1:{settings.api_port}"
        for _ in range(240):
            try:
                urllib.request.urlopen(f"{base}/api/v1/health", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        secret = patient_key_secret(settings)
        results: dict[str, Any] = {}

        client = DICOMwebClient(f"{base}/dicomweb",
                                headers={"Authorization": f"Bearer {token}"})  # fmt: skip

        def stow(count: int) -> dict[str, float]:
            made = instances(count)
            studies = [pseudonymous_uid(secret, str(d.StudyInstanceUID)) for d in made]
            started = time.monotonic()
            for start in range(0, len(made), args.batch):
                answer = client.store_instances(made[start : start + args.batch])
                assert "FailedSOPSequence" not in answer, answer
            accepted = time.monotonic()
            done = wait_linked(store, studies, len(made))
            return {
                "accepted_per_s": round(len(made) / (accepted - started), 2),
                "stored_per_s": round(len(made) / (done - started), 2),
                "seconds": round(done - started, 2),
            }

        def through_orthanc(count: int) -> dict[str, float]:
            made = instances(count)
            studies = [pseudonymous_uid(secret, str(d.StudyInstanceUID)) for d in made]
            files = [dicom_bytes(dataset) for dataset in made]
            started = time.monotonic()
            for data in files:
                request = urllib.request.Request(
                    f"{settings.orthanc_base_url}/instances", data=data, method="POST",
                    headers={"Authorization": authorization(settings)},
                )  # fmt: skip
                urllib.request.urlopen(request, timeout=60).read()
            in_orthanc = time.monotonic()
            done = wait_linked(store, studies, len(made))
            return {
                "into_orthanc_per_s": round(len(made) / (in_orthanc - started), 2),
                "stored_per_s": round(len(made) / (done - started), 2),
                "seconds": round(done - started, 2),
            }

        # Warm both paths (the worker loads the encoder on its first task), then alternate.
        stow(10)
        through_orthanc(10)
        rounds = []
        for _ in range(args.rounds):
            rounds.append({"stow_rs": stow(args.instances)})
            rounds[-1]["orthanc_follow"] = through_orthanc(args.instances)
        results["instances"] = args.instances
        results["stow_batch"] = args.batch
        results["rounds"] = rounds
        for path in ("stow_rs", "orthanc_follow"):
            rates = [one[path]["stored_per_s"] for one in rounds]
            results[f"{path}_stored_per_s_median"] = float(np.median(rates))
        results["orthanc_over_stow"] = round(
            results["orthanc_follow_stored_per_s_median"] / results["stow_rs_stored_per_s_median"],
            3,
        )
        results.update(
            measured_at=datetime.now(UTC).isoformat(timespec="seconds"),
            load_average_1m=round(os.getloadavg()[0], 2),
            cpus=os.cpu_count(),
            encoder=encoder,
            image="64x64 12-bit CR; explicit VR, RLE, JPEG 2000 lossless in turn",
            worker="one local Celery worker, concurrency 2 (embed and graph queues)",
        )
        print(json.dumps(results, indent=2))
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    finally:
        if api is not None:
            api.terminate()
            api.wait(timeout=30)
        close_shared_drivers()
        for runtime in reversed(runtimes):
            runtime.stop()


if __name__ == "__main__":
    main()
