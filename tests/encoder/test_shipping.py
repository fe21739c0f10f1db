"""Shipping a checkpoint: the held-out gate, the fp16 copy, the record and the refusal path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from encoder_testkit import BUNDLED_DIR

from services.cli import main
from services.config import Settings
from services.encoder.checkpoint import file_sha256, load_checkpoint
from services.encoder.default_checkpoint import default_checkpoint_path
from services.encoder.extractor import FeatureExtractor
from services.encoder.shipping import (
    SHIPPED_CHECKPOINT,
    ShippingError,
    install_shipped_checkpoint,
    log_path,
    shipped_checkpoint,
    write_half_precision,
)
from services.encoder.training.loop import TrainResult
from services.evaluation.heldout import (
    HELD_OUT,
    POOLED,
    QUERY_SET,
    RANDOM_ROW,
    SAME_COLLECTION_ROW,
    HeldOutReport,
    RowReport,
    ViewReport,
)
from services.evaluation.heldout_run import RAW_PIXELS_ROW, HeldOutResult
from services.evaluation.intervals import Interval
from services.evaluation.shipping_gate import shipping_checks, shipping_judgement

MODEL = "candidate.pt (exact)"


def _difference(gain_low: float, gain_high: float) -> dict[str, Interval]:
    """A row's difference (row minus the model) for a model gain in [low, high] everywhere."""
    middle = (gain_low + gain_high) / 2
    gain = Interval(middle, gain_low, gain_high)
    return {metric: gain.negated() for metric in ("precision", "acg", "acg_positive")}


def _row(name: str, gain: tuple[float, float] | None) -> RowReport:
    metrics = {metric: Interval(0.2, 0.1, 0.3) for metric in ("precision", "acg", "acg_positive")}
    return RowReport(name, metrics, None if gain is None else _difference(*gain))


def _view(name: str, kind: str, rows: dict[str, tuple[float, float]]) -> ViewReport:
    view = ViewReport(name, kind, 10, 10, 100, {}, [_row(MODEL, None)])
    view.rows += [_row(row, gain) for row, gain in rows.items()]
    return view


def _result(
    originals: dict[str, tuple[float, float]],
    collection_set: dict[str, tuple[float, float]],
    compared: str | None = None,
) -> HeldOutResult:
    views = [
        _view(POOLED, HELD_OUT, {SAME_COLLECTION_ROW: (-0.05, 0.01)}),
        _view("two-collections", HELD_OUT, collection_set),
        _view("originals", QUERY_SET, originals),
    ]
    auroc = {"candidate.pt": {"mean": Interval(0.7, 0.6, 0.8), "difference": None}}
    if compared is not None:
        auroc[compared] = {"mean": Interval(0.7, 0.6, 0.8), "difference": Interval(0, -0.1, 0.1)}
    return HeldOutResult(
        HeldOutReport(50, 200, 0, views), "candidate.pt", compared, auroc, {}, {}, 100, 10, 10,
        {"originals": 10}, 1.0,
    )  # fmt: skip


GOOD_ORIGINALS = {RANDOM_ROW: (0.01, 0.05), RAW_PIXELS_ROW: (0.005, 0.04)}
GOOD_COLLECTIONS = {SAME_COLLECTION_ROW: (0.02, 0.08)}


def test_a_checkpoint_that_beats_every_baseline_passes_every_check() -> None:
    checks = shipping_checks(_result(GOOD_ORIGINALS, GOOD_COLLECTIONS))
    assert [check.check for check in checks] == [
        "two-collections: P@K above random within the query's collection",
        "originals: ACG_p@K above random",
        "originals: ACG_p@K above raw pixels",
    ]  # the pooled view mixes collections: it is not judged
    assert all(check.passed for check in checks)
    assert checks[1].difference.low == pytest.approx(0.01)


@pytest.mark.parametrize(
    ("originals", "collections", "failing"),
    [
        ({**GOOD_ORIGINALS, RANDOM_ROW: (-0.01, 0.05)}, GOOD_COLLECTIONS,
         "originals: ACG_p@K above random"),
        ({**GOOD_ORIGINALS, RAW_PIXELS_ROW: (0.0, 0.04)}, GOOD_COLLECTIONS,
         "originals: ACG_p@K above raw pixels"),
        (GOOD_ORIGINALS, {SAME_COLLECTION_ROW: (-0.03, 0.04)},
         "two-collections: P@K above random within the query's collection"),
    ],
)  # fmt: skip
def test_an_interval_touching_zero_fails_its_check(
    originals: dict[str, tuple[float, float]],
    collections: dict[str, tuple[float, float]],
    failing: str,
) -> None:
    checks = shipping_checks(_result(originals, collections))
    assert [check.check for check in checks if not check.passed] == [failing]


def test_the_replaced_checkpoint_may_not_be_wholly_better_on_any_view() -> None:
    # Ahead on the originals, wholly behind on the two-collection set: refused there.
    originals = GOOD_ORIGINALS | {"current.pt (exact)": (0.001, 0.03)}
    collections = GOOD_COLLECTIONS | {"current.pt (exact)": (-0.06, -0.01)}
    result = _result(originals, collections, compared="current.pt")
    result.report.views[0].rows.append(_row("current.pt (exact)", (-0.02, 0.02)))
    failed = [check.check for check in shipping_checks(result) if not check.passed]
    assert failed == [
        "two-collections: P@K not wholly below current.pt",
        "two-collections: ACG_p@K not wholly below current.pt",
    ]
    judgement = shipping_judgement(result, shipping_checks(result))
    assert judgement["held_out"]["compared_with"] == "current.pt"
    assert [entry["passed"] for entry in judgement["gate"]].count(False) == 2
    assert judgement["held_out"]["views"]["originals"][MODEL]["precision"] == 0.2


