"""Label files of the two chest X-ray datasets users bring: NIH ChestX-ray14 and CheXpert.

Both become a :class:`LabelTable`: one :class:`LabelRecord` per image with its patient, its
positive findings, and its training targets.

- NIH ChestX-ray14: ``Image Index`` (file name), ``Finding Labels`` (findings joined by ``|``, or
  ``No Finding``), ``Patient ID``. Every listed finding is a positive, every other one a negative.
- CheXpert: ``Path`` and the finding columns with 1 (positive), 0 (negative), -1 (uncertain) or
  blank (not mentioned in the report). As in the paper, uncertain labels are ignored by the loss
  (target NaN) and count as positive for retrieval relevance (``findings``). Blank means the
  report does not mention it, which CheXpert's authors train as negative, so we do too. The
  ``No Finding`` column is the absence of all others, so it is not a target. The patient is the
  ``Patient ID`` column when present, else the ``patientNNNNN`` folder in ``Path``.

Anything wrong with the file raises :class:`LabelFileError` naming the file, the row and the reason.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FINDINGS_NIH: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)
NIH_NO_FINDING = "No Finding"
NIH_COLUMNS = ("Image Index", "Finding Labels", "Patient ID")

# CheXpert's 13 observations besides "No Finding", in the release's column order.
FINDINGS_CHEXPERT: tuple[str, ...] = (
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)
CHEXPERT_PATH_COLUMN = "Path"
CHEXPERT_PATIENT_COLUMN = "Patient ID"
CHEXPERT_VALUES = {"1": 1.0, "1.0": 1.0, "0": 0.0, "0.0": 0.0, "-1": math.nan, "-1.0": math.nan}
CHEXPERT_PATIENT_PATTERN = re.compile(r"^patient\d+$")

LABEL_FORMATS = ("auto", "nih", "chexpert")
# Where a reading error lists offending rows, it shows this many.
ROWS_SHOWN = 5


# Under a data folder: sets that are queries only (evaluation), never archive or training data.
QUERY_SETS_FOLDER = "queries"


class LabelFileError(ValueError):
    """A label CSV that cannot be used; the message names the file and the reason."""

    def __init__(self, csv_path: Path | str, reason: str) -> None:
        super().__init__(f"{csv_path}: {reason}")
        self.csv_path = str(csv_path)
        self.reason = reason


@dataclass(frozen=True)
class LabelRecord:
    image_path: Path
    patient_id: str
    findings: tuple[str, ...]  # positives, uncertain included (retrieval relevance)
    targets: np.ndarray  # float32 (n_findings,): 1, 0, NaN = uncertain (ignored by the loss)
    # The label file's folder name (e.g. "nih-cxr14-64px"): which set the image came from, so
    # evaluations can be reported per source set.
    source: str = ""


@dataclass(frozen=True)
class LabelTable:
    findings: tuple[str, ...]
    records: list[LabelRecord]

    def targets(self) -> np.ndarray:
        """All targets as one float32 (n_images, n_findings) array."""
        if not self.records:
            return np.zeros((0, len(self.findings)), dtype=np.float32)
        return np.stack([record.targets for record in self.records])

    def subset(self, indices: list[int] | np.ndarray) -> LabelTable:
        return LabelTable(self.findings, [self.records[int(i)] for i in indices])

    def sources(self) -> list[str]:
        """The source sets in first-seen order."""
        return list(dict.fromkeys(record.source for record in self.records))


def read_label_sets(
    csv_paths: Sequence[Path], images_dir: Path | None = None, format: str = "auto"
) -> LabelTable:
    """Several label files of one format as one table (e.g. both bundled NIH sets).

    Patients are matched by their id across files (the two bundled NIH sets share one patient),
    so a patient split over the joined table keeps each patient on one side. ``images_dir``
    applies to every file.
    """
    if not csv_paths:
        raise LabelFileError("(no label files)", "at least one label file is needed")
    tables = [read_labels(Path(path), images_dir, format) for path in csv_paths]
    findings = tables[0].findings
    for path, table in zip(csv_paths, tables, strict=True):
        if table.findings != findings:
            raise LabelFileError(
                path, f"its findings differ from {csv_paths[0]}'s: one model needs one label set"
            )
    joined = LabelTable(findings, [record for table in tables for record in table.records])
    _check_unique_images(Path(csv_paths[-1]), joined)
    return joined


def bundled_label_files(data_dir: Path) -> list[Path]:
    """The label files of a data folder: its own ``labels.csv``, or, for a folder of sets
    (the repository's ``data/``), every ``<set>/labels.csv`` in name order.

    Never the query sets under ``<data_dir>/queries/`` (``query_label_files``): they are the
    archive's new patients, for evaluation only, so the demo must not ingest them nor default
    training learn from them."""
    data_dir = Path(data_dir)
    own = data_dir / "labels.csv"
    if own.is_file():
        return [own]
    found = sorted(
        path for path in data_dir.glob("*/labels.csv") if path.parent.name != QUERY_SETS_FOLDER
    )
    if not found:
        raise LabelFileError(data_dir, "no labels.csv in this folder or in its sub-folders")
    return found


def query_label_files(data_dir: Path) -> list[Path]:
    """The label files of the query sets, ``<data_dir>/queries/<set>/labels.csv``, in name order
    (none when the folder is absent): images of new patients that ``medgraph evaluate
    --held-out`` searches against the archive; nothing ingests or trains on them by default."""
    return sorted((Path(data_dir) / QUERY_SETS_FOLDER).glob("*/labels.csv"))


def read_labels(csv_path: Path, images_dir: Path | None = None, format: str = "auto") -> LabelTable:
    """Read an NIH or CheXpert label CSV; every row must point to an existing image file.

    ``images_dir``: where image paths are relative to. Default for NIH: ``<csv dir>/images`` if
    it exists, else the CSV's folder; for CheXpert: the CSV's folder or its parent (CheXpert's
    ``Path`` starts with the dataset folder's own name).
    """
    csv_path = Path(csv_path)
    if format not in LABEL_FORMATS:
        raise LabelFileError(
            csv_path, f"unknown label format {format!r}; use one of {LABEL_FORMATS}"
        )
    header, rows = _read_csv(csv_path)
    if format == "auto":
        format = _detect_format(csv_path, header)
    if format == "nih":
        table = _parse_nih(csv_path, header, rows, images_dir)
    else:
        table = _parse_chexpert(csv_path, header, rows, images_dir)
    _check_unique_images(csv_path, table)
    return table


def _read_csv(csv_path: Path) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """Header and (line number, row) pairs; rejects files that are not a rectangular CSV."""
    try:
        raw = csv_path.read_bytes()
    except FileNotFoundError:
        raise LabelFileError(csv_path, "the label file does not exist") from None
    except IsADirectoryError:
        raise LabelFileError(csv_path, "is a directory, not a CSV file") from None
    except OSError as exc:
        raise LabelFileError(csv_path, f"cannot read the label file ({exc.strerror})") from None
    if not raw.strip():
        raise LabelFileError(csv_path, "the label file is empty")
    if b"\x00" in raw[:4096]:
        raise LabelFileError(csv_path, "not a CSV text file (binary content)")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise LabelFileError(csv_path, f"not a UTF-8 CSV text file ({exc.reason})") from None

    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [name.strip() for name in next(reader)]
        body = [(reader.line_num, row) for row in reader]
    except csv.Error as exc:
        raise LabelFileError(csv_path, f"not a well-formed CSV file ({exc})") from None
    if len(header) < 2:
        raise LabelFileError(csv_path, f"not a CSV label file (header has one column: {header})")
    duplicates = sorted({name for name in header if header.count(name) > 1})
    if duplicates:
        raise LabelFileError(csv_path, f"duplicate columns in the header: {duplicates}")

    rows: list[tuple[int, dict[str, str]]] = []
    for line, row in body:
        if not any(cell.strip() for cell in row):
            continue  # blank lines carry nothing
        if len(row) != len(header):
            raise LabelFileError(
                csv_path, f"line {line} has {len(row)} fields, the header has {len(header)}"
            )
        rows.append((line, dict(zip(header, (cell.strip() for cell in row), strict=True))))
    if not rows:
        raise LabelFileError(csv_path, "the label file has a header but no rows")
    return header, rows


def _detect_format(csv_path: Path, header: list[str]) -> str:
    if "Image Index" in header and "Finding Labels" in header:
        return "nih"
    if CHEXPERT_PATH_COLUMN in header:
        return "chexpert"
    raise LabelFileError(
        csv_path,
        "cannot tell the label format: expected NIH ChestX-ray14 columns "
        f"{list(NIH_COLUMNS)} or a CheXpert '{CHEXPERT_PATH_COLUMN}' column; header is {header}",
    )


def _require_columns(
    csv_path: Path, header: list[str], required: tuple[str, ...], kind: str
) -> None:
    missing = [name for name in required if name not in header]
    if missing:
        raise LabelFileError(csv_path, f"{kind} label file lacks the columns {missing}")


def _parse_nih(
    csv_path: Path,
    header: list[str],
    rows: list[tuple[int, dict[str, str]]],
    images_dir: Path | None,
) -> LabelTable:
    _require_columns(csv_path, header, NIH_COLUMNS, "NIH ChestX-ray14")
    if images_dir is None:
        images_dir = csv_path.parent / "images"
        if not images_dir.is_dir():
            images_dir = csv_path.parent
    index = {finding: i for i, finding in enumerate(FINDINGS_NIH)}
    records: list[LabelRecord] = []
    missing: list[str] = []
    for line, row in rows:
        image_name, patient_id = row["Image Index"], row["Patient ID"]
        if not image_name:
            raise LabelFileError(csv_path, f"line {line}: empty 'Image Index'")
        if not patient_id:
            raise LabelFileError(csv_path, f"line {line}: empty 'Patient ID'")
        labels = [label.strip() for label in row["Finding Labels"].split("|") if label.strip()]
        if not labels:
            raise LabelFileError(
                csv_path, f"line {line}: empty 'Finding Labels' (use '{NIH_NO_FINDING}')"
            )
        unknown = [label for label in labels if label not in index and label != NIH_NO_FINDING]
        if unknown:
            raise LabelFileError(
                csv_path,
                f"line {line}: unknown findings {unknown}; known are {list(FINDINGS_NIH)} "
                f"and '{NIH_NO_FINDING}'",
            )
        if NIH_NO_FINDING in labels and len(labels) > 1:
            raise LabelFileError(
                csv_path, f"line {line}: '{NIH_NO_FINDING}' together with findings {labels}"
            )
        positives = tuple(finding for finding in FINDINGS_NIH if finding in labels)
        targets = np.zeros(len(FINDINGS_NIH), dtype=np.float32)
        targets[[index[finding] for finding in positives]] = 1.0
        image_path = images_dir / image_name
        if not image_path.is_file():
            missing.append(f"line {line}: {image_path}")
        records.append(
            LabelRecord(image_path, patient_id, positives, targets, csv_path.parent.name)
        )
    _fail_on_missing_files(csv_path, missing)
    return LabelTable(FINDINGS_NIH, records)


def _parse_chexpert(
    csv_path: Path,
    header: list[str],
    rows: list[tuple[int, dict[str, str]]],
    images_dir: Path | None,
) -> LabelTable:
    _require_columns(csv_path, header, (CHEXPERT_PATH_COLUMN, *FINDINGS_CHEXPERT), "CheXpert")
    bases = [images_dir] if images_dir is not None else [csv_path.parent, csv_path.parent.parent]
    has_patient_column = CHEXPERT_PATIENT_COLUMN in header
    records: list[LabelRecord] = []
    missing: list[str] = []
    for line, row in rows:
        relative = row[CHEXPERT_PATH_COLUMN]
        if not relative:
            raise LabelFileError(csv_path, f"line {line}: empty '{CHEXPERT_PATH_COLUMN}'")
        targets = np.zeros(len(FINDINGS_CHEXPERT), dtype=np.float32)
        positives: list[str] = []
        for i, finding in enumerate(FINDINGS_CHEXPERT):
            cell = row[finding]
            if cell == "":
                continue  # not mentioned in the report: negative
            if cell not in CHEXPERT_VALUES:
                raise LabelFileError(
                    csv_path,
                    f"line {line}: column '{finding}' has {cell!r}; expected 1, 0, -1 or blank",
                )
            targets[i] = CHEXPERT_VALUES[cell]
            if cell.startswith(("1", "-1")):
                positives.append(finding)
        patient_id = (
            row[CHEXPERT_PATIENT_COLUMN] if has_patient_column else _chexpert_patient(relative)
        )
        if not patient_id:
            raise LabelFileError(
                csv_path,
                f"line {line}: no patient id (no '{CHEXPERT_PATIENT_COLUMN}' column and no "
                f"'patientNNNNN' folder in {relative!r})",
            )
        image_path = next(
            (base / relative for base in bases if (base / relative).is_file()), bases[0] / relative
        )
        if not image_path.is_file():
            missing.append(f"line {line}: {relative}")
        records.append(
            LabelRecord(image_path, patient_id, tuple(positives), targets, csv_path.parent.name)
        )
    _fail_on_missing_files(csv_path, missing)
    return LabelTable(FINDINGS_CHEXPERT, records)


def _chexpert_patient(relative: str) -> str:
    parts = relative.replace("\\", "/").split("/")
    return next((part for part in parts if CHEXPERT_PATIENT_PATTERN.match(part)), "")


def _fail_on_missing_files(csv_path: Path, missing: list[str]) -> None:
    if missing:
        shown = "; ".join(missing[:ROWS_SHOWN])
        more = f" and {len(missing) - ROWS_SHOWN} more" if len(missing) > ROWS_SHOWN else ""
        raise LabelFileError(
            csv_path, f"{len(missing)} rows point to missing image files: {shown}{more}"
        )


def _check_unique_images(csv_path: Path, table: LabelTable) -> None:
    seen: set[Path] = set()
    for record in table.records:
        if record.image_path in seen:
            raise LabelFileError(csv_path, f"image listed more than once: {record.image_path}")
        seen.add(record.image_path)
