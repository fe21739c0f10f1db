"""The label metric on the codes: its fit, its contract, the checkpoint and the extractor."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from encoder_testkit import BUNDLED_DIR, TINY_TRAINING, bundled_subset
from torch.nn import functional

from services.encoder.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from services.encoder.code_metric import CodeMetric, CodeMetricError, fit_code_metric
from services.encoder.extractor import FeatureExtractor
from services.encoder.network import build_densenet121, pooled_features
from services.encoder.preprocessing import prepare_batch
from services.encoder.training.config import RECIPES, TrainConfig, TrainingError
from services.encoder.training.loop import TrainResult, train_encoder


def _unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def _codes_with_a_faint_label_direction(images: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit codes whose label shows along one low-variance direction, drowned by 15 loud ones."""
    rng = np.random.default_rng(seed)
    labels = rng.random(images) < 0.5
    codes = rng.normal(0.0, 1.0, (images, 16)) * np.r_[[0.3], np.full(15, 1.0)]
    codes[:, 0] += np.where(labels, 0.5, -0.5)
    codes += 10.0  # one orthant, like pooled ReLU features
    return _unit(codes), np.stack([labels, ~labels], axis=1)


def _nearest_neighbour_agreement(codes: np.ndarray, labels: np.ndarray) -> float:
    similarity = codes @ codes.T
    np.fill_diagonal(similarity, -np.inf)
    nearest = similarity.argmax(axis=1)
    return float((labels[nearest, 0] == labels[:, 0]).mean())


def test_the_metric_brings_same_label_codes_together_on_unseen_codes() -> None:
    train_codes, train_labels = _codes_with_a_faint_label_direction(600, seed=0)
    metric = fit_code_metric(train_codes, train_labels, share=0.8)
    codes, labels = _codes_with_a_faint_label_direction(300, seed=1)
    mapped = metric.apply(torch.from_numpy(codes)).numpy()
    before = _nearest_neighbour_agreement(codes, labels)
    after = _nearest_neighbour_agreement(mapped, labels)
    assert before < 0.65 and after > 0.8
    assert mapped.shape == codes.shape and mapped.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(mapped, axis=1), 1.0, atol=1e-5)


def test_the_label_part_takes_its_share_of_the_training_codes_length() -> None:
    codes, labels = _codes_with_a_faint_label_direction(400, seed=2)
    for share in (0.5, 0.9):
        metric = fit_code_metric(codes, labels, share=share)
        centred = codes.astype(np.float64) - metric.mean.numpy()
        root = metric.root.numpy().astype(np.float64)
        np.testing.assert_allclose(root, root.T, atol=1e-6)
        # |x M^½|² = |x|² + s²|x B|², and s² makes the second part `share` of the whole.
        mapped = ((centred @ root) ** 2).sum(axis=1).mean()
        plain = (centred**2).sum(axis=1).mean()
        assert mapped == pytest.approx(plain / (1 - share), rel=1e-3)
        np.testing.assert_allclose(metric.mean.numpy(), codes.mean(axis=0), atol=1e-6)


def test_a_metric_that_cannot_be_fit_says_why() -> None:
    codes, labels = _codes_with_a_faint_label_direction(50, seed=3)
    with pytest.raises(CodeMetricError, match="share must be in"):
        fit_code_metric(codes, labels, share=1.0)
    with pytest.raises(CodeMetricError, match="do not vary"):
        fit_code_metric(codes, np.ones_like(labels), share=0.8)
    with pytest.raises(CodeMetricError, match="need \\(n, d\\) codes"):
        fit_code_metric(codes, labels[:10], share=0.8)


def test_training_with_a_label_metric_keeps_it_and_the_extractor_applies_it(
    tmp_path: Path,
) -> None:
    labels = bundled_subset(tmp_path / "data", patients=14)
    config = TrainConfig(
        labels_csv=labels, images_dir=BUNDLED_DIR / "images", output=tmp_path / "m.pt",
        device="cpu", code_batchnorm=True, unit_code_scale=12.0, label_metric=0.8,
        **(TINY_TRAINING | {"epochs": 1, "batch_size": 4}),
    )  # fmt: skip
    lines: list[str] = []
    path = train_encoder(config, progress=False, echo=lines.append).checkpoint_path
    kept = load_checkpoint(path)
    assert kept.code_metric is not None and kept.code_metric.share == 0.8
    assert kept.training["label_metric"] == 0.8 and "label metric" in kept.training["code"]
    assert any(line.startswith("label metric fit on the") for line in lines)
    assert RECIPES["paper"]["label_metric"] == 0 and RECIPES["retrieval"]["label_metric"] == 0.8

    pixels = [np.random.default_rng(seed).random((40, 40), dtype=np.float32) for seed in (1, 2)]
    codes = FeatureExtractor(path, "cpu").load().embed(pixels)
    network = build_densenet121(14, unit_code_scale=12.0, code_batchnorm=True)
    network.load_state_dict(kept.state_dict)
    network.eval()
    with torch.inference_mode():
        batch = prepare_batch(pixels, kept.image_size, kept.normalisation, torch.device("cpu"))
        unit = functional.normalize(pooled_features(network, batch), dim=1)
        expected = kept.code_metric.apply(unit).numpy()
    np.testing.assert_allclose(codes, expected, atol=1e-5)
    assert not np.allclose(codes, unit.numpy(), atol=1e-3)


def test_the_checkpoint_keeps_the_metric_and_refuses_a_broken_one(
    tmp_path: Path, tiny_training: TrainResult
) -> None:
    codes, labels = _codes_with_a_faint_label_direction(80, seed=4)
    metric = fit_code_metric(codes, labels, share=0.7)
    base = load_checkpoint(tiny_training.checkpoint_path)
    kept = load_checkpoint(save_checkpoint(tmp_path / "with.pt", replace(base, code_metric=metric)))
    assert kept.code_metric is not None and kept.code_metric.share == 0.7
    assert torch.equal(kept.code_metric.root, metric.root)
    broken = CodeMetric(metric.mean, metric.root[:3], 0.7, 0.1)
    save_checkpoint(tmp_path / "broken.pt", replace(base, code_metric=broken))
    with pytest.raises(CheckpointError, match="broken.pt: unusable label metric"):
        load_checkpoint(tmp_path / "broken.pt")


def test_a_label_metric_share_outside_its_range_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="label_metric is a share"):
        TrainConfig(labels_csv=tmp_path / "x.csv", output=tmp_path / "m.pt", label_metric=1.0)
