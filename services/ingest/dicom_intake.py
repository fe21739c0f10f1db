"""Receiving DICOM instances from the imaging world (DICOMweb STOW-RS and the PACS feed).

One path for both: each instance is decoded under the same limits as any upload (so a broken
pixel stream or an oversized image is refused here, with the reader's reason, before anything is
kept), replaced by its pseudonymised copy (``services.privacy.pseudonymised_dicom``: no PHI
value is ever written), kept once under ``<upload folder>/dicom/<sha256>.dcm`` and ingested
through Celery like every other file. The key is the SHA-256 of the copy, which is the same for
the same instance however often it arrives, so a re-sent instance changes nothing.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

from services.config import Settings
from services.encoder.imaging import ImageReadError, ReadLimits, read_image
from services.ingest.submit import keep_file, plan_ingest, submit
from services.paths import upload_folder
from services.privacy import ArchiveIdentity, pseudonymised_dicom

ARCHIVE_SUBFOLDER = "dicom"
PREAMBLE = 128
DICM = b"DICM"
FILE_META_GROUP = b"\x02\x00"  # (0002,xxxx), little endian


@dataclass(frozen=True)
class ReceivedInstance:
    key: str  # SHA-256 of the pseudonymised copy = the :Image key
    path: Path
    identity: ArchiveIdentity
    sop_class_uid: str | None


class RefusedInstance(ValueError):
    """An instance that is not kept; ``reason`` says why (no file name, no PHI)."""

    def __init__(self, reason: str, sop_class_uid: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.sop_class_uid = sop_class_uid


def part10(data: bytes) -> bytes:
    """A DICOM instance as a Part 10 file: DICOMweb and DICOM clients may send it without the
    128-byte preamble and ``DICM`` prefix (pydicom's ``dcmwrite`` does), starting directly with
    the file meta group (0002)."""
    if data[PREAMBLE : PREAMBLE + 4] != DICM and data[:2] == FILE_META_GROUP:
        return bytes(PREAMBLE) + DICM + data
    return data


def archive_folder(settings: Settings) -> Path:
    return upload_folder(settings) / ARCHIVE_SUBFOLDER


def receive_instance(
    data: bytes,
    name: str,
    settings: Settings,
    secret: bytes,
    *,
    limits: ReadLimits | None = None,
    decode_slot: Callable[[], AbstractContextManager[object]] = nullcontext,
) -> ReceivedInstance:
    """Checks, pseudonymises and keeps one instance; RefusedInstance when it cannot be used.

    ``name`` is how reasons call the instance (never its file name or a header value);
    ``decode_slot`` bounds concurrent decodes in a server process."""
    limits = limits or ReadLimits.from_settings(settings)
    if not data:
        raise RefusedInstance(f"{name}: the instance is empty (0 bytes)")
    data = part10(data)
    with decode_slot():
        try:
            decoded = read_image(data, name=name, limits=limits)
        except ImageReadError as problem:
            raise RefusedInstance(str(problem)) from None
        if decoded.source_format != "dicom":
            raise RefusedInstance(f"{name}: not a DICOM instance ({decoded.source_format})")
        del decoded
    try:
        copy, identity = pseudonymised_dicom(data, secret)
    except ValueError as problem:
        raise RefusedInstance(f"{name}: {problem}") from None
    except Exception as problem:  # pydicom fails on broken headers with assorted types
        raise RefusedInstance(
            f"{name}: the DICOM header cannot be copied ({type(problem).__name__})"
        ) from None
    key = hashlib.sha256(copy).hexdigest()
    path = keep_file(archive_folder(settings), copy, key, "dicom")
    sop_class = _sop_class(copy)
    return ReceivedInstance(key, path, identity, sop_class)


def _sop_class(copy: bytes) -> str | None:
    import pydicom

    dataset = pydicom.dcmread(io.BytesIO(copy), stop_before_pixels=True)
    value = dataset.get("SOPClassUID")
    return str(value) if value else None


def ingest_received(paths: list[Path], settings: Settings, job_id: str | None = None) -> str:
    """One Celery ingest job for the kept copies; its id (IngestError when it cannot start)."""
    plan = plan_ingest(paths, settings)
    return submit(plan, settings, job_id).job_id
