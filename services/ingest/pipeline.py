"""From image files to ``:Image`` rows, and the node writes; no Celery here, so tests and the
benchmark use the very same code the tasks run.

Per file: read the bytes once, key = SHA-256 of those bytes, decode (PNG/JPEG/DICOM), embed.
A file that cannot be used becomes a ``(file, reason)`` failure and the rest go on. Files whose
key is already stored with an embedding of the same model version are not decoded or embedded
again (re-ingesting a folder only refreshes paths and labels).

Patient identity: the label CSV's patient id, else the DICOM PatientID, is turned into
``patient_key = HMAC-SHA256(installation secret, id)`` as early as possible; the raw id is never
stored, sent through Redis, or logged.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypedDict

import numpy as np

from services.encoder.imaging import DecodedImage, ImageReadError, ReadLimits, read_image
from services.graph.changes import CHANGE_LOG_KEEP
from services.graph.store import GraphStore
from services.privacy import archive_identity, keyed_hex, original_name_key, seal_source

EMBEDDING_DIM = 1024
# Decoded float32 pixels held at once while embedding (full-size DICOMs are ~10-40 MB each).
PIXEL_BUDGET = 128 * 1024 * 1024


class Embedder(Protocol):
    """What ingestion needs of ``services.encoder.extractor.FeatureExtractor``."""

    @property
    def model_version(self) -> str: ...

    def embed_with_findings(self, images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Codes float32 (n, 1024) and calibrated finding probabilities float32 (n, F)."""
        ...


class FileEntry(TypedDict):
    """One file of a job as it travels in a task message."""

    path: str
    findings: list[str] | None  # None = no label for this file
    patient_key: str | None  # HMAC already; None = take the DICOM PatientID if any


@dataclass(frozen=True)
class EmbedOutcome:
    rows: list[dict[str, Any]]  # ready for ``write_image_rows`` (embedding base64 or None)
    failures: list[tuple[str, str]]  # (file, reason)
    embedded: int  # images that went through the network
    reused: int  # already stored with this model version


def patient_key(secret: bytes, raw_patient_id: str) -> str:
    """The pseudonymous patient key stored in the graph (hex HMAC-SHA256)."""
    return keyed_hex(secret, raw_patient_id)


def encode_embedding(vector: np.ndarray) -> str:
    """float32 little-endian bytes in base64: a quarter of the JSON size of a float list."""
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")


def decode_embedding(text: str) -> np.ndarray:
    vector = np.frombuffer(base64.b64decode(text), dtype="<f4")
    if vector.shape != (EMBEDDING_DIM,):
        raise ValueError(f"an embedding must have {EMBEDDING_DIM} values, got {vector.shape}")
    return vector


def check_readable(path: Path, limits: ReadLimits) -> None:
    """ImageReadError (with the encoder's wording) unless ``path`` is a file of allowed size."""
    try:
        regular = path.is_file()
        size = path.stat().st_size if regular else -1
    except OSError:
        regular, size = False, -1
    if not regular or size > limits.max_file_bytes:
        read_image(path, limits=limits)  # raises ImageReadError naming the precise reason
        raise ImageReadError(str(path), "not a regular file")  # defensive: read_image raised


def read_file_bytes(path: Path, limits: ReadLimits) -> bytes:
    check_readable(path, limits)
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ImageReadError(str(path), f"cannot read the file ({exc.strerror})") from None


def hash_file(path: Path, limits: ReadLimits) -> tuple[str, int]:
    """(SHA-256 hex, size) streamed from disk; ImageReadError when the file is unusable."""
    check_readable(path, limits)
    digest = hashlib.sha256()
    size = 0
    try:
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
                size += len(block)
    except OSError as exc:
        raise ImageReadError(str(path), f"cannot read the file ({exc.strerror})") from None
    return digest.hexdigest(), size


def modality_of(decoded: DecodedImage) -> str:
    """DICOM Modality, or the file format for PNG/JPEG (cypher/README.md)."""
    return decoded.modality if decoded.source_format == "dicom" else decoded.source_format.upper()


