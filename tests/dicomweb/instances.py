"""DICOM instances for the DICOMweb and PACS tests: bundled chest X-ray pixels, PHI in every
header (tests/reliability/phi.py's patients), and the transfer syntaxes a PACS sends:
uncompressed (explicit and implicit VR), RLE Lossless (pydicom's own encoder), JPEG 2000
(pylibjpeg-openjpeg's encoder) and JPEG Baseline (Pillow's encoder, encapsulated by pydicom).
One instance can be given a broken pixel stream."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    RLELossless,
)

from tests.reliability.phi import PATIENTS, PhiDicom, study_tags
from tests.support import BUNDLED_DIR, CR_IMAGE_STORAGE, dicom_bytes, dicom_dataset

SYNTAXES = ("explicit", "implicit", "rle", "jpeg2000", "jpeg-baseline")
PATIENT_LETTERS = ("A", "B", "C")
# Study numbers tests/reliability does not use (0-8 are its files'), so these studies are not
# the seeded graph's: one for the DICOMweb tests, one for the Orthanc tests.
DICOMWEB_STUDY, ORTHANC_STUDY = 9, 4


@dataclass(frozen=True)
class Instance:
    dataset: Dataset
    phi: PhiDicom  # the identifying values written into it (path unused)
    syntax: str
    broken: bool

    @property
    def data(self) -> bytes:
        return dicom_bytes(self.dataset)


def bundled_pixels(count: int, offset: int = 0) -> list[np.ndarray]:
    paths = sorted((BUNDLED_DIR / "images").glob("*.png"))[offset : offset + count]
    return [np.asarray(Image.open(path).convert("L"), dtype=np.uint8) for path in paths]


def make_instances(
    count: int, *, broken: int | None = None, offset: int = 0, study_number: int = DICOMWEB_STUDY
) -> list[Instance]:
    """``count`` instances over three patients (one study and series each), the transfer
    syntaxes in turn; the one at index ``broken`` has a pixel stream cut short."""
    instances = []
    for index, grey in enumerate(bundled_pixels(count, offset)):
        letter = PATIENT_LETTERS[index % len(PATIENT_LETTERS)]
        study = study_tags(letter, study_number)  # one study per patient
        tags = {**PATIENTS[letter], **study}
        tags["SOPInstanceUID"] = f"{study['SOPInstanceUID']}.{offset + index + 1}"
        syntax = SYNTAXES[index % len(SYNTAXES)]
        dataset = encode(grey, syntax, tags)
        if index == broken:
            dataset = break_pixels(dataset)
        instances.append(Instance(dataset, PhiDicom(BUNDLED_DIR, letter, tags), syntax,
                                  index == broken))  # fmt: skip
    return instances


def encode(grey: np.ndarray, syntax: str, tags: dict[str, str]) -> Dataset:
    if syntax == "jpeg-baseline":
        dataset = dicom_dataset(grey, bits_stored=8, modality="CR", sop_class=CR_IMAGE_STORAGE,
                                **tags)  # fmt: skip
        buffer = io.BytesIO()
        Image.fromarray(grey).save(buffer, format="JPEG", quality=95)
        dataset.PixelData = encapsulate([buffer.getvalue()])
        dataset["PixelData"].VR = "OB"
        dataset.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        dataset.LossyImageCompression = "01"
        return dataset
    stored = grey.astype(np.uint16) * 16
    dataset = dicom_dataset(stored, modality="CR", sop_class=CR_IMAGE_STORAGE,
                            WindowCenter=2048, WindowWidth=4096, **tags)  # fmt: skip
    if syntax == "implicit":
        dataset.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    elif syntax == "rle":
        dataset.compress(RLELossless, generate_instance_uid=False)
    elif syntax == "jpeg2000":
        dataset.compress(JPEG2000Lossless, generate_instance_uid=False)
    else:
        dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return dataset


def break_pixels(dataset: Dataset) -> Dataset:
    """The same instance with its JPEG 2000 codestream cut to its first 40 bytes."""
    if not dataset.file_meta.TransferSyntaxUID.is_compressed:
        dataset.compress(JPEG2000Lossless, generate_instance_uid=False)
    from pydicom.encaps import generate_fragmented_frames

    frame = b"".join(next(generate_fragmented_frames(dataset.PixelData)))
    dataset.PixelData = encapsulate([frame[:40]])
    return dataset
