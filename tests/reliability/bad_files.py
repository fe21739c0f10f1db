"""A corpus of unusable image files, each with the words its error must contain."""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from services.config import REPO_ROOT
from tests.support import CR_IMAGE_STORAGE, dicom_bytes, dicom_dataset

GOOD_PNG = sorted((REPO_ROOT / "data" / "nih-cxr14-64px" / "images").glob("*.png"))[0]


@dataclass(frozen=True)
class BadFile:
    name: str
    data: bytes
    problem: str  # a phrase the error message must contain


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)
    )


def png(width: int, height: int, idat: bytes, bit_depth: int = 8) -> bytes:
    header = struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )


def decompression_bomb(side: int = 10_000) -> bytes:
    """A valid greyscale PNG of side x side zeros: ~100 KB that decode to side^2 bytes."""
    compressor = zlib.compressobj(9)
    row = b"\x00" * (side + 1)  # filter byte + pixels
    parts = [compressor.compress(row) for _ in range(side)]
    parts.append(compressor.flush())
    return png(side, side, b"".join(parts))


def jpeg_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.open(GOOD_PNG).convert("L").save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def png_as_dicom(drop: tuple[str, ...] = (), **overrides: object) -> bytes:
    """The good PNG's pixels as a DICOM; ``overrides`` set and ``drop`` removes elements."""
    pixels = np.asarray(Image.open(GOOD_PNG).convert("L"), dtype=np.uint16)
    dataset = dicom_dataset(pixels, sop_class=CR_IMAGE_STORAGE, **overrides)
    for keyword in drop:
        delattr(dataset, keyword)
    return dicom_bytes(dataset)


def bad_files() -> list[BadFile]:
    good_png = GOOD_PNG.read_bytes()
    good_jpeg = jpeg_bytes()
    good_dicom = png_as_dicom()
    gif = io.BytesIO()
    Image.new("L", (8, 8)).save(gif, format="GIF")
    return [
        BadFile("empty.png", b"", "empty"),
        BadFile("notes.png", b"patient notes, not an image\n" * 4, "not a PNG, JPEG or DICOM"),
        BadFile("random.bin.png", bytes(range(256)) * 8, "not a PNG, JPEG or DICOM"),
        BadFile("animation.png", gif.getvalue(), "not a PNG, JPEG or DICOM"),
        BadFile("garbage-after-signature.png", good_png[:8] + b"\x00" * 200, "PNG"),
        BadFile("truncated.png", good_png[: len(good_png) // 2], "truncated or corrupt PNG"),
        BadFile("bad-crc.png", good_png[:29] + b"\xff\xff\xff\xff" + good_png[33:], "PNG"),
        BadFile("bomb.png", decompression_bomb(), "max_image_pixels"),
        BadFile("huge-header.png", png(60_000, 60_000, b""), "decompression bomb"),
        BadFile("zero-width.png", png(0, 64, zlib.compress(b"\x00" * 65)), "PNG"),
        BadFile("corrupt.jpg", b"\xff\xd8\xff\xe0" + b"\x13" * 300, "JPEG"),
        BadFile("truncated.jpg", good_jpeg[: len(good_jpeg) // 3], "truncated or corrupt JPEG"),
        BadFile("truncated-header.dcm", good_dicom[:200], "DICOM"),
        BadFile("truncated-pixels.dcm", good_dicom[: len(good_dicom) - 3000], "DICOM pixel data"),
        BadFile("no-pixels.dcm", png_as_dicom(drop=("PixelData",)), "no pixel data"),
        BadFile("garbage.dcm", b"\x00" * 128 + b"DICM" + b"\xfe" * 300, "DICOM"),
        BadFile("huge.dcm", png_as_dicom(Rows=60_000, Columns=60_000), "max_image_pixels"),
        BadFile(
            "unknown-syntax.dcm",
            # A transfer syntax no decoder knows (same length, so the header stays valid).
            good_dicom.replace(b"1.2.840.10008.1.2.1\x00", b"1.2.3.4.5.6.7.8.9.1\x00", 1),
            "cannot decode the pixel data",
        ),
        BadFile(
            "colour-model.dcm",
            png_as_dicom(PhotometricInterpretation="YBR_FULL"),
            "color space",
        ),
        BadFile("no-rows.dcm", png_as_dicom(drop=("Rows",)), "DICOM image attributes"),
    ]


def write_bad_files(folder: Path) -> dict[Path, BadFile]:
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for bad in bad_files():
        path = folder / bad.name
        path.write_bytes(bad.data)
        written[path] = bad
    return written
