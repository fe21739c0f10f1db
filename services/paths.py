"""Which files medgraph may touch: only those under the configured data roots.

Shared by the API (serving files, ingest requests) and the ingest workers (every path of every
task, since a task can reach Redis without passing through the API). A path is resolved first,
symbolic links included, so neither ``..`` nor a link can lead outside a root.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from services.config import Settings

# One wording for "outside the roots" and "missing": a caller must not learn whether a file
# exists outside the data roots.
NOT_UNDER_ROOTS = "is not an existing file or folder under a data root"


def resolve_under_roots(raw: str | Path, roots: Iterable[Path]) -> Path | None:
    """The resolved path when ``raw`` is absolute, exists and lies under a data root; else None."""
    path = Path(raw)
    if not path.is_absolute():
        return None
    try:
        resolved = path.resolve(strict=True)
    except (OSError, RuntimeError, ValueError):  # ValueError: a NUL byte in the path
        return None
    for root in roots:
        try:
            root_resolved = Path(root).resolve(strict=True)
        except (OSError, RuntimeError, ValueError):
            continue
        if resolved.is_relative_to(root_resolved):
            return resolved
    return None


def upload_folder(settings: Settings) -> Path:
    """Where files received by the server are kept (uploads with add=true, DICOM instances from
    DICOMweb and the PACS): ``api_upload_dir``, by default ``<first data root>/uploads``."""
    return settings.api_upload_dir or Path(settings.data_roots[0]) / "uploads"
