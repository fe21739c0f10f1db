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
    from pydicom.dataset import Dataset, FileMetaDataset

    original = pydicom.dcmread(io.BytesIO(data), force=True)
    copy = Dataset()
    for element in original:
        if element.keyword in KEPT_ATTRIBUTES:
            copy.add(element)
    uid = image_uid(image_key)
    copy.SOPInstanceUID = uid
    copy.PatientIdentityRemoved = "YES"
    copy.DeidentificationMethod = "medgraph allow-list: pixel module, modality and windowing only"
    meta = FileMetaDataset()
    for element in original.file_meta or []:
        if element.keyword in KEPT_FILE_META:
            meta.add(element)
    meta.MediaStorageSOPInstanceUID = uid
    if "MediaStorageSOPClassUID" not in meta and "SOPClassUID" in copy:
        meta.MediaStorageSOPClassUID = copy.SOPClassUID
    if "TransferSyntaxUID" not in meta:
        meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    copy.file_meta = meta
    buffer = io.BytesIO()
    copy.save_as(buffer, enforce_file_format=True)
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
