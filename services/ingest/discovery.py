"""Which files an ingest takes: a folder (recursively), a list file, or image files.

A file is an ingest candidate when its content starts like a PNG, JPEG or DICOM file (the DICOM
``DICM`` marker at byte 128 — archive DICOM often has no extension), or when its name ends in an
image extension. So ``scan.dat`` holding a PNG is found, and ``broken.png`` holding garbage is
taken and then reported as a failure with its reason; ``labels.csv`` or ``README.md`` in the
folder are skipped silently. Hidden files and folders (``.name``) are skipped.

A list file is a text file with one path per line (relative paths are relative to the list's
folder; blank lines and lines starting with ``#`` are ignored).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8\xff"
DICOM_MAGIC_OFFSET = 128
DICOM_MAGIC = b"DICM"
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".dcm", ".dicom"})
LIST_SUFFIXES = frozenset({".txt", ".lst", ".list"})
SNIFF_BYTES = DICOM_MAGIC_OFFSET + len(DICOM_MAGIC)


class DiscoveryError(ValueError):
    """An ingest path that cannot be used at all (missing, unreadable list file...)."""


@dataclass
class Discovery:
    files: list[Path] = field(default_factory=list)  # absolute, sorted, unique
    skipped: list[Path] = field(default_factory=list)  # non-image files seen in folders


def sniff_format(path: Path) -> str | None:
    """ "png", "jpeg" or "dicom" from the first bytes; None for anything else or unreadable."""
    try:
        with path.open("rb") as handle:
            head = handle.read(SNIFF_BYTES)
    except OSError:
        return None
    if head.startswith(PNG_SIGNATURE):
        return "png"
    if head.startswith(JPEG_SIGNATURE):
        return "jpeg"
    if head[DICOM_MAGIC_OFFSET:SNIFF_BYTES] == DICOM_MAGIC:
        return "dicom"
    return None


def is_candidate(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES or sniff_format(path) is not None


def discover(paths: list[Path]) -> Discovery:
    """All candidate image files under ``paths`` (folders, list files or image files)."""
    if not paths:
        raise DiscoveryError("no path given")
    found: dict[Path, None] = {}
    skipped: list[Path] = []
    for path in paths:
        path = Path(path)
        if path.is_dir():
            for file in _walk(path):
                if is_candidate(file):
                    found.setdefault(_absolute(file), None)
                else:
                    skipped.append(file)
        elif path.is_file():
            if path.suffix.lower() in LIST_SUFFIXES and sniff_format(path) is None:
                for listed in read_list_file(path):
                    found.setdefault(listed, None)
            else:
                # Named explicitly: taken even if it turns out not to be an image (reported).
                found.setdefault(_absolute(path), None)
        else:
            raise DiscoveryError(f"{path}: no such file or folder")
    return Discovery(sorted(found), sorted(skipped))


def read_list_file(path: Path) -> list[Path]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DiscoveryError(f"{path}: cannot read the file list ({exc})") from None
    base = _absolute(path.parent)
    listed = []
    for line in text.splitlines():
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        candidate = Path(entry)
        listed.append(_absolute(candidate if candidate.is_absolute() else base / candidate))
    # Missing listed files are kept: ingestion reports each one as a failure with its reason.
    return listed


def _walk(folder: Path) -> list[Path]:
    files = []
    for root, directories, names in os.walk(folder, followlinks=False):
        directories[:] = sorted(d for d in directories if not d.startswith("."))
        files.extend(Path(root) / name for name in sorted(names) if not name.startswith("."))
    return files


def _absolute(path: Path) -> Path:
    """Absolute and normalised (``..`` removed) without resolving symlinks."""
    return Path(os.path.abspath(path))