def embed_files(
    entries: list[FileEntry],
    extractor: Embedder,
    *,
    limits: ReadLimits,
    secret: bytes,
    lookup_known: Callable[[list[str]], set[str]] | None = None,
    batch_size: int = 64,
    keep_name_keys: bool = False,
) -> EmbedOutcome:
    """Rows for every usable file, a failure for every other one.

    ``lookup_known(keys)``: which of these keys are already stored with an embedding of
    ``extractor.model_version``; those files are not decoded or embedded again.
    """
    rows: list[dict[str, Any]] = []
    failures: list[tuple[str, str]] = []
    keyed: list[tuple[FileEntry, str, int]] = []
    for entry in entries:
        try:
            key, size = hash_file(Path(entry["path"]), limits)
        except ImageReadError as exc:
            failures.append((entry["path"], exc.reason))
            continue
        keyed.append((entry, key, size))
    known = lookup_known([key for _, key, _ in keyed]) if lookup_known and keyed else set()

    pending: list[tuple[dict[str, Any], np.ndarray]] = []
    pending_pixels = 0
    embedded = reused = 0
    for entry, key, size in keyed:
        row: dict[str, Any] = {
            "key": key,
            # The graph keeps the path sealed (it names the patient, services/privacy.py);
            # "path" stays in clear for this ingest's own failure reports, never stored.
            "source": seal_source(secret, entry["path"]),
            "path": entry["path"],
            "name_key": original_name_key(secret, entry["path"]) if keep_name_keys else None,
            "findings": entry["findings"],
            "patient_key": entry["patient_key"],
            "file_bytes": size,
            "model_version": extractor.model_version,
            "modality": None, "width": None, "height": None, "embedding": None,
            "finding_probabilities": None,
            "dicom_study_uid": None, "dicom_series_uid": None, "dicom_sop_uid": None,
        }  # fmt: skip
        if key in known:
            # Same bytes as a stored node: it keeps its size, modality, embedding and DICOM
            # patient; only the path and labels are refreshed.
            rows.append(row)
            reused += 1
            continue
        try:
            data = read_file_bytes(Path(entry["path"]), limits)
            decoded = read_image(data, name=entry["path"], limits=limits)
        except ImageReadError as exc:
            failures.append((entry["path"], exc.reason))
            continue
        # The key of the bytes actually decoded (the file may have changed since hashing).
        row.update(key=hashlib.sha256(data).hexdigest(), file_bytes=len(data))
        if decoded.source_format == "dicom":
            identity = archive_identity(
                secret, decoded.patient_id, decoded.dicom_uids, decoded.deidentification
            )
            if row["patient_key"] is None:
                row["patient_key"] = identity.patient_key
            row.update(dicom_study_uid=identity.study_uid, dicom_series_uid=identity.series_uid,
                       dicom_sop_uid=identity.sop_uid)  # fmt: skip
        row.update(modality=modality_of(decoded), width=decoded.width, height=decoded.height)
        pending.append((row, decoded.pixels))
        pending_pixels += decoded.pixels.size
        if len(pending) >= batch_size or pending_pixels * 4 >= PIXEL_BUDGET:
            embedded += _embed_pending(pending, extractor, rows, failures)
            pending, pending_pixels = [], 0
    if pending:
        embedded += _embed_pending(pending, extractor, rows, failures)
    return EmbedOutcome(rows, failures, embedded, reused)


def _embed_pending(
    pending: list[tuple[dict[str, Any], np.ndarray]],
    extractor: Embedder,
    rows: list[dict[str, Any]],
    failures: list[tuple[str, str]],
) -> int:
    """Embeds a chunk; if the chunk fails, each image alone, so one bad image fails alone."""
    try:
        codes, probabilities = extractor.embed_with_findings([pixels for _, pixels in pending])
    except (ValueError, RuntimeError):
        codes = probabilities = None
    embedded = 0
    for position, (row, pixels) in enumerate(pending):
        if codes is not None and probabilities is not None:
            code, predicted = codes[position], probabilities[position]
        else:
            try:
                one_code, one_prediction = extractor.embed_with_findings([pixels])
            except (ValueError, RuntimeError) as exc:
                failures.append((row["path"], f"cannot compute the image code ({exc})"))
                continue
            code, predicted = one_code[0], one_prediction[0]
        if not (np.all(np.isfinite(code)) and np.all(np.isfinite(predicted))):
            failures.append((row["path"], "the image code is not finite (NaN/inf)"))
            continue
        row["embedding"] = encode_embedding(code)
        row["finding_probabilities"] = [float(value) for value in predicted]
        rows.append(row)
        embedded += 1
    return embedded


def node_rows(rows: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Task rows -> Cypher parameters (embedding as a list of floats, or None)."""
    for row in rows:
        embedding = row.get("embedding")
        if isinstance(embedding, str):
            embedding = decode_embedding(embedding).tolist()
        elif isinstance(embedding, np.ndarray):
            embedding = embedding.astype(np.float32).tolist()
        # The clear path stays out of the query (and so out of Neo4j's query log).
        yield {**{k: v for k, v in row.items() if k != "path"}, "embedding": embedding}


def write_image_rows(store: GraphStore, rows: Iterable[dict[str, Any]], batch_size: int) -> int:
    """MERGE the ``:Image`` nodes (and ``:Patient`` links), each batch logged as a change of
    the search side's read model in its transaction; returns rows sent."""
    return store.write_batches(
        "ingest_write_images", node_rows(rows), batch_size, keep=CHANGE_LOG_KEEP
    )


def stored_keys(store: GraphStore, keys: list[str], model_version: str) -> set[str]:
    """Of ``keys``, those stored with an embedding from ``model_version``."""
    if not keys:
        return set()
    records = store.query("ingest_embedded_keys", keys=keys, model_version=model_version)
    return {record["key"] for record in records}
