"""Which collection each labelled image came from, for the within-collection baselines.

A set's ``collections.csv`` (columns ``Image Index``, ``Collection``) beside its ``labels.csv``
names the public collection each image was picked from (the 128-px NIH set holds two, picked
differently). An encoder that only recognises the collection already gains precision, so the
held-out evaluation reports a random pick within the query's own collection beside the random
pick over the whole set. A set without the file is one collection.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from services.encoder.labels import LabelTable

COLLECTIONS_FILE = "collections.csv"
_COLUMNS = ("Image Index", "Collection")


class CollectionsFileError(ValueError):
    """A collections.csv that cannot be used: unreadable, wrong columns, or images missing."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")


def read_collections(path: Path) -> dict[str, str]:
    """``collections.csv`` as {image file name: collection}."""
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as problem:
        raise CollectionsFileError(path, f"cannot be read ({problem})") from None
    if not rows or any(column not in rows[0] for column in _COLUMNS):
        raise CollectionsFileError(path, f"needs the columns {', '.join(_COLUMNS)}")
    collections: dict[str, str] = {}
    for number, row in enumerate(rows, start=2):
        name, collection = ((row.get(column) or "").strip() for column in _COLUMNS)
        if not name or not collection:
            raise CollectionsFileError(path, f"line {number} lacks an image or a collection")
        if collections.setdefault(name, collection) != collection:
            raise CollectionsFileError(path, f"{name} is named in two collections")
    return collections


def image_collections(label_files: Sequence[Path], table: LabelTable) -> np.ndarray:
    """(n,) collection of each of the table's images, ``<set>/<collection>`` where the set has a
    collections.csv (every one of its images must be named there), else ``<set>``."""
    named: dict[str, dict[str, str]] = {}
    for label_file in label_files:
        path = Path(label_file).parent / COLLECTIONS_FILE
        if path.is_file():
            named[Path(label_file).parent.name] = read_collections(path)
    result: list[str] = []
    missing: dict[str, list[str]] = {}
    for record in table.records:
        collections = named.get(record.source)
        if collections is None:
            result.append(record.source)
        elif record.image_path.name in collections:
            result.append(f"{record.source}/{collections[record.image_path.name]}")
        else:
            missing.setdefault(record.source, []).append(record.image_path.name)
            result.append(record.source)
    if missing:
        source, names = next(iter(missing.items()))
        raise CollectionsFileError(
            Path(source) / COLLECTIONS_FILE,
            f"{len(names)} of the set's images are in no collection (e.g. {names[0]})",
        )
    return np.array(result, dtype=str)
