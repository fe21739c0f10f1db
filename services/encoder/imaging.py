"""Medical image reading: PNG, JPEG and DICOM into one greyscale float representation.

Every reader returns a :class:`DecodedImage` whose ``pixels`` are float32, shape (H, W), row 0 at
the top, values in [0, 1] with 0 = dark (air on a chest X-ray). Whatever cannot be read raises
:class:`ImageReadError` naming the file and the reason; nothing else escapes ``read_image``.

Conventions (documented here because callers rely on them):

- PNG/JPEG are scaled by their bit depth (8-bit / 255, 16-bit / 65535), so a 16-bit file that only
  uses 12 bits looks dark; that is what the file says. 16-bit RGB PNGs are reduced to 8 bits by
  Pillow. Colour images become grey through ITU-R BT.601 luma. Alpha is composited over black
  (transparent = air). Palette images go through their palette. Animated PNGs: first frame.
  An EXIF orientation tag is applied, as image viewers do.
- DICOM: modality LUT (rescale slope/intercept or LUT sequence), then the VOI LUT sequence or the
  first window (center/width, LINEAR, LINEAR_EXACT or SIGMOID); without either, a min-max stretch of
  the frame. MONOCHROME1 is inverted after that so 0 stays dark. Colour DICOM (RGB, YBR, palette)
  becomes grey through luma scaled by its bit depth. Multi-frame: only the first frame is decoded.
  Compressed transfer syntaxes decode through pydicom's plug-ins (pylibjpeg, -libjpeg, -openjpeg,
  -rle are dependencies). Files without a preamble are tried as DICOM only when named ``*.dcm``.
- ``modality`` is the DICOM Modality (``"OT"`` when the tag is absent); PNG and JPEG carry no
  modality, so they get ``"OT"`` (DICOM's "other") too, and ``source_format`` tells them apart.
- Limits come from the settings (``max_file_bytes``, ``max_image_pixels``,
  ``max_decode_mib``, ``max_image_aspect_ratio``). Everything is checked from the header before
  any pixel data is decoded: the pixel count (decompression bombs), the aspect ratio, and a
  conservative estimate of the peak memory of decoding plus every intermediate this module and
  its callers make (mode conversion, float64 arithmetic, the float32 result, the resize to the
  model's input or a thumbnail). The pixel count alone does not bound memory: a 1 x 79,999,999
  PNG is 68 bytes and under the pixel limit, yet resizing it took 17 GB. See
  :func:`estimate_decode_bytes`.
- :class:`DecodeGate` bounds how many images one process decodes at once, so that N parallel
  worst cases cost at most ``slots x max_decode_mib``.
"""

from __future__ import annotations

import io
import threading
import warnings
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from services.config import Settings, get_settings

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8\xff"
DICOM_MAGIC_OFFSET = 128
DICOM_MAGIC = b"DICM"
UNKNOWN_MODALITY = "OT"
DEFLATED_SYNTAX = b"1.2.840.10008.1.2.1.99"
MAX_META_SCAN = 64 * 1024
INFLATE_STEP = 4 * 1024 * 1024
# ITU-R BT.601 luma, the same weights Pillow uses for "RGB" -> "L".
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float64)


class ImageReadError(ValueError):
    """An image file that cannot be used; the message names the file and the reason."""

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


@dataclass(frozen=True)
class DecodedImage:
    pixels: np.ndarray  # float32 (H, W) in [0, 1], 0 = dark
    modality: str
    width: int
    height: int
    source_format: str  # "png" | "jpeg" | "dicom"
    # Raw DICOM PatientID, only so ingestion can key it with an HMAC. Never log it.
    patient_id: str | None = None
    # Raw DICOM (StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID) and DeidentificationMethod,
    # only so ingestion can replace the UIDs by pseudonyms (services.privacy). Never log them.
    dicom_uids: tuple[str, str, str] | None = None
    deidentification: str | None = None

    def __repr__(self) -> str:  # keeps the patient id out of logs and tracebacks
        return (
            f"DecodedImage({self.width}x{self.height}, modality={self.modality!r}, "
            f"source_format={self.source_format!r})"
        )


