"""Builders for the encoder tests: one base image written in many formats, tiny data sets.

A plain module (not conftest) so test files can import it; pytest puts this folder on sys.path.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import nibabel
import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset

from tests import support
from tests.support import BUNDLED_DIR

BUNDLED_LABELS = BUNDLED_DIR / "labels.csv"
PYDICOM_TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
NIBABEL_TEST_DATA = Path(nibabel.__file__).parent / "tests" / "data"
SECRET_PATIENT_ID = "PATIENT-SECRET-4711"
TWELVE_BIT_MAX = 4095


def base_image(height: int = 40, width: int = 48) -> np.ndarray:
    """An asymmetric grey test image, float in [0, 1], exactly representable in 8 bits.

    A diagonal gradient plus a bright block in the top-left corner, so any flip, transpose or
    inversion is visible.
    """
    rows, columns = np.mgrid[0:height, 0:width]
    levels = np.round(255 * (0.6 * rows / (height - 1) + 0.4 * columns / (width - 1)))
    levels[2:10, 3:14] = 255
    levels[-1, -1] = 0
    return (levels / 255.0).astype(np.float64)


def png_bytes(array: np.ndarray, mode: str = "L") -> bytes:
    """``array`` in [0, 1] written as a PNG of the given mode (L, I;16, RGB, RGBA, P)."""
    buffer = io.BytesIO()
    if mode == "I;16":
        image = Image.fromarray(np.round(array * 65535).astype(np.uint16))
    else:
        grey = Image.fromarray(np.round(array * 255).astype(np.uint8))
        if mode == "RGBA":
            rgba = np.dstack([np.asarray(grey)] * 3 + [np.full(array.shape, 255, np.uint8)])
            image = Image.fromarray(rgba, mode="RGBA")
        elif mode == "P":
            image = grey.convert("P", palette=Image.Palette.ADAPTIVE, colors=256)
        else:
            image = grey.convert(mode)
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg_bytes(array: np.ndarray, mode: str = "L", quality: int = 95) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.round(array * 255).astype(np.uint8)).convert(mode).save(
        buffer, format="JPEG", quality=quality
    )
    return buffer.getvalue()


def dicom_dataset(
    stored: np.ndarray, *, patient_id: str | None = SECRET_PATIENT_ID, **kwargs: object
) -> Dataset:
    """``tests.support.dicom_dataset`` carrying the patient id the privacy checks look for."""
    return support.dicom_dataset(stored, patient_id=patient_id, **kwargs)  # type: ignore[arg-type]


def write_labels(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def bundled_subset(target: Path, patients: int) -> Path:
    """labels.csv holding the bundled images of the first ``patients`` patients (by id order)."""
    with BUNDLED_LABELS.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    chosen = sorted({row["Patient ID"] for row in rows}, key=int)[:patients]
    kept = [row for row in rows if row["Patient ID"] in chosen]
    target.mkdir(parents=True, exist_ok=True)
    header = list(rows[0].keys())
    return write_labels(
        target / "labels.csv", header, [[row[name] for name in header] for row in kept]
    )


TINY_TRAINING = {"epochs": 1, "image_size": 32, "batch_size": 16, "seed": 3}
