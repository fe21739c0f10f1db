"""Image reading: every supported format lands in the same orientation and intensity range."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from encoder_testkit import (
    NIBABEL_TEST_DATA,
    PYDICOM_TEST_FILES,
    SECRET_PATIENT_ID,
    TWELVE_BIT_MAX,
    base_image,
    dicom_dataset,
    jpeg_bytes,
    png_bytes,
)
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian, JPEG2000Lossless, RLELossless

from services.config import get_settings
from services.encoder.imaging import (
    DecodeBusy,
    DecodedImage,
    DecodeGate,
    ImageReadError,
    ReadLimits,
    read_image,
)
from tests.support import dicom_bytes
from tests.support import dicom_dataset as support_dicom_dataset

BASE = base_image()
STORED = np.round(BASE * TWELVE_BIT_MAX).astype(np.uint16)
# Linear window exactly spanning 12 bits: output = stored / 4095.
FULL_WINDOW = {"WindowCenter": 2048, "WindowWidth": 4096}
EXIF_ORIENTATION = 0x0112
LIMITS = ReadLimits(max_file_bytes=10_000_000, max_image_pixels=10_000_000)
TWELVE_BIT_STEP = 1.0 / TWELVE_BIT_MAX


def _compressed(dataset: Dataset, syntax: str) -> Dataset:
    dataset.compress(syntax)
    return dataset


# name -> (file bytes, file name, largest allowed pixel difference from BASE)
SAME_IMAGE_VARIANTS: dict[str, Callable[[], tuple[bytes, str, float]]] = {
    "png-8bit-grey": lambda: (png_bytes(BASE, "L"), "a.png", 1e-6),
    "png-16bit-grey": lambda: (png_bytes(BASE, "I;16"), "a.png", 1e-6),
    "png-rgb": lambda: (png_bytes(BASE, "RGB"), "a.png", 1e-6),
    "png-rgba": lambda: (png_bytes(BASE, "RGBA"), "a.png", 1e-6),
    "png-palette": lambda: (png_bytes(BASE, "P"), "a.png", 1e-6),
    "jpeg-grey": lambda: (jpeg_bytes(BASE, "L"), "a.jpg", 0.08),
    "jpeg-rgb": lambda: (jpeg_bytes(BASE, "RGB"), "a.jpg", 0.08),
    "dicom-monochrome2-window": lambda: (
        dicom_bytes(dicom_dataset(STORED, **FULL_WINDOW)),
        "a.dcm",
        TWELVE_BIT_STEP,
    ),
    "dicom-monochrome1-window": lambda: (
        dicom_bytes(
            dicom_dataset(TWELVE_BIT_MAX - STORED, photometric="MONOCHROME1", **FULL_WINDOW)
        ),
        "a.dcm",
        TWELVE_BIT_STEP,
    ),
    "dicom-monochrome1-no-window": lambda: (
        dicom_bytes(dicom_dataset(TWELVE_BIT_MAX - STORED, photometric="MONOCHROME1")),
        "a.dcm",
        TWELVE_BIT_STEP,
    ),
    "dicom-rescale-intercept": lambda: (
        dicom_bytes(
            dicom_dataset(
                STORED + 1000,
                bits_stored=16,
                RescaleIntercept=-1000,
                RescaleSlope=1,
                RescaleType="US",
                **FULL_WINDOW,
            )
        ),
        "a.dcm",
        TWELVE_BIT_STEP,
    ),
    "dicom-rescale-slope": lambda: (
        dicom_bytes(
            dicom_dataset(
                STORED * 2,
                bits_stored=16,
                RescaleIntercept=0,
                RescaleSlope=0.5,
                RescaleType="US",
                **FULL_WINDOW,
            )
        ),
        "a.dcm",
        TWELVE_BIT_STEP,
    ),
    "dicom-rle": lambda: (
        dicom_bytes(_compressed(dicom_dataset(STORED, **FULL_WINDOW), RLELossless)),
        "a.dcm",
        TWELVE_BIT_STEP,
    ),
    "dicom-jpeg2000-lossless": lambda: (
        dicom_bytes(_compressed(dicom_dataset(STORED, **FULL_WINDOW), JPEG2000Lossless)),
        "a.dcm",
        TWELVE_BIT_STEP,
    ),
}


@pytest.mark.parametrize("variant", sorted(SAME_IMAGE_VARIANTS))
def test_every_format_reads_into_the_same_orientation_and_range(variant: str) -> None:
    data, name, tolerance = SAME_IMAGE_VARIANTS[variant]()
    decoded = read_image(data, name=name, limits=LIMITS)
    assert decoded.pixels.dtype == np.float32
    assert decoded.pixels.shape == BASE.shape == (decoded.height, decoded.width)
    assert decoded.pixels.min() >= 0.0 and decoded.pixels.max() <= 1.0
    # Orientation and polarity: the bright block stays top-left, the last pixel dark.
    assert decoded.pixels[2:10, 3:14].mean() > 0.95
    assert decoded.pixels[-1, -1] < 0.05
    assert np.abs(decoded.pixels - BASE).max() <= tolerance + 1e-6


def test_the_four_named_formats_agree_with_each_other(tmp_path: Path) -> None:
    png16 = read_image(png_bytes(BASE, "I;16"), "a.png", limits=LIMITS).pixels
    rgba = read_image(png_bytes(BASE, "RGBA"), "a.png", limits=LIMITS).pixels
    mono2 = read_image(dicom_bytes(dicom_dataset(STORED, **FULL_WINDOW)), "a.dcm", limits=LIMITS)
    mono1 = read_image(
        dicom_bytes(
            dicom_dataset(TWELVE_BIT_MAX - STORED, photometric="MONOCHROME1", **FULL_WINDOW)
        ),
        "b.dcm",
        limits=LIMITS,
    )
    for other in (rgba, mono2.pixels, mono1.pixels):
        np.testing.assert_allclose(other, png16, atol=TWELVE_BIT_STEP + 1e-6)
    assert (png16.shape, rgba.shape) == (mono1.pixels.shape, mono2.pixels.shape)


def test_exif_orientation_is_applied() -> None:
    # Stored upside down with the tag that says "rotate 180 degrees to display".
    upside_down = Image.fromarray(np.round(BASE[::-1, ::-1] * 255).astype(np.uint8))
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 3
    buffer = io.BytesIO()
    upside_down.save(buffer, format="JPEG", quality=95, exif=exif)
    decoded = read_image(buffer.getvalue(), "photo.jpg", limits=LIMITS)
    assert np.abs(decoded.pixels - BASE).mean() < 0.01


def test_source_format_modality_and_patient_id(tmp_path: Path) -> None:
    dicom = read_image(dicom_bytes(dicom_dataset(STORED)), "a.dcm", limits=LIMITS)
    png = read_image(png_bytes(BASE), "a.png", limits=LIMITS)
    jpeg = read_image(jpeg_bytes(BASE), "a.jpg", limits=LIMITS)
    assert (dicom.source_format, dicom.modality, dicom.patient_id) == (
        "dicom",
        "DX",
        SECRET_PATIENT_ID,
    )
    assert (png.source_format, png.modality, png.patient_id) == ("png", "OT", None)
    assert (jpeg.source_format, jpeg.modality) == ("jpeg", "OT")
    # The patient id must never reach logs through the object's text form.
    assert SECRET_PATIENT_ID not in repr(dicom) and SECRET_PATIENT_ID not in str(dicom)


def test_path_and_bytes_read_the_same(tmp_path: Path) -> None:
    path = tmp_path / "image.png"
    path.write_bytes(png_bytes(BASE, "I;16"))
    from_path = read_image(path, limits=LIMITS)
    from_bytes = read_image(path.read_bytes(), limits=LIMITS)
    assert isinstance(from_path, DecodedImage)
    np.testing.assert_array_equal(from_path.pixels, from_bytes.pixels)


@pytest.mark.parametrize(
    ("function", "expected_low_middle_high"),
    [
        ("LINEAR", (0.0, 0.5, 1.0)),
        ("LINEAR_EXACT", (0.0, 0.5, 1.0)),
        ("SIGMOID", (1 / (1 + np.exp(2.0)), 0.5, 1 / (1 + np.exp(-2.0)))),
    ],
)
def test_window_functions_map_the_window_to_unit_range(
    function: str, expected_low_middle_high: tuple[float, float, float]
) -> None:
    # Window 1000..2000 (center 1500, width 1000); probe at the edges and the center.
    stored = np.array([[1000, 1500, 2000], [0, 1500, 4000]], dtype=np.uint16)
    dataset = dicom_dataset(stored, WindowCenter=1500, WindowWidth=1000, VOILUTFunction=function)
    pixels = read_image(dicom_bytes(dataset), "w.dcm", limits=LIMITS).pixels
    low, middle, high = expected_low_middle_high
    np.testing.assert_allclose(pixels[0], [low, middle, high], atol=2e-3)
    assert pixels[1, 0] <= low + 1e-6 and pixels[1, 2] >= high - 1e-6


def test_voi_lut_sequence_is_applied_before_the_window() -> None:
    gamma_lut = np.round(65535 * (np.arange(4096) / 4095) ** 2).astype(np.uint16)
    lut_item = Dataset()
    lut_item.add_new(0x00283002, "US", [4096, 0, 16])  # LUT Descriptor
    lut_item.add_new(0x00283006, "US", gamma_lut.tolist())  # LUT Data
    dataset = dicom_dataset(STORED, VOILUTSequence=[lut_item], **FULL_WINDOW)
    pixels = read_image(dicom_bytes(dataset), "lut.dcm", limits=LIMITS).pixels
    np.testing.assert_allclose(pixels, (STORED / TWELVE_BIT_MAX) ** 2, atol=1e-4)


def test_multi_frame_dicom_reads_the_first_frame() -> None:
    frames = np.stack([STORED, TWELVE_BIT_MAX - STORED])
    dataset = dicom_dataset(frames, **FULL_WINDOW)
    assert int(dataset.NumberOfFrames) == 2
    pixels = read_image(dicom_bytes(dataset), "frames.dcm", limits=LIMITS).pixels
    np.testing.assert_allclose(pixels, BASE, atol=TWELVE_BIT_STEP + 1e-6)


# Shipped inside the pydicom wheel (pydicom 3 downloads others; those are never used here).
PYDICOM_SAMPLES = [
    "CT_small.dcm",  # CT with rescale slope/intercept
    "MR_small.dcm",
    "MR_small_RLE.dcm",
    "MR_small_jp2klossless.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "MR_small_bigendian.dcm",
    "MR_small_implicit.dcm",
    "JPEG2000.dcm",
    "JPGExtended.dcm",
    "image_dfl.dcm",  # deflated transfer syntax
    "examples_palette.dcm",  # PALETTE COLOR
    "examples_ybr_color.dcm",  # YBR_FULL_422 JPEG, 30 frames
    "SC_rgb_rle_16bit.dcm",
    "rtdose.dcm",  # 15 frames
]


@pytest.mark.parametrize("name", PYDICOM_SAMPLES)
def test_pydicom_sample_files_read(name: str) -> None:
    path = PYDICOM_TEST_FILES / name
    assert path.is_file(), f"pydicom no longer ships {name}"
    decoded = read_image(path, limits=LIMITS)
    header = pydicom.dcmread(path, stop_before_pixels=True)
    assert decoded.pixels.shape == (header.Rows, header.Columns)
    assert decoded.pixels.dtype == np.float32
    assert 0.0 <= decoded.pixels.min() < decoded.pixels.max() <= 1.0
    assert decoded.modality == str(header.get("Modality") or "OT")


def test_pydicom_compressed_samples_equal_the_uncompressed_one() -> None:
    reference = read_image(PYDICOM_TEST_FILES / "MR_small.dcm", limits=LIMITS).pixels
    for name in ("MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm"):
        np.testing.assert_array_equal(
            read_image(PYDICOM_TEST_FILES / name, limits=LIMITS).pixels, reference
        )


@pytest.mark.parametrize("name", ["0.dcm", "1.dcm"])
def test_nibabel_dicom_samples_read(name: str) -> None:
    decoded = read_image(NIBABEL_TEST_DATA / name, limits=LIMITS)
    assert decoded.source_format == "dicom" and decoded.modality == "MR"
    assert decoded.pixels.shape == (256, 256)
    assert decoded.pixels.max() == 1.0


# --- bad inputs: each its own reason ---------------------------------------------------------


def _png_claiming(width: int, height: int) -> bytes:
    """A well-formed PNG whose header claims a huge size but carries almost no data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def _dicom_claiming(rows: int, columns: int) -> bytes:
    dataset = dicom_dataset(STORED)
    dataset.Rows, dataset.Columns = rows, columns
    return dicom_bytes(dataset)


