"""Patient identifiers never leave the server in clear.

- Ingestion keeps no DICOM header value but the pixels, their geometry and the modality; the
  PatientID only becomes ``patient_key = HMAC-SHA256(secret, id)`` (``services.ingest.pipeline``).
- The original-file endpoint serves a DICOM file only as a de-identified copy made here: an
  allow-list of the attributes needed to display the image (pixel module, modality, windowing
  and rescale), new UIDs, nothing else. Names, IDs, dates, addresses, accession and study
  numbers, institution and physician names, private tags and every other attribute are dropped.
- Thumbnails are rendered from the decoded pixels only. Text burned into the pixels (some
  scanners print the patient's name on the image) is out of scope: nothing here reads or masks
  it.
"""

from __future__ import annotations

import io

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
