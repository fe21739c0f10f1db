"""Averaged checkpoints: several networks of one split in one file, codes averaged."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from services.cli import main
from services.encoder.averaging import average_checkpoints
from services.encoder.checkpoint import (
    AVERAGED_FORMAT,
    CHECKPOINT_FORMAT,
    CheckpointError,
    file_sha256,
    load_checkpoint,
    save_checkpoint,
)
from services.encoder.extractor import FeatureExtractor
from services.encoder.shipping import install_shipped_checkpoint, write_half_precision
from services.encoder.training.loop import TrainResult


def _images() -> list[np.ndarray]:
    return [np.random.default_rng(seed).random((48, 40), dtype=np.float32) for seed in range(5)]


@pytest.fixture(scope="module")
def second_network(tiny_training: TrainResult, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny checkpoint with its weights moved (batch-norm variances left, so they stay
    positive): another network of the same split."""
    checkpoint = load_checkpoint(tiny_training.checkpoint_path)
    generator = torch.Generator().manual_seed(7)
    moved = {
        name: tensor + 0.05 * tensor.std().nan_to_num() * torch.randn(
            tensor.shape, generator=generator
        ) if tensor.is_floating_point() and tensor.numel() > 1 and "running_var" not in name
        else tensor
        for name, tensor in checkpoint.state_dict.items()
    }  # fmt: skip
    other = replace(checkpoint, state_dict=moved, training=checkpoint.training | {"seed": 99})
    return save_checkpoint(tmp_path_factory.mktemp("second") / "seed99.pt", other)


@pytest.fixture(scope="module")
def averaged(
    tiny_training: TrainResult, second_network: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    output = tmp_path_factory.mktemp("averaged") / "averaged.pt"
    result = CliRunner().invoke(
        main,
        ["average-encoders", str(tiny_training.checkpoint_path), str(second_network),
         "--output", str(output)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "mean of 2 networks" in result.output
    return output


def test_codes_and_findings_are_the_mean_of_the_networks(
    tiny_training: TrainResult, second_network: Path, averaged: Path
) -> None:
    images = _images()
    first = FeatureExtractor(tiny_training.checkpoint_path, device="cpu").load()
    second = FeatureExtractor(second_network, device="cpu").load()
    both = FeatureExtractor(averaged, device="cpu", batch_size=2).load()
    assert (first.network_count, both.network_count) == (1, 2)
    codes_1, found_1 = first.embed_and_predict(images)
    codes_2, found_2 = second.embed_and_predict(images)
    codes, found = both.embed_and_predict(images)
    # The two networks really differ, so an average is not one of them.
    assert np.abs(codes_1 - codes_2).max() > 1e-3
    expected = (codes_1 + codes_2) / np.linalg.norm(codes_1 + codes_2, axis=1, keepdims=True)
    np.testing.assert_allclose(codes, expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(codes, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(found, (found_1 + found_2) / 2, atol=1e-6)
    assert both.model_version != first.model_version


def test_the_file_records_every_network_and_where_it_came_from(
    tiny_training: TrainResult, second_network: Path, averaged: Path
) -> None:
    payload = torch.load(averaged, map_location="cpu", weights_only=True)
    assert payload["format"] == AVERAGED_FORMAT and len(payload["members"]) == 1
    checkpoint = load_checkpoint(averaged)
    sources = [network.training["averaged_from"] for network in checkpoint.networks]
    assert sources == [
        {"file": tiny_training.checkpoint_path.name,
         "sha256": file_sha256(tiny_training.checkpoint_path)},
        {"file": second_network.name, "sha256": file_sha256(second_network)},
    ]  # fmt: skip
    assert [network.training["seed"] for network in checkpoint.networks][1] == 99
    # A single network keeps format 1, which older readers accept.
    single = torch.load(tiny_training.checkpoint_path, map_location="cpu", weights_only=True)
    assert single["format"] == CHECKPOINT_FORMAT and "members" not in single
    # Averaging an averaged file flattens it.
    assert len(average_checkpoints([averaged, tiny_training.checkpoint_path]).networks) == 3


def test_networks_that_do_not_share_input_or_split_are_refused(
    tiny_training: TrainResult, tmp_path: Path
) -> None:
    checkpoint = load_checkpoint(tiny_training.checkpoint_path)
    split = checkpoint.training["split"]
    other_split = replace(checkpoint, training=checkpoint.training | {
        "split": split | {"val_image_sha256": split["val_image_sha256"][1:]},
    })  # fmt: skip
    bigger = replace(checkpoint, image_size=checkpoint.image_size * 2)
    cases = {
        "validation images": save_checkpoint(tmp_path / "split.pt", other_split),
        "input size": save_checkpoint(tmp_path / "size.pt", bigger),
    }
    for what, path in cases.items():
        with pytest.raises(CheckpointError, match=f"{path.name}.*differs.*{what}"):
            average_checkpoints([tiny_training.checkpoint_path, path])
    with pytest.raises(CheckpointError, match="already among"):
        average_checkpoints([tiny_training.checkpoint_path, tiny_training.checkpoint_path])
    result = CliRunner().invoke(
        main, ["average-encoders", str(tiny_training.checkpoint_path), str(cases["input size"]),
               "--output", str(tmp_path / "out.pt")],
    )  # fmt: skip
    assert result.exit_code != 0 and "input size" in result.output
    assert not (tmp_path / "out.pt").exists()


def test_damaged_members_are_refused(averaged: Path, tmp_path: Path) -> None:
    payload = torch.load(averaged, map_location="cpu", weights_only=True)
    payload["members"] = [{"training": {}}]
    torch.save(payload, tmp_path / "damaged.pt")
    with pytest.raises(CheckpointError, match="members"):
        load_checkpoint(tmp_path / "damaged.pt")


def test_the_fp16_copy_and_the_record_keep_every_network(averaged: Path, tmp_path: Path) -> None:
    half = write_half_precision(averaged, tmp_path / "half.pt")
    kept = load_checkpoint(half)
    assert len(kept.networks) == 2
    for network in kept.networks:
        floats = [tensor for tensor in network.state_dict.values() if tensor.is_floating_point()]
        assert floats and all(tensor.dtype == torch.float16 for tensor in floats)
    images = _images()
    full = FeatureExtractor(averaged, device="cpu").load().embed(images)
    halved = FeatureExtractor(half, device="cpu").load().embed(images)
    assert np.sum(full * halved, axis=1).min() > 0.999
    shipped = install_shipped_checkpoint(half, {}, None, tmp_path / "shipped" / "demo.pt")
    record = json.loads(shipped.record.read_text())
    assert [network["training"]["seed"] for network in record["networks"]][1] == 99
    assert all(network["averaged_from"]["sha256"] for network in record["networks"])
    # No single network's figures at the top of an averaged record, where they would read as
    # the average's.
    assert "val_mean_auroc" not in record and "training" not in record