MIB = 1024 * 1024
DEFAULT_MAX_DECODE_BYTES = 1024 * MIB
DEFAULT_MAX_ASPECT_RATIO = 20.0
# The largest side anything downstream resizes a decoded image to (model input, thumbnails).
DEFAULT_OUTPUT_SIDE = 1024


@dataclass(frozen=True)
class ReadLimits:
    max_file_bytes: int
    max_image_pixels: int
    max_decode_bytes: int = DEFAULT_MAX_DECODE_BYTES
    max_aspect_ratio: float = DEFAULT_MAX_ASPECT_RATIO
    output_side: int = DEFAULT_OUTPUT_SIDE

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> ReadLimits:
        s = settings or get_settings()
        return cls(
            s.max_file_bytes,
            s.max_image_pixels,
            s.max_decode_mib * MIB,
            s.max_image_aspect_ratio,
            max(s.image_size, s.api_thumbnail_pixels),
        )


class DecodeBusy(RuntimeError):
    """Every decode slot of this process stayed taken for the whole wait."""


class DecodeGate:
    """At most ``slots`` images decoded (and held as pixels) at once in this process.

    With the per-image memory budget this bounds a process's decoding memory to
    ``slots x max_decode_bytes`` however many requests arrive together.
    """

    def __init__(self, slots: int, wait_s: float) -> None:
        self.slots = slots
        self.wait_s = wait_s
        self._semaphore = threading.BoundedSemaphore(slots)

    @contextmanager
    def slot(self) -> Iterator[None]:
        if not self._semaphore.acquire(timeout=self.wait_s):
            raise DecodeBusy(
                f"all {self.slots} image decoding slots stayed busy for {self.wait_s:.0f} s"
            )
        try:
            yield
        finally:
            self._semaphore.release()


def read_image(
    source: str | Path | bytes,
    name: str | None = None,
    *,
    limits: ReadLimits | None = None,
) -> DecodedImage:
    """Read a PNG, JPEG or DICOM file (a path or its bytes) into a :class:`DecodedImage`.

    ``name`` is what error messages call the file (default: the path, or ``<bytes>``).
    """
    limits = limits or ReadLimits.from_settings()
    if isinstance(source, bytes | bytearray | memoryview):
        label = name or "<bytes>"
        data = bytes(source)
        if len(data) > limits.max_file_bytes:
            raise ImageReadError(label, _too_many_bytes(len(data), limits))
    else:
        path = Path(source)
        label = name or str(path)
        data = _read_file(path, label, limits)
    if not data:
        raise ImageReadError(label, "the file is empty (0 bytes)")

    if data.startswith(PNG_SIGNATURE):
        return _read_pillow(data, label, "PNG", limits)
    if data.startswith(JPEG_SIGNATURE):
        return _read_pillow(data, label, "JPEG", limits)
    has_dicom_magic = data[DICOM_MAGIC_OFFSET : DICOM_MAGIC_OFFSET + 4] == DICOM_MAGIC
    if has_dicom_magic or label.lower().endswith((".dcm", ".dicom")):
        return _read_dicom(data, label, limits, force=not has_dicom_magic)
    raise ImageReadError(label, "not a PNG, JPEG or DICOM file (unrecognised file signature)")


def _read_file(path: Path, label: str, limits: ReadLimits) -> bytes:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ImageReadError(label, "the file does not exist") from None
    except OSError as exc:
        raise ImageReadError(label, f"cannot access the file ({exc.strerror})") from None
    if path.is_dir():
        raise ImageReadError(label, "is a directory, not an image file")
    if size > limits.max_file_bytes:
        raise ImageReadError(label, _too_many_bytes(size, limits))
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ImageReadError(label, f"cannot read the file ({exc.strerror})") from None


def _too_many_bytes(size: int, limits: ReadLimits) -> str:
    return f"the file is {size} bytes, over the limit of {limits.max_file_bytes} (max_file_bytes)"


