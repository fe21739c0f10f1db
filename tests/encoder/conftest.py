"""Encoder test fixtures: one real, tiny training run shared by the session."""

from __future__ import annotations

import pytest
from encoder_testkit import BUNDLED_DIR, TINY_TRAINING, bundled_subset

from services.encoder.training.config import TrainConfig
from services.encoder.training.loop import TrainResult, train_encoder


@pytest.fixture(scope="session")
def tiny_training(tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    """One real epoch on ~20 patients of the bundled set at 32 px: a genuine, small checkpoint."""
    folder = tmp_path_factory.mktemp("tiny-training")
    labels = bundled_subset(folder, patients=20)
    config = TrainConfig(
        labels_csv=labels,
        images_dir=BUNDLED_DIR / "images",
        output=folder / "encoder.pt",
        device="cpu",
        **TINY_TRAINING,
    )
    return train_encoder(config, progress=False, echo=lambda _: None)
