"""Serving stored image files safely: only files under the configured data roots (after
resolving symbolic links, so neither ``..`` nor a link can lead outside), and only when the
file still has the content the image key names (its SHA-256)."""

from __future__ import annotations

import hashlib
import io
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
from PIL import Image

from services.api.errors import ApiError
from services.paths import resolve_under_roots

MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "dicom": "application/dicom"}
_THUMBNAIL_CACHE_ENTRIES = 1024


def servable_path(source: str | None, data_roots: list[Path]) -> Path | None:
    """The resolved file behind ``source`` when it lies under a data root, else None."""
    if not source:
        return None
    if source.startswith("file://"):
        source = source[len("file://") :]
    elif "://" in source:
        return None  # remote sources are not served
    resolved = resolve_under_roots(source, data_roots)
    return resolved if resolved is not None and resolved.is_file() else None


def read_verified(path: Path, key: str, max_bytes: int) -> bytes:
    """The file's bytes, refusing a file that grew too large or whose content changed."""
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise ApiError(413, f"the stored file is larger than the limit of {max_bytes} bytes")
        data = path.read_bytes()
    except OSError:
        raise ApiError(404, f"the file of image {key} is not available") from None
    if hashlib.sha256(data).hexdigest() != key:
        raise ApiError(409, f"the file of image {key} changed since it was ingested")
    return data


def media_type_of(data: bytes) -> str:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return MEDIA_TYPES["png"]
    if data.startswith(b"\xff\xd8\xff"):
        return MEDIA_TYPES["jpeg"]
    return MEDIA_TYPES["dicom"]


def thumbnail_png(pixels: np.ndarray, longest_side: int, image_format: str = "PNG") -> bytes:
    """A greyscale PNG (or JPEG) of float pixels in [0, 1], its longest side at most
    ``longest_side``."""
    grey = np.clip(np.rint(np.asarray(pixels, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)
    image = Image.fromarray(grey)  # uint8 (H, W) -> mode "L"
    image.thumbnail((longest_side, longest_side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    if image_format == "JPEG":
        image.save(buffer, format="JPEG", quality=90)
    else:
        image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


class ThumbnailCache:
    """Rendered thumbnails by (key, size); a key names immutable content, so entries never age
    (a deleted image's are discarded, and a hit is served only while the image is stored)."""

    def __init__(self, entries: int = _THUMBNAIL_CACHE_ENTRIES) -> None:
        self.entries = entries
        self._items: OrderedDict[tuple[str, int], bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str, size: int) -> bytes | None:
        with self._lock:
            value = self._items.get((key, size))
            if value is not None:
                self._items.move_to_end((key, size))
            return value

    def discard(self, key: str) -> None:
        """Forgets every size of a deleted image."""
        with self._lock:
            for entry in [entry for entry in self._items if entry[0] == key]:
                del self._items[entry]

    def put(self, key: str, size: int, value: bytes) -> None:
        with self._lock:
            self._items[(key, size)] = value
            self._items.move_to_end((key, size))
            while len(self._items) > self.entries:
                self._items.popitem(last=False)