def test_fp16_copy_gives_the_same_codes_and_installs_with_its_record_and_log(
    tiny_training: TrainResult, tmp_path: Path
) -> None:
    source = tiny_training.checkpoint_path
    half = write_half_precision(source, tmp_path / "half" / "densenet121-demo.pt")
    kept = load_checkpoint(half)
    floats = [tensor for tensor in kept.state_dict.values() if tensor.is_floating_point()]
    assert floats and all(tensor.dtype == torch.float16 for tensor in floats)
    assert kept.training["stored_from_sha256"] == file_sha256(source)
    assert half.stat().st_size < 0.6 * source.stat().st_size
    images = [np.random.default_rng(seed).random((64, 64), dtype=np.float32) for seed in range(6)]
    full_codes = FeatureExtractor(source, device="cpu").load().embed(images)
    half_codes = FeatureExtractor(half, device="cpu").load().embed(images)
    cosine = np.sum(full_codes * half_codes, axis=1) / (
        np.linalg.norm(full_codes, axis=1) * np.linalg.norm(half_codes, axis=1)
    )
    assert cosine.min() > 0.999

    log = tmp_path / "train.log"
    log.write_text("epoch 1/1: train loss 0.1\n")
    destination = tmp_path / "models" / "densenet121-demo.pt"
    shipped = install_shipped_checkpoint(half, {"gate": [{"check": "x", "passed": True}]}, log,
                                         destination)  # fmt: skip
    record = json.loads(shipped.record.read_text())
    assert record["sha256"] == file_sha256(destination) == shipped.sha256
    assert record["stored_weights"] == "fp16" and record["gate"][0]["check"] == "x"
    assert record["training_log"]["sha256"] == file_sha256(log_path(destination))
    assert log_path(destination).read_text() == log.read_text()
    assert shipped_checkpoint(destination) == destination
    with destination.open("ab") as handle:  # a damaged or swapped file is not used
        handle.write(b"\0")
    assert shipped_checkpoint(destination) is None
    assert shipped_checkpoint(tmp_path / "absent.pt") is None
    with pytest.raises(ShippingError, match="does not exist"):
        install_shipped_checkpoint(half, {}, tmp_path / "missing.log", destination)


def test_evaluate_ship_refuses_a_checkpoint_that_fails_the_gate(
    tiny_training: TrainResult, tmp_path: Path
) -> None:
    before = file_sha256(SHIPPED_CHECKPOINT) if SHIPPED_CHECKPOINT.exists() else None
    checkpoint = load_checkpoint(tiny_training.checkpoint_path)
    labels = Path(checkpoint.training["labels_csv"][0])
    images = labels.parent / "images"
    if not images.exists():
        images.symlink_to(BUNDLED_DIR / "images")
    result = CliRunner().invoke(
        main,
        [
            "evaluate", "--held-out", "--ship", "--checkpoint", str(tiny_training.checkpoint_path),
            "--labels", str(labels), "--k", "10", "--resamples", "100",
            "--output-dir", str(tmp_path / "out"),
        ],
        env={"MEDGRAPH_ENCODER_DEVICE": "cpu", "MEDGRAPH_HOME": str(tmp_path / "home")},
    )  # fmt: skip
    # No external query set with --labels alone: nothing judges uploads, so nothing ships.
    assert result.exit_code == 1, result.output
    assert "not shipped: no external query set" in result.output
    assert (file_sha256(SHIPPED_CHECKPOINT) if SHIPPED_CHECKPOINT.exists() else None) == before
    usage = CliRunner().invoke(main, ["evaluate", "--ship"])
    assert usage.exit_code == 2 and "--ship needs --held-out and --checkpoint" in usage.output


def test_a_users_own_training_wins_and_a_shipped_file_serves_only_its_input_size(
    tiny_training: TrainResult, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shipped = tmp_path / "repo-models" / "densenet121-demo.pt"
    install_shipped_checkpoint(tiny_training.checkpoint_path, {}, None, shipped)
    monkeypatch.setattr("services.encoder.shipping.SHIPPED_CHECKPOINT", shipped)
    size = load_checkpoint(shipped).image_size
    settings = Settings(home=tmp_path / "home", image_size=size)
    assert default_checkpoint_path(settings) == shipped
    # Another input size: the shipped file does not apply; the demo would train one.
    other = Settings(home=tmp_path / "home", image_size=size * 2)
    assert default_checkpoint_path(other) == other.models_dir / f"densenet121-{size * 2}px.pt"
    # A checkpoint the user trained at this size is used instead of the shipped one.
    trained = settings.models_dir / f"densenet121-{size}px.pt"
    trained.parent.mkdir(parents=True)
    trained.write_bytes(tiny_training.checkpoint_path.read_bytes())
    assert default_checkpoint_path(settings) == trained
