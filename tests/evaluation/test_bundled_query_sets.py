"""The bundled full-size originals are a query set: evaluated against the archive, never
ingested by the demo nor trained on by default."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from services.config import REPO_ROOT, Settings
from services.demo import demo_plan
from services.encoder.labels import (
    QUERY_SETS_FOLDER,
    bundled_label_files,
    query_label_files,
    read_label_sets,
    read_labels,
)
from services.encoder.training.config import TrainConfig
from services.evaluation.image_collections import image_collections

DATA = REPO_ROOT / "data"
ORIGINALS = "nih-cxr14-originals-512px"


def _under_queries(path: Path) -> bool:
    return QUERY_SETS_FOLDER in Path(path).resolve().relative_to(DATA.resolve()).parts


def test_the_originals_are_bundled_as_a_query_set_of_new_patients() -> None:
    queries = query_label_files(DATA)
    assert [path.parent.name for path in queries] == [ORIGINALS]
    originals = read_labels(queries[0])
    assert len(originals.records) == 268
    assert len({record.patient_id for record in originals.records}) == 268
    assert (queries[0].parent / "README.md").read_text().count("NIH Clinical Center") >= 1
    archive = read_label_sets(bundled_label_files(DATA))
    assert len(archive.records) == 2173
    shared = {r.patient_id for r in archive.records} & {r.patient_id for r in originals.records}
    assert shared == set()


def test_neither_the_demo_ingest_nor_default_training_picks_up_a_query_set(
    tmp_path: Path,
) -> None:
    settings = Settings(home=tmp_path / "home", encoder_device="cpu")
    assert settings.data_dir.resolve() == DATA.resolve()
    assert not any(_under_queries(path) for path in bundled_label_files(settings.data_dir))
    plan = demo_plan(settings)
    assert len(plan.entries) == 2173
    assert not any(_under_queries(Path(entry["path"])) for entry in plan.entries)
    config = TrainConfig.from_settings(settings)
    assert config.label_files and not any(_under_queries(path) for path in config.label_files)


def test_a_queries_folder_is_skipped_even_with_its_own_labels_file(tmp_path: Path) -> None:
    for folder in ("set", "queries", "queries/new"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "labels.csv").write_text("Image Index,Finding Labels\n")
    assert bundled_label_files(tmp_path) == [tmp_path / "set" / "labels.csv"]
    assert query_label_files(tmp_path) == [tmp_path / "queries" / "new" / "labels.csv"]
    assert query_label_files(tmp_path / "set") == []


def test_the_128px_set_names_the_collection_of_every_image() -> None:
    labels = DATA / "nih-cxr14-extra-128px" / "labels.csv"
    collections = image_collections([labels], read_labels(labels))
    names, counts = np.unique(collections, return_counts=True)
    assert dict(zip(names.tolist(), counts.tolist(), strict=True)) == {
        "nih-cxr14-extra-128px/balanced-nofinding-pneumonia": 825,
        "nih-cxr14-extra-128px/nih-5pct-sample": 615,
    }
