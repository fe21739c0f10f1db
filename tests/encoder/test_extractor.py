"""Image codes: (n, 1024) float32 unit rows, deterministic, the same for every file format."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from encoder_testkit import (
    BUNDLED_DIR,
    TWELVE_BIT_MAX,
    base_image,
    dicom_dataset,
    png_bytes,
)

from services.encoder.checkpoint import CheckpointError, load_checkpoint
from services.encoder.extractor import FEATURE_DIM, FeatureExtractor
from services.encoder.imaging import ReadLimits, read_image
from services.encoder.labels import FINDINGS_NIH
from services.encoder.training.loop import TrainResult
from tests.support import dicom_bytes

LIMITS = ReadLimits(max_file_bytes=10_000_000, max_image_pixels=10_000_000)


@pytest.fixture(scope="module")
def extractor(tiny_training: TrainResult) -> FeatureExtractor:
    return FeatureExtractor(tiny_training.checkpoint_path, device="cpu", batch_size=4).load()


@pytest.fixture(scope="module")
def bundled_images() -> list[np.ndarray]:
    paths = sorted((BUNDLED_DIR / "images").glob("*.png"))[:6]
    return [read_image(path, limits=LIMITS).pixels for path in paths]


def test_codes_are_float32_unit_rows(
    extractor: FeatureExtractor, bundled_images: list[np.ndarray]
) -> None:
    codes = extractor.embed(bundled_images)
    assert codes.shape == (6, FEATURE_DIM) == (6, 1024)
    assert codes.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(codes, axis=1), 1.0, atol=1e-5)
    # Different X-rays get different codes.
    similarity = codes @ codes.T
    assert (similarity[~np.eye(6, dtype=bool)] < 0.99999).all()


def test_same_image_gives_the_same_code(
    extractor: FeatureExtractor, bundled_images: list[np.ndarray]
) -> None:
    first = extractor.embed(bundled_images[:1])
    second = extractor.embed(bundled_images[:1])
    np.testing.assert_array_equal(first, second)
    # Batch composition and chunking (batch_size=4 splits 6 images) do not change a code.
    in_batch = extractor.embed(bundled_images)
    np.testing.assert_allclose(in_batch[0], first[0], atol=1e-5)


def test_any_input_size_is_resized(extractor: FeatureExtractor) -> None:
    rng = np.random.default_rng(0)
    images = [rng.random((300, 200)), rng.random((17, 90)).astype(np.float32), np.zeros((64, 64))]
    codes = extractor.embed(images)
    assert codes.shape == (3, 1024)
    np.testing.assert_allclose(np.linalg.norm(codes, axis=1), 1.0, atol=1e-5)


def test_embed_leaves_the_callers_arrays_alone(extractor: FeatureExtractor) -> None:
    # Already at the model's size (no resize) and outside [0, 1]: the worst case for aliasing.
    size = extractor.image_size
    pixels = np.linspace(-0.5, 1.5, size * size, dtype=np.float32).reshape(size, size)
    before = pixels.copy()
    extractor.embed([pixels])
    np.testing.assert_array_equal(pixels, before)


def test_every_format_gives_the_same_code(extractor: FeatureExtractor) -> None:
    base = base_image(64, 64)
    stored = np.round(base * TWELVE_BIT_MAX).astype(np.uint16)
    window = {"WindowCenter": 2048, "WindowWidth": 4096}
    files = {
        "png16": png_bytes(base, "I;16"),
        "rgba": png_bytes(base, "RGBA"),
        "mono2": dicom_bytes(dicom_dataset(stored, **window)),
        "mono1": dicom_bytes(
            dicom_dataset(TWELVE_BIT_MAX - stored, photometric="MONOCHROME1", **window)
        ),
    }
    names = {"png16": "a.png", "rgba": "b.png", "mono2": "c.dcm", "mono1": "d.dcm"}
    pixels = [read_image(data, names[key], limits=LIMITS).pixels for key, data in files.items()]
    codes = extractor.embed(pixels)
    similarity = codes @ codes.T
    assert similarity.min() > 0.9999, similarity
    # An inverted image is a different picture: the check above can fail.
    inverted = extractor.embed([1.0 - pixels[0]])
    assert float(inverted[0] @ codes[0]) < similarity.min()


def test_predict_returns_probabilities_per_finding(
    extractor: FeatureExtractor, bundled_images: list[np.ndarray]
) -> None:
    probabilities = extractor.predict(bundled_images)
    assert probabilities.shape == (6, len(FINDINGS_NIH)) and probabilities.dtype == np.float32
    assert ((probabilities > 0) & (probabilities < 1)).all()
    assert extractor.findings == FINDINGS_NIH
    codes, both = extractor.embed_and_predict(bundled_images)
    np.testing.assert_allclose(both, probabilities, atol=1e-6)
    np.testing.assert_allclose(codes, extractor.embed(bundled_images), atol=1e-6)


def test_embed_with_findings_gives_the_codes_and_calibrated_probabilities(
    extractor: FeatureExtractor, bundled_images: list[np.ndarray], tiny_training: TrainResult
) -> None:
    codes, calibrated = extractor.embed_with_findings(bundled_images)
    np.testing.assert_allclose(codes, extractor.embed(bundled_images), atol=1e-6)
    assert calibrated.shape == (6, len(FINDINGS_NIH)) and calibrated.dtype == np.float32
    checkpoint = load_checkpoint(tiny_training.checkpoint_path)
    assert checkpoint.training["loss_weights"], "the tiny training records its loss weights"
    raw = extractor.predict(bundled_images)
    np.testing.assert_allclose(calibrated, checkpoint.calibrated(raw), atol=1e-6)
    # Rare findings (positives weigh more than negatives) come out less likely than trained;
    # a finding without training positives (negative weight 0) keeps its output.
    positive = np.asarray(checkpoint.training["loss_weights"]["positive"])
    negative = np.asarray(checkpoint.training["loss_weights"]["negative"])
    rare = (positive > negative) & (negative > 0)
    np.testing.assert_array_equal(calibrated[:, negative == 0], raw[:, negative == 0])
    assert rare.any() and (calibrated[:, rare] < raw[:, rare]).all()


def test_model_version_is_stable_and_names_the_file(
    extractor: FeatureExtractor, tiny_training: TrainResult, tmp_path: Path
) -> None:
    assert re.fullmatch(r"densenet121-[0-9a-f]{12}", extractor.model_version)
    copy = tmp_path / "copy.pt"
    shutil.copy(tiny_training.checkpoint_path, copy)
    assert FeatureExtractor(copy).model_version == extractor.model_version
    copy.write_bytes(copy.read_bytes() + b"\0")
    assert FeatureExtractor(copy).model_version != extractor.model_version


def test_lifecycle_and_input_errors(tiny_training: TrainResult, tmp_path: Path) -> None:
    unloaded = FeatureExtractor(tiny_training.checkpoint_path, device="cpu")
    assert not unloaded.loaded
    with pytest.raises(RuntimeError, match=r"load\(\) must be called"):
        unloaded.embed([np.zeros((8, 8))])
    loaded = unloaded.load()
    assert loaded is unloaded and loaded.loaded
    assert loaded.embed([]).shape == (0, 1024)
    with pytest.raises(ValueError, match="image 1: expected a 2-D pixel array"):
        loaded.embed([np.zeros((8, 8)), np.zeros((8, 8, 3))])
    with pytest.raises(ValueError, match="precision"):
        FeatureExtractor(tiny_training.checkpoint_path, precision="int4")


def test_bad_checkpoints_are_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        FeatureExtractor(tmp_path / "absent.pt", device="cpu").load()
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a loadable checkpoint"):
        FeatureExtractor(garbage, device="cpu").load()
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, other)
    with pytest.raises(
        CheckpointError, match="not a medgraph-encoder/1 or medgraph-encoder/2 checkpoint"
    ):
        FeatureExtractor(other, device="cpu").load()