def _cut(data: bytes, keep: float) -> bytes:
    return data[: int(len(data) * keep)]


def _corrupt_png_header() -> bytes:
    data = bytearray(png_bytes(BASE))
    data[16:24] = b"\xff" * 8  # inside IHDR: width/height bytes, CRC now wrong
    return bytes(data)


def _dicom_without_rows() -> bytes:
    dataset = dicom_dataset(STORED)
    del dataset.Rows
    return dicom_bytes(dataset)


# case id -> (builder of (file name, content or None for "do not create"), reason fragment)
BAD_FILES: dict[str, tuple[Callable[[], tuple[str, bytes | None]], str]] = {
    "missing-file": (lambda: ("absent.png", None), "does not exist"),
    "empty-file": (lambda: ("empty.png", b""), "empty (0 bytes)"),
    "text-file": (lambda: ("notes.png", b"patient notes, not pixels\n"), "not a PNG, JPEG"),
    "nifti-volume": (
        lambda: ("anatomical.nii", (NIBABEL_TEST_DATA / "anatomical.nii").read_bytes()),
        "unrecognised file signature",
    ),
    "png-truncated": (lambda: ("cut.png", _cut(png_bytes(BASE), 0.6)), "truncated or corrupt PNG"),
    "png-corrupt-header": (lambda: ("bad.png", _corrupt_png_header()), "corrupt PNG header"),
    "png-decompression-bomb": (
        lambda: ("bomb.png", _png_claiming(100_000, 100_000)),
        "refused before decoding",
    ),
    "jpeg-truncated": (
        lambda: ("cut.jpg", _cut(jpeg_bytes(np.random.default_rng(0).random((64, 64))), 0.5)),
        "truncated or corrupt JPEG",
    ),
    "jpeg-signature-only": (lambda: ("stub.jpg", b"\xff\xd8\xff\xe0"), "corrupt JPEG header"),
    "dicom-no-pixel-data": (
        lambda: ("plan.dcm", (PYDICOM_TEST_FILES / "rtplan.dcm").read_bytes()),
        "no pixel data",
    ),
    "dicom-truncated-pixel-data": (
        lambda: ("cut.dcm", (PYDICOM_TEST_FILES / "MR_truncated.dcm").read_bytes()),
        "truncated or corrupt DICOM pixel data",
    ),
    "dicom-decompression-bomb": (
        lambda: ("bomb.dcm", _dicom_claiming(60_000, 60_000)),
        "max_image_pixels",
    ),
    "dicom-without-rows": (lambda: ("norows.dcm", _dicom_without_rows()), "attributes missing"),
    "dicom-undecodable-compression": (
        lambda: ("lossy.dcm", (PYDICOM_TEST_FILES / "JPEG-lossy.dcm").read_bytes()),
        "cannot decode the pixel data",
    ),
    "dicom-garbage-after-magic": (
        lambda: ("garbage.dcm", b"\x00" * 128 + b"DICM" + b"\xff\xfe\x00\x01" * 50),
        "DICOM",
    ),
    "dicom-zero-rows": (lambda: ("zero.dcm", _dicom_claiming(0, 48)), "no pixels"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_image_files_fail_with_file_and_reason(case: str, tmp_path: Path) -> None:
    build, reason = BAD_FILES[case]
    name, content = build()
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ImageReadError) as caught:
        read_image(path, limits=LIMITS)
    message = str(caught.value)
    assert str(path) in message, message
    assert reason in message, message
    assert SECRET_PATIENT_ID not in message


def test_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match="is a directory"):
        read_image(tmp_path, limits=LIMITS)


