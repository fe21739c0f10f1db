"""Patient identifiers never leave the server in clear.

- Ingestion keeps no DICOM header value but the pixels, their geometry and the modality; the
  PatientID only becomes ``patient_key = HMAC-SHA256(secret, id)`` (``services.ingest.pipeline``).
- The original-file endpoint serves a DICOM file only as a de-identified copy made here: an
  allow-list of the attributes needed to display the image (pixel module, modality, windowing
  and rescale), new UIDs, nothing else. Names, IDs, dates, addresses, accession and study
  numbers, institution and physician names, private tags and every other attribute are dropped.
- File names carry identifiers too (an NIH name is the patient number and follow-up). The
  graph keeps where a file lies only sealed (``seal_source``: authenticated encryption with a
  key derived from the patient-key secret), so the graph, its backups and Neo4j Browser users
  never read a path; the API opens it to serve the file. Clients see a neutral
  ``display_name`` (key prefix and format). The original base name is kept only when the
  operator asks for it (``keep_original_name_keys``), as an HMAC like the patient key.
- What the archive keeps of a DICOM instance's identity are pseudonyms (``archive_identity``):
  the patient key, and study, series and SOP instance UIDs derived from the originals by the
  same HMAC, so instances of one study stay together (DICOMweb's QIDO-RS lists them) while the
  original UIDs, which identify a study, are never stored. An instance received over DICOMweb
  or from the PACS is kept only as ``pseudonymised_dicom``'s copy.
- Thumbnails are rendered from the decoded pixels only. Text burned into the pixels (some
  scanners print the patient's name on the image) is out of scope: nothing here reads or masks
  it.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import io
from dataclasses import dataclass
from pathlib import PurePath

from cryptography.fernet import Fernet, InvalidToken

# Attributes a viewer needs to show the pixels as the scanner meant them; nothing identifying.
KEPT_ATTRIBUTES = frozenset(
    {
        "SOPClassUID",
        "Modality",
        "ImageType",
        "BodyPartExamined",
        "ViewPosition",
        "SamplesPerPixel",
        "PhotometricInterpretation",
        "PlanarConfiguration",
        "NumberOfFrames",
        "Rows",
        "Columns",
        "PixelSpacing",
        "ImagerPixelSpacing",
        "BitsAllocated",
        "BitsStored",
        "HighBit",
        "PixelRepresentation",
        "SmallestImagePixelValue",
        "LargestImagePixelValue",
        "RedPaletteColorLookupTableDescriptor",
        "GreenPaletteColorLookupTableDescriptor",
        "BluePaletteColorLookupTableDescriptor",
        "RedPaletteColorLookupTableData",
        "GreenPaletteColorLookupTableData",
        "BluePaletteColorLookupTableData",
        "PresentationLUTShape",
        "RescaleIntercept",
        "RescaleSlope",
        "RescaleType",
        "ModalityLUTSequence",
        "WindowCenter",
        "WindowWidth",
        "VOILUTFunction",
        "VOILUTSequence",
        "PixelData",
        "FloatPixelData",
        "DoubleFloatPixelData",
    }
)
KEPT_FILE_META = frozenset({"MediaStorageSOPClassUID", "TransferSyntaxUID"})
# Root of UUID-derived UIDs (DICOM PS3.5 B.2), so new UIDs need no registered organisation root.
UUID_UID_ROOT = "2.25."


def image_uid(image_key: str) -> str:
    """A UID for the de-identified copy, derived from the image key (no link to the original)."""
    return UUID_UID_ROOT + str(int(image_key[:32], 16))


def deidentified_dicom(data: bytes, image_key: str) -> bytes:
    """A DICOM file holding only ``KEPT_ATTRIBUTES`` of ``data`` (pixel data untouched)."""
    import pydicom

    original = pydicom.dcmread(io.BytesIO(data), force=True)
    uid = image_uid(image_key)
    copy = _allow_listed(original, uid)
    copy.DeidentificationMethod = "medgraph allow-list: pixel module, modality and windowing only"
    return _file_bytes(copy)


def _allow_listed(original: object, sop_uid: str) -> object:
    """A dataset with ``KEPT_ATTRIBUTES`` of ``original``, ``sop_uid`` as its SOPInstanceUID and
    a file meta of its own."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset

    copy = Dataset()
    for element in original:  # type: ignore[attr-defined]
        if element.keyword in KEPT_ATTRIBUTES:
            copy.add(element)
    copy.SOPInstanceUID = sop_uid
    copy.PatientIdentityRemoved = "YES"
    meta = FileMetaDataset()
    for element in getattr(original, "file_meta", None) or []:
        if element.keyword in KEPT_FILE_META:
            meta.add(element)
    meta.MediaStorageSOPInstanceUID = sop_uid
    if "MediaStorageSOPClassUID" not in meta and "SOPClassUID" in copy:
        meta.MediaStorageSOPClassUID = copy.SOPClassUID
    if "TransferSyntaxUID" not in meta:
        meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    copy.file_meta = meta
    return copy


def _file_bytes(dataset: object) -> bytes:
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)  # type: ignore[attr-defined]
    return buffer.getvalue()


# --- file locations and names -------------------------------------------------------------------
SEALED_PREFIX = "sealed:v1:"
_SOURCE_KEY_LABEL = b"medgraph: sealed source paths v1"
_NAME_KEY_LABEL = b"medgraph: original file name v1:"
_FORMAT_SUFFIXES = {"PNG": "png", "JPEG": "jpg"}


