"""The collection baselines and external query sets of the held-out evaluation, by hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from services.encoder.labels import read_labels
from services.evaluation.heldout import (
    HELD_OUT,
    POOLED,
    QUERY_SET,
    RANDOM_ROW,
    SAME_COLLECTION_ROW,
    CodeSet,
    HeldOutSet,
    evaluate_held_out,
)
from services.evaluation.image_collections import CollectionsFileError, image_collections
from services.evaluation.metrics import LabelSpace

MASS, EFFUSION = ("Mass",), ("Effusion",)


def _two_collections() -> HeldOutSet:
    """One source set of two collections of four images, one patient each: collection A all
    Mass, collection B all Effusion. The first image of each collection is a query."""
    findings = [MASS] * 4 + [EFFUSION] * 4
    is_query = np.zeros(8, dtype=bool)
    is_query[[0, 4]] = True
    return HeldOutSet(
        labels=LabelSpace.from_findings(findings).matrix(findings),
        sources=np.array(["set"] * 8),
        patients=np.arange(8),
        is_query=is_query,
        collections=np.array(["set/A"] * 4 + ["set/B"] * 4),
    )


def test_random_within_the_collection_and_the_collection_cue_take_their_known_values() -> None:
    data = _two_collections()
    # Codes that see only the collection: every image of a collection has the same code, so a
    # query's top 3 are its collection's other images.
    codes = np.repeat(np.eye(2), 4, axis=0)
    report = evaluate_held_out(data, [CodeSet("collection only", codes)], k=3, resamples=100)
    pooled = report.view(POOLED)
    assert pooled.kind == HELD_OUT and [row.name for row in pooled.rows] == [
        "collection only", RANDOM_ROW, SAME_COLLECTION_ROW,
    ]  # fmt: skip
    # Random over the set: 3 of the 7 other images share the query's labels; within its
    # collection, all 3 do.
    assert pooled.row(RANDOM_ROW).metrics["precision"].value == pytest.approx(3 / 7)
    assert pooled.row(SAME_COLLECTION_ROW).metrics["precision"].value == pytest.approx(1.0)
    # The collection cue: all of the model's top 3 from the own collection; a random pick 3/7.
    assert pooled.row("collection only").metrics["own_collection"].value == pytest.approx(1.0)
    assert pooled.row(RANDOM_ROW).metrics["own_collection"].value == pytest.approx(3 / 7)
    assert pooled.row(SAME_COLLECTION_ROW).metrics["own_collection"].value == pytest.approx(1.0)
    # The model is exactly as good as a random pick within the collection: difference zero.
    difference = pooled.row(SAME_COLLECTION_ROW).difference
    assert difference is not None and difference["precision"].value == pytest.approx(0.0)


def test_a_set_without_collections_is_one_collection() -> None:
    data = _two_collections()
    single = HeldOutSet(data.labels, data.sources, data.patients, data.is_query)
    report = evaluate_held_out(single, [CodeSet("codes", np.repeat(np.eye(2), 4, axis=0))], k=3,
                               resamples=100)  # fmt: skip
    names = [row.name for row in report.view(POOLED).rows]
    assert SAME_COLLECTION_ROW not in names
    assert report.view(POOLED).row(RANDOM_ROW).metrics["own_collection"].value == 1.0


def test_a_query_set_searches_the_whole_archive_and_is_never_a_result() -> None:
    """Archive: the two collections; query set: two Mass films with identical codes, so if
    they could find each other they would rank each other first."""
    archive = _two_collections()
    findings = [MASS] * 4 + [EFFUSION] * 4 + [MASS, MASS]
    external = np.r_[np.zeros(8, dtype=bool), True, True]
    data = HeldOutSet(
        labels=LabelSpace.from_findings(findings).matrix(findings),
        sources=np.r_[archive.sources, ["originals", "originals"]],
        patients=np.r_[archive.patients, [100, 101]],
        is_query=np.r_[archive.is_query, False, False],
        collections=np.r_[archive.collections, ["originals", "originals"]],
        external=external,
    )
    # The query set's codes sit nearest collection B (Effusion), then each other.
    codes = np.r_[np.repeat(np.eye(3)[:2], 4, axis=0), [[0.1, 1.0, 0.5]] * 2]
    report = evaluate_held_out(data, [CodeSet("codes", codes)], k=4, resamples=100)
    assert [view.view for view in report.views] == [POOLED, "set", "originals"]
    view = report.view("originals")
    assert view.kind == QUERY_SET and view.queries == 2 and view.database == 8
    # Its top 4 are collection B's four Effusion films, never the other Mass original.
    assert view.row("codes").metrics["precision"].value == 0.0
    assert view.row(RANDOM_ROW).metrics["precision"].value == pytest.approx(4 / 8)
    assert view.row("codes").metrics["own_collection"].value == 0.0
    assert SAME_COLLECTION_ROW not in [row.name for row in view.rows]
    # The held-out views do not see the query set.
    assert report.view(POOLED).database == 8 and report.view(POOLED).queries == 2


def _labelled_set(folder: Path, names: list[str]) -> Path:
    (folder / "images").mkdir(parents=True)
    rows = ["Image Index,Finding Labels,Follow-up #,Patient ID"]
    for number, name in enumerate(names):
        (folder / "images" / name).write_bytes(b"")
        rows.append(f"{name},No Finding,0,{number + 1}")
    labels = folder / "labels.csv"
    labels.write_text("\n".join(rows) + "\n")
    return labels


def test_collections_come_from_the_file_beside_the_labels(tmp_path: Path) -> None:
    labels = _labelled_set(tmp_path / "mixed", ["a.png", "b.png", "c.png"])
    (tmp_path / "mixed" / "collections.csv").write_text(
        "Image Index,Collection\na.png,first\nb.png,second\nc.png,first\n"
    )
    plain = _labelled_set(tmp_path / "plain", ["d.png"])
    assert image_collections([labels], read_labels(labels)).tolist() == [
        "mixed/first", "mixed/second", "mixed/first",
    ]  # fmt: skip
    assert image_collections([plain], read_labels(plain)).tolist() == ["plain"]
    (tmp_path / "mixed" / "collections.csv").write_text("Image Index,Collection\na.png,first\n")
    with pytest.raises(CollectionsFileError, match="2 of the set's images are in no collection"):
        image_collections([labels], read_labels(labels))
    (tmp_path / "mixed" / "collections.csv").write_text("Image,Group\na.png,first\n")
    with pytest.raises(CollectionsFileError, match="needs the columns"):
        image_collections([labels], read_labels(labels))
