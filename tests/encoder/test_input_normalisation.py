"""Input equalisation and the acquisition-robust augmentation (issue 28).

Equalisation exists so that how an archive processed its films (window, gamma, look-up table)
cannot reach the code: these tests hold it to that, from the function up to the extractor.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from encoder_testkit import BUNDLED_DIR, TINY_TRAINING, bundled_subset

from services.encoder.checkpoint import load_checkpoint, save_checkpoint
from services.encoder.extractor import FeatureExtractor
from services.encoder.preprocessing import Normalisation, XrayAugmentation, equalise_histograms
from services.encoder.training.config import TrainConfig
from services.encoder.training.loop import TrainResult, train_encoder


def few_level_image(levels: int = 12, size: int = 48) -> np.ndarray:
    """An image of a few well separated grey levels, so a gamma change keeps every level apart
    (equalisation then has exactly the same histogram to work on)."""
    rows, columns = np.mgrid[0:size, 0:size]
    band = ((rows + 2 * columns) * levels // (3 * size)).clip(0, levels - 1)
    return (0.1 + 0.8 * band / (levels - 1)).astype(np.float64)


def test_a_flat_image_maps_to_the_middle() -> None:
    flat = torch.full((2, 1, 8, 8), 0.3)
    assert torch.allclose(equalise_histograms(flat), torch.full_like(flat, 0.5))


def test_equalised_images_spread_over_the_range_whatever_their_tone() -> None:
    dark = torch.rand(4, 1, 64, 64) ** 4  # most pixels near black
    equalised = equalise_histograms(dark)
    assert equalised.shape == dark.shape
    assert float(equalised.min()) >= 0.0 and float(equalised.max()) <= 1.0
    assert abs(float(equalised.mean()) - 0.5) < 0.02
    assert abs(float(equalised.std()) - 12**-0.5) < 0.02  # a uniform distribution's


def test_equalisation_undoes_any_monotone_change_of_tone() -> None:
    image = torch.as_tensor(few_level_image(), dtype=torch.float32)[None, None]
    for changed in (image**0.6, image**1.8, 0.2 + 0.5 * image, torch.sqrt(image) * 0.9):
        assert torch.equal(equalise_histograms(changed), equalise_histograms(image))
    # It is not a no-op: the raw image itself is not equalised.
    assert not torch.allclose(equalise_histograms(image), image)


def test_normalisation_equalises_only_when_asked() -> None:
    image = torch.as_tensor(few_level_image(), dtype=torch.float32)[None, None]
    plain, equalising = Normalisation(0.5, 0.25), Normalisation(0.5, 0.25, equalise=True)
    assert torch.equal(plain.apply(image), (image - 0.5) / 0.25)
    assert torch.equal(equalising.apply(image**2), equalising.apply(image))


def test_robust_augmentation_keeps_shape_and_range_and_changes_sharpness() -> None:
    torch.manual_seed(0)
    augmentation = XrayAugmentation("robust")
    assert "resampled" in augmentation.description and "blur" in augmentation.description
    torch.manual_seed(1)
    image = torch.rand(1, 64, 64)  # fine texture, which resampling and blur must soften
    outputs = [augmentation(image.clone()) for _ in range(40)]
    assert all(out.shape == image.shape for out in outputs)
    assert all(float(out.min()) >= 0.0 and float(out.max()) <= 1.0 for out in outputs)

    def sharpness(tensor: torch.Tensor) -> float:
        return float(tensor.diff(dim=-1).abs().mean())

    # Resampling and blur lower the sharpness of some outputs well below the strong level's.
    torch.manual_seed(0)
    strong = XrayAugmentation("strong")
    strong_sharpness = min(sharpness(strong(image.clone())) for _ in range(40))
    assert min(sharpness(out) for out in outputs) < 0.8 * strong_sharpness


@pytest.fixture(scope="module")
def equalising_checkpoint(tiny_training: TrainResult, tmp_path_factory: pytest.TempPathFactory):
    """The tiny checkpoint with equalisation switched on (the weights do not matter here)."""
    checkpoint = load_checkpoint(tiny_training.checkpoint_path)
    equalising = dataclasses.replace(
        checkpoint, normalisation=dataclasses.replace(checkpoint.normalisation, equalise=True)
    )
    return save_checkpoint(tmp_path_factory.mktemp("equalising") / "encoder.pt", equalising)


def test_checkpoints_keep_the_flag_and_old_ones_read_as_plain(
    tiny_training: TrainResult, equalising_checkpoint: Path
) -> None:
    assert load_checkpoint(equalising_checkpoint).normalisation.equalise is True
    payload = torch.load(tiny_training.checkpoint_path, weights_only=True)
    payload["normalisation"].pop("equalise", None)  # as written before the flag existed
    old = tiny_training.checkpoint_path.with_name("old-format.pt")
    torch.save(payload, old)
    assert load_checkpoint(old).normalisation.equalise is False


def test_the_extractor_gives_one_code_whatever_the_tone(
    tiny_training: TrainResult, equalising_checkpoint: Path
) -> None:
    image = few_level_image(size=TINY_TRAINING["image_size"])
    toned = image**1.7
    equalising = FeatureExtractor(equalising_checkpoint, device="cpu").load()
    codes = equalising.embed([image, toned])
    np.testing.assert_allclose(codes[0], codes[1], atol=1e-5)
    plain = FeatureExtractor(tiny_training.checkpoint_path, device="cpu").load()
    plain_codes = plain.embed([image, toned])
    assert not np.allclose(plain_codes[0], plain_codes[1], atol=1e-3)


def test_training_with_equalisation_records_it(tmp_path: Path) -> None:
    config = TrainConfig(
        labels_csv=bundled_subset(tmp_path, patients=12),
        images_dir=BUNDLED_DIR / "images",
        output=tmp_path / "encoder.pt",
        device="cpu",
        equalise=True,
        augmentation="robust",
        **TINY_TRAINING,
    )
    result = train_encoder(config, progress=False, echo=lambda _: None)
    checkpoint = load_checkpoint(result.checkpoint_path)
    # Statistics of equalised images: a uniform distribution's mean and spread.
    assert checkpoint.normalisation.equalise is True
    assert abs(checkpoint.normalisation.mean - 0.5) < 0.05
    assert abs(checkpoint.normalisation.std - 12**-0.5) < 0.05
    assert checkpoint.training["equalise"] is True
    assert "resampled" in checkpoint.training["augmentation"]