@functools.lru_cache(maxsize=8)
def _cipher(secret: bytes) -> Fernet:
    # A key of its own, derived from the patient-key secret that every worker already has.
    derived = hmac.new(secret, _SOURCE_KEY_LABEL, hashlib.sha256).digest()
    return Fernet(base64.urlsafe_b64encode(derived))


def is_sealed(stored: str | None) -> bool:
    return bool(stored) and str(stored).startswith(SEALED_PREFIX)


def seal_source(secret: bytes, path: str) -> str:
    """The form in which the graph keeps a file's path (AES-CBC + HMAC, Fernet)."""
    return SEALED_PREFIX + _cipher(secret).encrypt(path.encode("utf-8")).decode("ascii")


def open_source(secret: bytes, stored: str | None) -> str | None:
    """The path a stored ``source`` names; None when it cannot be opened (another secret).
    A path stored before sealing existed is returned as it is, until it is migrated."""
    if not stored:
        return None
    if not stored.startswith(SEALED_PREFIX):
        return stored
    try:
        return _cipher(secret).decrypt(stored[len(SEALED_PREFIX) :].encode("ascii")).decode()
    except (InvalidToken, ValueError):
        return None


def original_name_key(secret: bytes, path: str) -> str:
    """HMAC-SHA256 of the file's base name: lets an operator who knows a name find its image
    (``medgraph find-name``) while the graph holds nothing readable."""
    name = PurePath(path).name
    return hmac.new(secret, _NAME_KEY_LABEL + name.encode("utf-8"), hashlib.sha256).hexdigest()


def display_name(key: str, modality: str | None) -> str:
    """What clients are shown instead of a file name: the key's prefix and the format."""
    suffix = _FORMAT_SUFFIXES.get(modality or "", "dcm" if modality else "img")
    return f"{key[:12]}.{suffix}"


# --- pseudonyms for the archive (DICOMweb and the PACS feed, issue 25) ------------------------
# A copy made by ``pseudonymised_dicom`` says so in DeidentificationMethod, with a tag that only
# this installation's secret can make, so ingestion takes its pseudonyms as they are instead of
# keying them a second time (a forged marker is keyed again like any other value).
PSEUDONYM_MARK = "medgraph pseudonyms "
_MARK_HEX = 32


def keyed_hex(secret: bytes, value: str) -> str:
    """HMAC-SHA256 of ``value`` (stripped) as hex: the one way an identifier becomes a pseudonym."""
    return hmac.new(secret, value.strip().encode("utf-8"), hashlib.sha256).hexdigest()


def pseudonymous_uid(secret: bytes, original_uid: str) -> str:
    """A UID standing for ``original_uid`` in this installation (equal inputs, equal UIDs, so a
    study's instances stay one study), not reversible without the secret."""
    return UUID_UID_ROOT + str(int(keyed_hex(secret, "uid:" + original_uid)[:32], 16))


@dataclass(frozen=True)
class ArchiveIdentity:
    """What the archive keeps of a DICOM instance's identity: pseudonyms only."""

    patient_key: str | None
    study_uid: str | None
    series_uid: str | None
    sop_uid: str | None


def _mark(secret: bytes, identity: ArchiveIdentity) -> str:
    text = "|".join(str(part) for part in (identity.patient_key, identity.study_uid,
                                           identity.series_uid, identity.sop_uid))  # fmt: skip
    return PSEUDONYM_MARK + keyed_hex(secret, "mark:" + text)[:_MARK_HEX]


def archive_identity(
    secret: bytes,
    patient_id: str | None,
    uids: tuple[str, str, str] | None,
    deidentification: str | None,
) -> ArchiveIdentity:
    """The pseudonyms of a decoded DICOM's raw PatientID and UIDs; a copy this installation
    pseudonymised already (a valid mark) keeps the ones it carries."""
    study, series, sop = uids if uids else (None, None, None)
    carried = ArchiveIdentity(patient_id, study, series, sop)
    if deidentification and hmac.compare_digest(deidentification, _mark(secret, carried)):
        return carried
    return ArchiveIdentity(
        keyed_hex(secret, patient_id) if patient_id else None,
        *(pseudonymous_uid(secret, uid) if uid else None for uid in (study, series, sop)),
    )


def pseudonymised_dicom(data: bytes, secret: bytes) -> tuple[bytes, ArchiveIdentity]:
    """The copy the archive keeps of a received instance: ``KEPT_ATTRIBUTES``, the pseudonymous
    study, series and SOP instance UIDs, the patient key as PatientID, and the mark; nothing
    else. ValueError when the instance has no SOPInstanceUID, StudyInstanceUID or
    SeriesInstanceUID (DICOMweb needs all three)."""
    import pydicom

    original = pydicom.dcmread(io.BytesIO(data), force=True)
    raw = {name: str(original.get(name, "") or "").strip() for name in
           ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")}  # fmt: skip
    missing = [name for name, value in raw.items() if name != "PatientID" and not value]
    if missing:
        raise ValueError(f"the instance has no {', '.join(missing)}")
    identity = archive_identity(
        secret,
        raw["PatientID"] or None,
        (raw["StudyInstanceUID"], raw["SeriesInstanceUID"], raw["SOPInstanceUID"]),
        None,  # whatever the sender claims, received values are keyed
    )
    assert identity.sop_uid is not None
    copy = _allow_listed(original, identity.sop_uid)
    copy.StudyInstanceUID = identity.study_uid  # type: ignore[attr-defined]
    copy.SeriesInstanceUID = identity.series_uid  # type: ignore[attr-defined]
    if identity.patient_key:
        copy.PatientID = identity.patient_key  # type: ignore[attr-defined]
    copy.DeidentificationMethod = _mark(secret, identity)  # type: ignore[attr-defined]
    return _file_bytes(copy), identity
