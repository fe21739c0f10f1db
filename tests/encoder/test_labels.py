"""Label readers: NIH ChestX-ray14 and CheXpert, and every way a label file can be wrong."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from encoder_testkit import BUNDLED_DIR, BUNDLED_LABELS, png_bytes, write_labels

from services.encoder.labels import (
    FINDINGS_CHEXPERT,
    FINDINGS_NIH,
    LabelFileError,
    read_labels,
)

NIH_HEADER = ["Image Index", "Finding Labels", "Follow-up #", "Patient ID"]
CHEXPERT_HEADER = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", "No Finding"] + list(
    FINDINGS_CHEXPERT
)
PNG = png_bytes(np.zeros((8, 8)))


def test_bundled_nih_labels_match_the_dataset_readme() -> None:
    table = read_labels(BUNDLED_LABELS)
    assert table.findings == FINDINGS_NIH
    assert len(table.records) == 733
    assert len({record.patient_id for record in table.records}) == 215
    counts = Counter(finding for record in table.records for finding in record.findings)
    # Figures from data/nih-cxr14-64px/README.md.
    assert counts["Effusion"] == 120 and counts["Infiltration"] == 107 and counts["Mass"] == 8
    assert sum(not record.findings for record in table.records) == 395
    targets = table.targets()
    assert targets.shape == (733, 14) and targets.dtype == np.float32
    assert not np.isnan(targets).any()
    assert targets.sum(axis=0)[FINDINGS_NIH.index("Effusion")] == 120
    assert all(record.image_path.parent == BUNDLED_DIR / "images" for record in table.records)


def test_nih_multi_label_row(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(PNG)
    csv_path = write_labels(
        tmp_path / "labels.csv", NIH_HEADER, [["a.png", "Mass|Effusion", "0", "17"]]
    )
    (record,) = read_labels(csv_path).records
    assert record.findings == ("Effusion", "Mass")  # release order, not file order
    assert record.patient_id == "17"
    expected = np.zeros(14, dtype=np.float32)
    expected[[FINDINGS_NIH.index("Effusion"), FINDINGS_NIH.index("Mass")]] = 1
    np.testing.assert_array_equal(record.targets, expected)


def _chexpert_row(path: str, **values: str) -> list[str]:
    row = {name: "" for name in CHEXPERT_HEADER}
    row.update({"Path": path, "Sex": "Female", "Age": "68", "Frontal/Lateral": "Frontal"})
    row.update({name.replace("_", " "): value for name, value in values.items()})
    return [row[name] for name in CHEXPERT_HEADER]


def _chexpert_tree(root: Path) -> Path:
    """CheXpert's layout: <root>/CheXpert-v1.0-small/train.csv, paths start with that folder."""
    dataset = root / "CheXpert-v1.0-small"
    for patient in ("patient00001", "patient00002"):
        folder = dataset / "train" / patient / "study1"
        folder.mkdir(parents=True)
        (folder / "view1_frontal.jpg").write_bytes(PNG)
    return dataset


def test_chexpert_uncertain_is_ignored_in_loss_and_positive_for_retrieval(tmp_path: Path) -> None:
    dataset = _chexpert_tree(tmp_path)
    prefix = "CheXpert-v1.0-small/train"
    csv_path = write_labels(
        dataset / "train.csv",
        CHEXPERT_HEADER,
        [
            _chexpert_row(
                f"{prefix}/patient00001/study1/view1_frontal.jpg",
                Cardiomegaly="1.0",
                Edema="-1.0",
                Pneumonia="0.0",
            ),
            _chexpert_row(f"{prefix}/patient00002/study1/view1_frontal.jpg", No_Finding="1.0"),
        ],
    )
    table = read_labels(csv_path)
    assert table.findings == FINDINGS_CHEXPERT and len(table.findings) == 13
    first, second = table.records
    assert first.findings == ("Cardiomegaly", "Edema")  # uncertain Edema counts as positive
    assert first.patient_id == "patient00001" and second.patient_id == "patient00002"
    targets = dict(zip(FINDINGS_CHEXPERT, first.targets.tolist(), strict=True))
    assert targets["Cardiomegaly"] == 1.0
    assert math.isnan(targets["Edema"])  # ignored by the loss
    assert targets["Pneumonia"] == 0.0
    assert targets["Fracture"] == 0.0  # blank: not mentioned in the report, negative
    assert second.findings == () and not second.targets.any()
    assert first.image_path.is_file()


def test_chexpert_patient_id_column_wins(tmp_path: Path) -> None:
    (tmp_path / "x.png").write_bytes(PNG)
    header = ["Path", "Patient ID", *FINDINGS_CHEXPERT]
    csv_path = write_labels(tmp_path / "l.csv", header, [["x.png", "P9"] + [""] * 13])
    assert read_labels(csv_path).records[0].patient_id == "P9"


def test_explicit_images_dir(tmp_path: Path) -> None:
    images = tmp_path / "elsewhere"
    images.mkdir()
    (images / "a.png").write_bytes(PNG)
    csv_path = write_labels(
        tmp_path / "labels.csv", NIH_HEADER, [["a.png", "No Finding", "0", "1"]]
    )
    assert read_labels(csv_path, images_dir=images).records[0].image_path == images / "a.png"
    with pytest.raises(LabelFileError, match="missing image files"):
        read_labels(csv_path)