def test_file_over_the_byte_limit_is_refused_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "large.png"
    path.write_bytes(png_bytes(BASE))
    small = ReadLimits(max_file_bytes=100, max_image_pixels=LIMITS.max_image_pixels)
    with pytest.raises(ImageReadError, match=r"large\.png: the file is \d+ bytes, over the limit"):
        read_image(path, limits=small)


def test_real_image_over_the_pixel_limit_is_refused(tmp_path: Path) -> None:
    tight = ReadLimits(max_file_bytes=LIMITS.max_file_bytes, max_image_pixels=BASE.size - 1)
    with pytest.raises(ImageReadError, match="over the limit"):
        read_image(png_bytes(BASE), "exact.png", limits=tight)
    assert read_image(png_bytes(BASE), "exact.png", limits=LIMITS).pixels.size == BASE.size


def test_bytes_input_is_named_in_errors() -> None:
    with pytest.raises(ImageReadError, match=r"^upload-17\.png: the file is empty"):
        read_image(b"", name="upload-17.png", limits=LIMITS)
    with pytest.raises(ImageReadError, match=r"^<bytes>: not a PNG"):
        read_image(b"hello", limits=LIMITS)


def test_limits_default_to_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDGRAPH_MAX_IMAGE_PIXELS", str(BASE.size - 1))
    get_settings.cache_clear()
    try:
        with pytest.raises(ImageReadError, match="max_image_pixels"):
            read_image(png_bytes(BASE), "a.png")
    finally:
        get_settings.cache_clear()


