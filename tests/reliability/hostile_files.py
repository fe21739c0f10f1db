"""Generated extreme images for the hostile-input tests: valid files, tiny on the wire, huge
once decoded. Everything is made in memory; nothing large touches the disk."""

from __future__ import annotations

import io
import math
import struct
import zlib

import numpy as np
from PIL import Image
from pydicom.uid import DeflatedExplicitVRLittleEndian

from tests.support import dicom_bytes, dicom_dataset

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# colour type -> samples per pixel (PNG specification, IHDR)
PNG_SAMPLES = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
PNG_MODES = {
    # name: (colour type, bit depth)
    "grey1": (0, 1),
    "grey8": (0, 8),
    "grey16": (0, 16),
    "grey-alpha": (4, 8),
    "rgb8": (2, 8),
    "rgb16": (2, 16),
    "rgba8": (6, 8),
    "palette": (3, 8),
}
_BLOCK_BYTES = 4 * 1024 * 1024


def _chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def zero_zlib_stream(length: int) -> bytes:
    """A zlib stream of ``length`` zero bytes, made without compressing them all: a block of
    zeros deflated from an empty history and flushed (Z_FULL_FLUSH, byte-aligned) is repeated,
    then a final block; the Adler-32 of zeros is (length mod 65521) << 16 | 1."""
    full, rest = divmod(length, _BLOCK_BYTES)
    repeated = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = repeated.compress(b"\0" * _BLOCK_BYTES) + repeated.flush(zlib.Z_FULL_FLUSH)
    last = zlib.compressobj(9, zlib.DEFLATED, -15)
    tail = last.compress(b"\0" * rest) + last.flush()
    adler = ((length % 65521) << 16) | 1
    return b"\x78\xda" + block * full + tail + struct.pack(">I", adler)


def png(width: int, height: int, colour_type: int = 0, bit_depth: int = 8) -> bytes:
    """A valid PNG of black pixels (every row filter 0, every sample 0), never held decoded."""
    row_bytes = 1 + (width * PNG_SAMPLES[colour_type] * bit_depth + 7) // 8
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    chunks = [_chunk(b"IHDR", header)]
    if colour_type == 3:
        chunks.append(_chunk(b"PLTE", bytes(range(256)) * 3))
    chunks.append(_chunk(b"IDAT", zero_zlib_stream(row_bytes * height)))
    chunks.append(_chunk(b"IEND", b""))
    return PNG_SIGNATURE + b"".join(chunks)


def png_of_mode(name: str, width: int, height: int) -> bytes:
    colour_type, bit_depth = PNG_MODES[name]
    return png(width, height, colour_type, bit_depth)


def near_limit_shapes(max_pixels: int) -> list[tuple[int, int]]:
    """(width, height) from 1 x N through the square to N x 1, each just under ``max_pixels``."""
    limit = max_pixels - 1
    side = math.isqrt(limit)
    widths = [1, 2, 4, 10, 30, 100, 300, 1000, 3000]
    shapes = [(w, limit // w) for w in widths] + [(side, side)]
    shapes += [(limit // w, w) for w in reversed(widths)]
    return shapes


def jpeg_grey(width: int, height: int) -> bytes:
    image = Image.new("L", (width, height), 0)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=10)
    return buffer.getvalue()


def deflated_dicom(width: int, height: int, samples: int = 1, bits: int = 16) -> bytes:
    """A valid DICOM (Deflated Explicit VR Little Endian) of black pixels: zeros deflate about
    1000:1, so a ~160 MB pixel matrix travels in ~200 KB."""
    dtype = np.uint16 if bits == 16 else np.uint8
    shape = (height, width) if samples == 1 else (height, width, samples)
    pixels = np.zeros(shape, dtype=dtype)
    photometric = "MONOCHROME2" if samples == 1 else "RGB"
    dataset = dicom_dataset(pixels, photometric=photometric, bits_stored=bits)
    del pixels
    dataset.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    return dicom_bytes(dataset)


def plain_dicom(width: int, height: int) -> bytes:
    return dicom_bytes(dicom_dataset(np.zeros((height, width), dtype=np.uint16), bits_stored=12))