def _check_pixel_count(label: str, width: int, height: int, limits: ReadLimits) -> None:
    if width <= 0 or height <= 0:
        raise ImageReadError(label, f"the image has no pixels ({width}x{height})")
    if width * height > limits.max_image_pixels:
        raise ImageReadError(
            label,
            f"the image is {width}x{height} = {width * height} pixels, over the limit of "
            f"{limits.max_image_pixels} (max_image_pixels); refused before decoding",
        )
    ratio = max(width, height) / min(width, height)
    if ratio > limits.max_aspect_ratio:
        raise ImageReadError(
            label,
            f"the image is {width}x{height}, an aspect ratio of {ratio:.0f}:1, over the limit "
            f"of {limits.max_aspect_ratio:g}:1 (max_image_aspect_ratio); refused before decoding",
        )


# Bytes per pixel of Pillow's own storage of a loaded image, by mode (RGB is stored in 4 bytes).
_PILLOW_STORAGE = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}
# Peak float bytes per pixel of ``_pillow_to_grey``'s arithmetic (float64 temporaries) for the
# channels it works on, before ``_finish``.
_PILLOW_FLOAT_PEAK = {"1": 8, "L": 8, "I": 16, "LA": 24, "RGB": 32, "RGBA": 48}
# ``_finish``: the float64 grey, its clipped copy and the float32 result.
_FINISH_PEAK = 8 + 8 + 4
# After decoding, the float32 pixels plus what a caller makes of them: the model's resize
# (torch, float32) or a thumbnail (float32 scaling, rounding, clipping, uint8, Pillow's copy).
_DOWNSTREAM_PER_PIXEL = 4 + 4 + 4 + 4 + 1 + 1


def _downstream_bytes(width: int, height: int, limits: ReadLimits) -> int:
    pixels = width * height
    # A separable antialiased resize keeps one pass's output (long side x output side), and
    # weights of about (long side / output side) taps for each output pixel.
    long_side = max(width, height)
    resize = long_side * limits.output_side * 4 * 2 + long_side * 8 * 4
    return pixels * _DOWNSTREAM_PER_PIXEL + resize


def estimate_pillow_bytes(
    width: int, height: int, mode: str, file_bytes: int, limits: ReadLimits
) -> int:
    """Conservative peak memory of ``_read_pillow`` and what callers do with its result."""
    pixels = width * height
    storage = _PILLOW_STORAGE.get(mode, 4)
    converted = mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV")
    if mode in ("P", "PA"):
        work = "RGBA"
    elif converted:
        work = "RGB"
    elif mode.startswith("I"):
        work = "I"
    else:
        work = mode if mode in _PILLOW_FLOAT_PEAK else "RGBA"
    numpy_copy = {"1": 1, "L": 1, "I": 4, "LA": 2, "RGB": 3, "RGBA": 4}[work]
    # The loaded image and exif_transpose's copy; a converted copy; numpy's copy of the image.
    decode = (
        2 * pixels * storage
        + (pixels * 4 if converted else 0)
        + pixels * numpy_copy
        + pixels * (_PILLOW_FLOAT_PEAK[work] + _FINISH_PEAK)
    )
    after = _downstream_bytes(width, height, limits)
    return file_bytes + max(decode, after)