# --- issue 16: memory budget, aspect ratio, decode gate -------------------------------------
def test_a_deflated_dicom_under_the_budget_reads_like_the_plain_one() -> None:
    stored = (np.arange(64 * 48, dtype=np.uint16).reshape(48, 64) * 7) % 4096
    plain = support_dicom_dataset(stored)
    deflated = support_dicom_dataset(stored)
    deflated.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    a = read_image(dicom_bytes(plain), "a.dcm", limits=LIMITS)
    b = read_image(dicom_bytes(deflated), "b.dcm", limits=LIMITS)
    np.testing.assert_array_equal(a.pixels, b.pixels)


def test_images_over_the_memory_budget_or_aspect_ratio_are_refused_before_decoding() -> None:
    tight = ReadLimits(LIMITS.max_file_bytes, LIMITS.max_image_pixels, max_decode_bytes=2**20)
    with pytest.raises(ImageReadError, match=r"max_decode_mib\); refused before decoding"):
        read_image(png_bytes(np.zeros((400, 400), np.uint8)), "big.png", limits=tight)
    with pytest.raises(ImageReadError, match=r"aspect ratio of 21:1.*max_image_aspect_ratio"):
        read_image(png_bytes(np.zeros((10, 210), np.uint8)), "wide.png", limits=LIMITS)
    assert read_image(png_bytes(np.zeros((10, 200), np.uint8)), "ok.png", limits=LIMITS)


def test_the_decode_gate_bounds_concurrent_decodes() -> None:
    gate = DecodeGate(slots=2, wait_s=0.05)
    busy = pytest.raises(DecodeBusy, match="2 image decoding slots")
    with gate.slot(), gate.slot(), busy, gate.slot():
        pass
    with gate.slot():
        pass
