"""`medgraph train` and `medgraph embed` through the real CLI group."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from click.testing import CliRunner
from encoder_testkit import BUNDLED_DIR, bundled_subset

from services.cli import main
from services.encoder.checkpoint import load_checkpoint
from services.encoder.labels import FINDINGS_NIH
from services.encoder.training.loop import TrainResult


def test_train_command_reports_auroc_per_finding_and_the_mean(tmp_path: Path) -> None:
    labels = bundled_subset(tmp_path / "data", patients=12)
    output = tmp_path / "model.pt"
    result = CliRunner().invoke(
        main,
        [
            "train", "--labels", str(labels), "--images", str(BUNDLED_DIR / "images"),
            "--epochs", "1", "--image-size", "32", "--batch-size", "8", "--seed", "5",
            "--device", "cpu", "--output", str(output), "--no-progress",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "epoch 1/1: train loss" in result.output
    for finding in FINDINGS_NIH:
        assert finding in result.output
    assert "mean validation AUROC: " in result.output
    checkpoint = load_checkpoint(output)
    assert checkpoint.training["seed"] == 5 and checkpoint.image_size == 32
    mean = checkpoint.metrics["val_mean_auroc"]
    assert f"mean validation AUROC: {mean:.3f}" in result.output


def test_train_command_shows_label_errors_without_a_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "labels.csv"
    bad.write_text("Image Index,Finding Labels,Patient ID\nmissing.png,Mass,1\n")
    result = CliRunner().invoke(main, ["train", "--labels", str(bad), "--no-progress"])
    assert result.exit_code == 1
    assert f"Error: {bad}: 1 rows point to missing image files" in result.output
    assert "Traceback" not in result.output


def test_embed_command_writes_codes_and_reports_bad_files(
    tiny_training: TrainResult, tmp_path: Path
) -> None:
    images = sorted((BUNDLED_DIR / "images").glob("*.png"))[:2]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 10)
    output = tmp_path / "codes.npy"
    result = CliRunner().invoke(
        main,
        [
            "embed", *map(str, images), str(broken),
            "--checkpoint", str(tiny_training.checkpoint_path), "--output", str(output),
            "--device", "cpu",
        ],
    )  # fmt: skip
    assert result.exit_code == 1  # one file could not be read
    assert f"error: {broken}: corrupt PNG header" in result.output
    assert str(images[0]) in result.output and str(images[1]) in result.output
    codes = np.load(output)
    assert codes.shape == (2, 1024) and codes.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(codes, axis=1), 1.0, atol=1e-5)


def test_embed_command_without_a_checkpoint_says_how_to_get_one(tmp_path: Path) -> None:
    image = next((BUNDLED_DIR / "images").glob("*.png"))
    result = CliRunner().invoke(
        main, ["embed", str(image), "--checkpoint", str(tmp_path / "none.pt")]
    )
    assert result.exit_code == 1
    assert "the checkpoint file does not exist (train one with `medgraph train`)" in result.output