def estimate_dicom_bytes(
    width: int, height: int, samples: int, bits_allocated: int, file_bytes: int,
    compressed: bool, limits: ReadLimits,
) -> int:  # fmt: skip
    """Conservative peak memory of ``_read_dicom`` and what callers do with its result."""
    pixels = width * height
    sample_bytes = max(1, (bits_allocated + 7) // 8)
    frame = pixels * samples * max(sample_bytes, 1)
    # A compressed frame passes through the decoder's own buffer before pydicom's array.
    frame *= 2 if compressed else 1
    if samples == 1:
        # modality LUT (float64), its float64 copy, windowed values, clipped values,
        # MONOCHROME1 inversion; then _finish.
        arithmetic = pixels * (8 * 4 + _FINISH_PEAK)
    else:
        # colour -> float64 (3 channels), scaled copy, luma; then _finish.
        arithmetic = pixels * (24 * 2 + 8 + _FINISH_PEAK)
    # The file's bytes are held twice (our buffer and the dataset's PixelData).
    decode = file_bytes + frame + arithmetic
    after = _downstream_bytes(width, height, limits)
    return file_bytes + max(decode, after)


def _check_memory(label: str, width: int, height: int, what: str, estimate: int,
                  limits: ReadLimits) -> None:  # fmt: skip
    if estimate > limits.max_decode_bytes:
        raise ImageReadError(
            label,
            f"decoding this {width}x{height} {what} image would need about "
            f"{estimate / MIB:,.0f} MiB of memory, over the limit of "
            f"{limits.max_decode_bytes / MIB:,.0f} MiB (max_decode_mib); refused before decoding",
        )


# --- PNG / JPEG ------------------------------------------------------------------------------


def _read_pillow(data: bytes, label: str, kind: str, limits: ReadLimits) -> DecodedImage:
    with warnings.catch_warnings():
        # We apply our own pixel limit below; Pillow's own bomb check stays as a backstop.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data), formats=[kind])
        except Image.DecompressionBombError as exc:
            raise ImageReadError(
                label, f"decompression bomb, refused before decoding ({exc})"
            ) from None
        except UnidentifiedImageError:
            raise ImageReadError(label, f"corrupt {kind} header (not decodable)") from None
        except (OSError, SyntaxError, ValueError) as exc:
            raise ImageReadError(label, f"corrupt {kind} header ({exc})") from None
        _check_pixel_count(label, image.width, image.height, limits)
        estimate = estimate_pillow_bytes(image.width, image.height, image.mode, len(data), limits)
        _check_memory(label, image.width, image.height, image.mode, estimate, limits)
        try:
            image.seek(0)
            image.load()
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise ImageReadError(label, f"truncated or corrupt {kind} data ({exc})") from None
    # Photos and some exports store rotation as an EXIF tag; viewers honour it, so do we.
    image = ImageOps.exif_transpose(image)
    pixels = _pillow_to_grey(image, label)
    return DecodedImage(
        pixels=pixels,
        modality=UNKNOWN_MODALITY,
        width=image.width,
        height=image.height,
        source_format=kind.lower(),
    )


def _pillow_to_grey(image: Image.Image, label: str) -> np.ndarray:
    mode = image.mode
    if mode in ("P", "PA"):
        image = image.convert("RGBA")
        mode = "RGBA"
    elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        image = image.convert("RGB")
        mode = "RGB"
    array = np.asarray(image)
    if mode == "1":
        grey = array.astype(np.float64)
    elif mode == "L":
        grey = array / 255.0
    elif mode.startswith("I;16"):
        grey = array.astype(np.float64) / 65535.0
    elif mode == "I":  # 32-bit integer container; PNG stores at most 16 bits
        grey = np.clip(array.astype(np.float64), 0, 65535) / 65535.0
    elif mode == "LA":
        grey = (array[..., 0] / 255.0) * (array[..., 1] / 255.0)
    elif mode == "RGB":
        grey = (array / 255.0) @ LUMA_WEIGHTS
    elif mode == "RGBA":
        grey = ((array[..., :3] / 255.0) @ LUMA_WEIGHTS) * (array[..., 3] / 255.0)
    else:
        raise ImageReadError(label, f"unsupported pixel mode {mode!r}")
    return _finish(grey)


# --- DICOM -----------------------------------------------------------------------------------


def _read_dicom(data: bytes, label: str, limits: ReadLimits, *, force: bool) -> DecodedImage:
    import pydicom
    from pydicom.errors import InvalidDicomError

    payload_bytes = _inflated_size(data, label, limits)
    try:
        dataset = pydicom.dcmread(io.BytesIO(data), force=force)
    except InvalidDicomError as exc:
        raise ImageReadError(label, f"not a valid DICOM file ({exc})") from None
    except Exception as exc:  # pydicom raises many types on broken headers; all mean the same
        raise ImageReadError(
            label, f"truncated or corrupt DICOM header ({type(exc).__name__}: {exc})"
        ) from None

    if not any(tag in dataset for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise ImageReadError(
            label, "the DICOM file has no pixel data (not an image object, or cut off before it)"
        )
    try:
        rows = int(dataset.Rows)
        columns = int(dataset.Columns)
        photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2")).strip()
        samples = int(dataset.get("SamplesPerPixel", 1) or 1)
        bits_allocated = int(dataset.get("BitsAllocated", 16) or 16)
    except (AttributeError, TypeError, ValueError) as exc:
        raise ImageReadError(label, f"DICOM image attributes missing or invalid ({exc})") from None
    _check_pixel_count(label, columns, rows, limits)
    if samples not in (1, 3) or bits_allocated not in (1, 8, 16, 32, 64):
        raise ImageReadError(
            label,
            f"unsupported DICOM pixel layout: {samples} samples per pixel, "
            f"{bits_allocated} bits allocated",
        )
    syntax = dataset.file_meta.get("TransferSyntaxUID") if dataset.file_meta else None
    try:
        compressed = bool(getattr(syntax, "is_compressed", False))
    except ValueError:  # a transfer syntax pydicom does not know: assume the costlier case
        compressed = True
    estimate = estimate_dicom_bytes(
        columns, rows, samples, bits_allocated, len(data) + payload_bytes, compressed, limits
    )
    _check_memory(label, columns, rows, f"{bits_allocated}-bit DICOM", estimate, limits)

    frame = _decode_first_frame(dataset, label)
    if frame.shape[:2] != (rows, columns):
        raise ImageReadError(
            label, f"decoded frame is {frame.shape[:2]}, header says {(rows, columns)}"
        )
    if photometric.startswith("MONOCHROME"):
        if frame.ndim != 2:
            raise ImageReadError(label, f"{photometric} image has {frame.shape[2]} samples/pixel")
        grey = _monochrome_to_unit(frame, dataset, label, photometric)
    else:
        grey = _colour_to_unit(frame, dataset, label, photometric)

    patient_id = _text(dataset, "PatientID")
    modality = _text(dataset, "Modality") or UNKNOWN_MODALITY
    uids = tuple(_text(dataset, name) for name in DICOM_UIDS)
    return DecodedImage(
        pixels=_finish(grey),
        modality=modality,
        width=columns,
        height=rows,
        source_format="dicom",
        patient_id=patient_id,
        dicom_uids=uids if all(uids) else None,  # type: ignore[arg-type]
        deidentification=_text(dataset, "DeidentificationMethod"),
    )


DICOM_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")


def _text(dataset: object, keyword: str) -> str | None:
    """A single-valued header attribute as stripped text; None when absent, empty or unusable."""
    try:
        value = dataset.get(keyword)  # type: ignore[attr-defined]
    except Exception:  # a malformed element fails only when read; it counts as absent
        return None
    return str(value or "").strip() or None


def _inflated_size(data: bytes, label: str, limits: ReadLimits) -> int:
    """Bytes the dataset inflates to when its transfer syntax is Deflated (pydicom inflates it
    whole, in memory, before anything can be checked), counted by streaming the inflation
    without keeping it; 0 for every other syntax. A deflate bomb is refused here."""
    if DEFLATED_SYNTAX not in data[:MAX_META_SCAN]:
        return 0
    from pydicom.filereader import _read_file_meta_info, read_preamble

    stream = io.BytesIO(data)
    try:
        read_preamble(stream, force=True)
        meta = _read_file_meta_info(stream)
    except Exception as exc:  # any failure: the header is unusable
        raise ImageReadError(label, f"corrupt DICOM file meta ({type(exc).__name__})") from None
    if str(meta.get("TransferSyntaxUID", "")) != DEFLATED_SYNTAX.decode():
        return 0
    limit = limits.max_decode_bytes // 4
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total = 0
    pending = data[stream.tell() :]
    try:
        while not inflater.eof:
            chunk = inflater.decompress(pending, INFLATE_STEP)
            pending = inflater.unconsumed_tail
            total += len(chunk)
            if not chunk and not pending:
                break  # a truncated stream; pydicom reports it when it reads the file
            if total > limit:
                raise ImageReadError(
                    label,
                    f"the deflated DICOM dataset inflates to more than {limit / MIB:,.0f} MiB "
                    "(a quarter of max_decode_mib); refused before decoding",
                )
    except zlib.error as exc:
        raise ImageReadError(label, f"corrupt deflated DICOM data ({exc})") from None
    return total


def _decode_first_frame(dataset: object, label: str) -> np.ndarray:
    from pydicom.pixels import pixel_array

    transfer_syntax = dataset.file_meta.get("TransferSyntaxUID") if dataset.file_meta else None
    syntax_name = getattr(transfer_syntax, "name", None) or str(transfer_syntax or "unknown")
    try:
        # index=0 decodes only the first frame of a multi-frame object.
        return pixel_array(dataset, index=0)
    except (NotImplementedError, RuntimeError) as exc:
        raise ImageReadError(
            label, f"cannot decode the pixel data ({syntax_name}): {_first_line(exc)}"
        ) from None
    except Exception as exc:  # decoders report truncation and corruption with assorted types
        raise ImageReadError(
            label,
            f"truncated or corrupt DICOM pixel data ({syntax_name}): "
            f"{type(exc).__name__}: {_first_line(exc)}",
        ) from None


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _monochrome_to_unit(
    frame: np.ndarray, dataset: object, label: str, photometric: str
) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut, apply_voi

    values = apply_modality_lut(frame, dataset).astype(np.float64)
    if not np.all(np.isfinite(values)):
        raise ImageReadError(label, "the pixel data contains NaN or infinite values")
    if "VOILUTSequence" in dataset and len(dataset.VOILUTSequence) > 0:
        lut_bits = int(dataset.VOILUTSequence[0].LUTDescriptor[2])
        # A LUT is indexed by whole modality values; rescaled values are rounded to them.
        indices = np.rint(values).astype(np.int64)
        unit = apply_voi(indices, dataset, index=0).astype(np.float64) / float(2**lut_bits - 1)
    else:
        unit = _apply_window(values, dataset)
    if unit is None:
        unit = _min_max(values)
    unit = np.clip(unit, 0.0, 1.0)
    return 1.0 - unit if photometric == "MONOCHROME1" else unit


def _apply_window(values: np.ndarray, dataset: object) -> np.ndarray | None:
    """DICOM PS3.3 C.11.2.1.2 windowing of the first window into [0, 1]; None if unusable."""
    center, width = dataset.get("WindowCenter"), dataset.get("WindowWidth")
    if center is None or width is None:
        return None
    try:
        center = float(center[0] if _is_multi(center) else center)
        width = float(width[0] if _is_multi(width) else width)
    except (TypeError, ValueError, IndexError):
        return None
    function = str(dataset.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
    if function == "SIGMOID" and width > 0:
        return 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
    if function == "LINEAR_EXACT" and width > 0:
        return (values - center) / width + 0.5
    if function == "LINEAR" and width >= 1:
        if width == 1:  # the standard's degenerate case: a threshold at the center
            return (values > center - 0.5).astype(np.float64)
        return (values - (center - 0.5)) / (width - 1) + 0.5
    return None


def _is_multi(value: object) -> bool:
    return isinstance(value, list | tuple) or type(value).__name__ == "MultiValue"


def _colour_to_unit(frame: np.ndarray, dataset: object, label: str, photometric: str) -> np.ndarray:
    from pydicom.pixels import apply_color_lut

    if photometric == "PALETTE COLOR":
        try:
            rgb = apply_color_lut(frame, dataset)
            bits = int(dataset.RedPaletteColorLookupTableDescriptor[2])
        except (AttributeError, ValueError, IndexError) as exc:
            raise ImageReadError(label, f"unusable palette colour lookup table ({exc})") from None
    elif frame.ndim == 3 and frame.shape[2] == 3:
        # pydicom already converted YBR_* to RGB while decoding.
        rgb = frame
        bits = int(dataset.get("BitsStored", frame.dtype.itemsize * 8))
    else:
        raise ImageReadError(label, f"unsupported photometric interpretation {photometric!r}")
    return (rgb.astype(np.float64) / float(2**bits - 1)) @ LUMA_WEIGHTS


def _min_max(values: np.ndarray) -> np.ndarray:
    low, high = float(values.min()), float(values.max())
    if high <= low:  # a constant image carries no contrast; keep it black rather than fail
        return np.zeros_like(values)
    return (values - low) / (high - low)


def _finish(grey: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.clip(grey, 0.0, 1.0), dtype=np.float32)