# --- bad label files: each its own reason ----------------------------------------------------


def _nih(tmp: Path, rows: list[list[str]], header: list[str] = NIH_HEADER) -> Path:
    for name in ("a.png", "b.png"):
        (tmp / name).write_bytes(PNG)
    return write_labels(tmp / "labels.csv", header, rows)


def _chexpert(tmp: Path, row: list[str], header: list[str] = CHEXPERT_HEADER) -> Path:
    dataset = _chexpert_tree(tmp)
    return write_labels(dataset / "train.csv", header, [row])


CHEXPERT_PATH = "CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg"

# case id -> (builder of the CSV path in a temporary folder, reason fragment)
BAD_CSVS: dict[str, tuple[Callable[[Path], Path], str]] = {
    "missing-file": (lambda tmp: tmp / "absent.csv", "does not exist"),
    "empty-file": (lambda tmp: _write(tmp / "labels.csv", b""), "is empty"),
    "header-only": (
        lambda tmp: _write(tmp / "labels.csv", b"Image Index,Finding Labels,Patient ID\n"),
        "no rows",
    ),
    "binary-not-csv": (lambda tmp: _write(tmp / "labels.csv", PNG), "binary content"),
    "not-utf8": (
        lambda tmp: _write(
            tmp / "labels.csv", "Image Index,Finding Labels\ncaf\xe9,x\n".encode("latin-1")
        ),
        "not a UTF-8",
    ),
    "single-column-text": (
        lambda tmp: _write(tmp / "labels.csv", b"just some prose\nmore prose\n"),
        "header has one column",
    ),
    "unknown-format": (
        lambda tmp: _write(tmp / "labels.csv", b"file,label\na.png,Mass\n"),
        "cannot tell the label format",
    ),
    "nih-missing-patient-column": (
        lambda tmp: _nih(tmp, [["a.png", "Mass"]], header=["Image Index", "Finding Labels"]),
        "lacks the columns ['Patient ID']",
    ),
    "nih-unknown-finding": (
        lambda tmp: _nih(tmp, [["a.png", "Mass|Covid", "0", "1"]]),
        "unknown findings ['Covid']",
    ),
    "nih-no-finding-with-findings": (
        lambda tmp: _nih(tmp, [["a.png", "No Finding|Mass", "0", "1"]]),
        "together with findings",
    ),
    "nih-empty-finding-labels": (
        lambda tmp: _nih(tmp, [["a.png", "", "0", "1"]]),
        "empty 'Finding Labels'",
    ),
    "nih-empty-patient": (
        lambda tmp: _nih(tmp, [["a.png", "Mass", "0", ""]]),
        "empty 'Patient ID'",
    ),
    "nih-missing-image-files": (
        lambda tmp: _nih(tmp, [["a.png", "Mass", "0", "1"], ["gone.png", "Edema", "0", "2"]]),
        "1 rows point to missing image files: line 3",
    ),
    "nih-duplicate-image": (
        lambda tmp: _nih(tmp, [["a.png", "Mass", "0", "1"], ["a.png", "Edema", "1", "1"]]),
        "listed more than once",
    ),
    "ragged-row": (
        lambda tmp: _write(
            tmp / "labels.csv", b"Image Index,Finding Labels,Follow-up #,Patient ID\na.png,Mass\n"
        ),
        "line 2 has 2 fields, the header has 4",
    ),
    "duplicate-columns": (
        lambda tmp: _write(tmp / "labels.csv", b"Path,Path,Edema\na,b,1\n"),
        "duplicate columns",
    ),
    "chexpert-missing-finding-column": (
        lambda tmp: _chexpert(
            tmp,
            _chexpert_row(CHEXPERT_PATH)[:-1],
            header=CHEXPERT_HEADER[:-1],
        ),
        "lacks the columns ['Support Devices']",
    ),
    "chexpert-bad-value": (
        lambda tmp: _chexpert(tmp, _chexpert_row(CHEXPERT_PATH, Edema="2")),
        "column 'Edema' has '2'; expected 1, 0, -1 or blank",
    ),
    "chexpert-no-patient": (
        lambda tmp: _chexpert(tmp, _chexpert_row("CheXpert-v1.0-small/train/x.jpg")),
        "no patient id",
    ),
    "chexpert-missing-image": (
        lambda tmp: _chexpert(
            tmp, _chexpert_row("CheXpert-v1.0-small/train/patient00009/study1/view1_frontal.jpg")
        ),
        "missing image files",
    ),
}


def _write(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


@pytest.mark.parametrize("case", sorted(BAD_CSVS))
def test_bad_label_files_fail_with_file_and_reason(case: str, tmp_path: Path) -> None:
    build, reason = BAD_CSVS[case]
    csv_path = build(tmp_path)
    with pytest.raises(LabelFileError) as caught:
        read_labels(csv_path)
    message = str(caught.value)
    assert message.startswith(f"{csv_path}: "), message
    assert reason in message, message


def test_unknown_format_argument(tmp_path: Path) -> None:
    with pytest.raises(LabelFileError, match="unknown label format 'mimic'"):
        read_labels(BUNDLED_LABELS, format="mimic")


def test_forced_format_checks_its_own_columns(tmp_path: Path) -> None:
    with pytest.raises(LabelFileError, match="CheXpert label file lacks the columns"):
        read_labels(BUNDLED_LABELS, format="chexpert")
