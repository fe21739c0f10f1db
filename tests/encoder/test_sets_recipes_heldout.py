"""Both bundled sets, the training recipes and `evaluate --held-out`."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from encoder_testkit import BUNDLED_DIR, TINY_TRAINING, bundled_subset, write_labels
from torch.nn import functional

from services.cli import main
from services.config import REPO_ROOT, Settings
from services.demo import demo_plan
from services.encoder.checkpoint import file_sha256, load_checkpoint, save_checkpoint
from services.encoder.extractor import FeatureExtractor
from services.encoder.labels import (
    LabelFileError,
    bundled_label_files,
    query_label_files,
    read_label_sets,
)
from services.encoder.network import (
    CodeNeckHead,
    UnitCodeLinear,
    build_densenet121,
    classify,
    pooled_features,
)
from services.encoder.preprocessing import prepare_batch
from services.encoder.training.best_epoch import WeightAverage
from services.encoder.training.config import RECIPES, TrainConfig, TrainingError
from services.encoder.training.loop import TrainResult, train_encoder
from services.encoder.training.losses import label_set_contrast, with_no_finding
from services.encoder.training.schedules import COSINE_FLOOR, CosineSchedule, InputSizes
from services.encoder.training.split import patient_disjoint_split

EXTRA_DIR = REPO_ROOT / "data" / "nih-cxr14-extra-128px"
SHARED_PATIENT = "211"


def _rows(labels: Path) -> list[dict[str, str]]:
    with labels.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_the_repository_bundles_both_sets_with_their_attribution() -> None:
    files = bundled_label_files(REPO_ROOT / "data")
    assert [path.parent.name for path in files] == ["nih-cxr14-64px", "nih-cxr14-extra-128px"]
    table = read_label_sets(files)
    assert len(table.records) == 2173
    assert {record.source for record in table.records} == {path.parent.name for path in files}
    for path in files:
        readme = (path.parent / "README.md").read_text()
        assert "Licence and attribution" in readme and "ChestX-ray8" in readme
    # One folder that is itself a set stays one set.
    assert bundled_label_files(BUNDLED_DIR) == [BUNDLED_DIR / "labels.csv"]


def test_a_folder_without_label_files_is_refused(tmp_path: Path) -> None:
    with pytest.raises(LabelFileError, match="no labels.csv"):
        bundled_label_files(tmp_path)


def test_a_patient_in_both_sets_stays_on_one_side_of_the_split(tmp_path: Path) -> None:
    sources = []
    for folder in (BUNDLED_DIR, EXTRA_DIR):
        rows = _rows(folder / "labels.csv")
        patients = sorted({row["Patient ID"] for row in rows} - {SHARED_PATIENT}, key=int)[:15]
        kept = [row for row in rows if row["Patient ID"] in {*patients, SHARED_PATIENT}]
        target = tmp_path / folder.name
        target.mkdir()
        (target / "images").symlink_to(folder / "images")
        header = list(rows[0])
        sources.append(
            write_labels(target / "labels.csv", header, [[r[h] for h in header] for r in kept])
        )
    table = read_label_sets(sources)
    shared = [i for i, r in enumerate(table.records) if r.patient_id == SHARED_PATIENT]
    assert {table.records[i].source for i in shared} == {BUNDLED_DIR.name, EXTRA_DIR.name}
    for seed in range(5):
        split = patient_disjoint_split(table, 0.3, seed)
        sides = {i in set(split.val.tolist()) for i in shared}
        assert len(sides) == 1, "the shared patient's images were split across train and val"


def test_sets_with_different_findings_are_refused(tmp_path: Path) -> None:
    chexpert = tmp_path / "chexpert.csv"
    chexpert.write_text("Path,Sex\nx.png,F\n")
    with pytest.raises(LabelFileError):
        read_label_sets([BUNDLED_DIR / "labels.csv", chexpert])


def test_the_demo_plans_every_bundled_image(tmp_path: Path) -> None:
    plan = demo_plan(Settings(home=tmp_path / "home"))
    assert len(plan.entries) == plan.labelled == 2173
    assert all(entry["patient_key"] and len(entry["patient_key"]) == 64 for entry in plan.entries)


def test_recipes_from_settings_and_overrides(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, encoder_device="cpu")
    tuned = TrainConfig.from_settings(settings, recipe="regularised")
    assert tuned.recipe == "regularised" and tuned.schedule == "cosine" and tuned.weight_decay > 0
    assert tuned.augmentation == "strong" and tuned.epochs == RECIPES["regularised"]["epochs"]
    default = TrainConfig.from_settings(settings)
    assert default.recipe == "retrieval" and default.schedule == "plateau"
    assert (default.code_batchnorm, default.unit_code_scale, default.label_metric) == (
        True,
        12.0,
        0.8,
    )
    assert [path.parent.name for path in tuned.label_files] == [
        "nih-cxr14-64px",
        "nih-cxr14-extra-128px",
    ]
    paper = TrainConfig.from_settings(settings, recipe="paper", epochs=3)
    assert (paper.schedule, paper.weight_decay, paper.augmentation) == ("plateau", 0.0, "light")
    assert paper.epochs == 3 and paper.label_metric == 0 and not paper.code_batchnorm
    with pytest.raises(TrainingError, match="unknown recipe"):
        TrainConfig.from_settings(settings, recipe="magic")
    with pytest.raises(TrainingError, match="schedule must be one of"):
        TrainConfig.from_settings(settings, schedule="step")


def test_cosine_schedule_warms_up_decays_and_replans_to_the_time_limit(tmp_path: Path) -> None:
    config = TrainConfig(
        labels_csv=tmp_path / "x.csv", output=tmp_path / "x.pt", epochs=10,
        learning_rate=1.0, schedule="cosine", warmup_epochs=1, time_limit_s=100.0,
    )  # fmt: skip
    schedule = CosineSchedule(config, steps_per_epoch=4)
    rates = []
    for _ in range(40):
        rates.append(schedule.rate())
        schedule.step()
    assert rates[0] == pytest.approx(0.01) and rates[4] == pytest.approx(1.0)
    assert all(a <= b for a, b in zip(rates[:4], rates[1:5], strict=True)), "warm-up rises"
    assert all(a >= b for a, b in zip(rates[4:-1], rates[5:], strict=True)), "then decays"
    assert rates[-1] == pytest.approx(COSINE_FLOOR, abs=0.02)
    # Epochs of 20 s with 30 s already spent: 3 more fit the 100 s limit, not 9.
    fresh = CosineSchedule(config, steps_per_epoch=4)
    fresh.replan(epochs_done=1, epoch_seconds=[20.0], elapsed=30.0)
    assert fresh.planned_epochs == 4


def test_the_weight_average_follows_the_network_by_its_decay() -> None:
    network = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    average = WeightAverage(network, decay=0.75)
    start = network[0].weight.detach().clone()
    with torch.no_grad():
        network[0].weight.add_(4.0)
        network[1].running_mean.fill_(8.0)
        network[1].num_batches_tracked.fill_(5)
    average.update(network)
    # One step of decay 0.75 moves a quarter of the way; integer counters are copied.
    assert torch.allclose(average.model[0].weight, start + 1.0)
    assert torch.allclose(average.model[1].running_mean, torch.full((2,), 2.0))
    assert int(average.model[1].num_batches_tracked) == 5
    assert not any(p.requires_grad for p in average.model.parameters())
    with pytest.raises(TrainingError, match="weight_averaging"):
        TrainConfig(labels_csv=Path("x.csv"), output=Path("x.pt"), weight_averaging=1.0)


def test_training_with_weight_averaging_keeps_and_records_the_average(tmp_path: Path) -> None:
    labels = bundled_subset(tmp_path / "data", patients=14)
    common = dict(labels_csv=labels, images_dir=BUNDLED_DIR / "images", device="cpu",
                  **(TINY_TRAINING | {"epochs": 2, "batch_size": 4}))  # fmt: skip
    plain = train_encoder(TrainConfig(output=tmp_path / "plain.pt", **common), progress=False,
                          echo=lambda line: None)  # fmt: skip
    averaged = train_encoder(
        TrainConfig(output=tmp_path / "ema.pt", weight_averaging=0.9, **common),
        progress=False, echo=lambda line: None,
    )  # fmt: skip
    kept = load_checkpoint(averaged.checkpoint_path)
    assert "moving average, decay 0.9" in kept.training["weights_kept"]
    assert "own weights" in load_checkpoint(plain.checkpoint_path).training["weights_kept"]
    # Same seed, same batches: only the kept weights differ.
    plain_weights = load_checkpoint(plain.checkpoint_path).state_dict
    assert any(
        not np.allclose(plain_weights[name].numpy(), value.numpy())
        for name, value in kept.state_dict.items()
        if value.is_floating_point()
    )


def test_progressive_resizing_switches_by_epoch_count_or_earlier_to_fit_the_time_limit(
    tmp_path: Path,
) -> None:
    common = dict(labels_csv=tmp_path / "x.csv", output=tmp_path / "x.pt", epochs=10,
                  image_size=64, final_image_size=128, final_epochs=3)  # fmt: skip
    untimed = InputSizes(TrainConfig(**common))
    switched = [untimed.switch_now(epoch, [10.0] * (epoch - 1), 0.0) for epoch in range(1, 11)]
    assert switched == [False] * 7 + [True, False, False] and untimed.current == 128
    # 10-s epochs at 64 px, so 40-s epochs at 128: with 200 s spent, one more small epoch and
    # three large ones (130 s) no longer fit a 300-s limit, so epoch 5 already runs at 128 px.
    timed = InputSizes(TrainConfig(**common, time_limit_s=300.0))
    for epoch in range(1, 5):
        assert not timed.switch_now(epoch, [10.0] * (epoch - 1), 10.0 * (epoch - 1))
        timed.record()
    assert timed.next_epoch_cost_ratio() == pytest.approx(4.0)
    assert timed.seconds_left(10, 5, [10.0] * 4, None) == pytest.approx(3 * 10 + 3 * 40)
    assert timed.switch_now(5, [10.0] * 4, 200.0) and timed.switched_at == 5
    assert timed.next_epoch_cost_ratio() == 1.0
    with pytest.raises(TrainingError, match="final_image_size must exceed"):
        TrainConfig(**(common | {"final_image_size": 64}))
    with pytest.raises(TrainingError, match="final_epochs must be in"):
        TrainConfig(**(common | {"final_epochs": 10}))
    assert InputSizes(TrainConfig(**(common | {"final_epochs": 0}))).switch_now(9, [], 0) is False


def test_training_with_progressive_resizing_ends_at_the_final_size(tmp_path: Path) -> None:
    labels = bundled_subset(tmp_path / "data", patients=14)
    lines: list[str] = []
    config = TrainConfig(
        labels_csv=labels, images_dir=BUNDLED_DIR / "images", output=tmp_path / "m.pt",
        device="cpu", final_image_size=48, final_epochs=1,
        **(TINY_TRAINING | {"epochs": 3, "batch_size": 4, "learning_rate": 1e-3}),
    )  # fmt: skip
    result = train_encoder(config, progress=False, echo=lines.append)
    kept = load_checkpoint(result.checkpoint_path)
    history = kept.metrics["history"]
    assert [entry["image_size"] for entry in history] == [32, 32, 48]
    assert kept.metrics["final_image_size_from_epoch"] == 3
    # The switch cuts the plateau schedule's rate by 10, as the plateau rule would.
    assert history[1]["learning_rate"] == pytest.approx(1e-3)
    assert history[2]["learning_rate"] == pytest.approx(1e-4)
    assert any(line.startswith("epoch 3: 48 px from here on") for line in lines)
    # The checkpoint's input size is that of the epoch it kept.
    assert kept.image_size == history[kept.metrics["selected_epoch"] - 1]["image_size"]
    assert kept.training["final_image_size"] == 48 and kept.training["final_epochs"] == 1


def test_the_no_finding_target_is_known_only_when_every_finding_is() -> None:
    nan = math.nan
    targets = torch.tensor(
        [[0.0, 0.0, 0.0], [1.0, 0.0, nan], [0.0, nan, 0.0], [nan, 1.0, nan], [nan, nan, nan]]
    )
    extended = with_no_finding(targets)
    assert extended.shape == (5, 4) and torch.equal(extended[:, :3].nan_to_num(-1),
                                                    targets.nan_to_num(-1))  # fmt: skip
    # all negative -> 1; any positive -> 0 (even beside uncertain ones); otherwise unknown.
    assert extended[:2, 3].tolist() == [1.0, 0.0] and extended[3, 3].item() == 0.0
    assert torch.isnan(extended[2, 3]) and torch.isnan(extended[4, 3])


def test_a_no_finding_output_is_trained_but_the_checkpoint_keeps_the_findings(
    tmp_path: Path,
) -> None:
    labels = bundled_subset(tmp_path / "data", patients=14)
    common = dict(labels_csv=labels, images_dir=BUNDLED_DIR / "images", device="cpu",
                  **(TINY_TRAINING | {"epochs": 1, "batch_size": 4}))  # fmt: skip
    plain = train_encoder(TrainConfig(output=tmp_path / "plain.pt", **common), progress=False,
                          echo=lambda line: None)  # fmt: skip
    extra = train_encoder(
        TrainConfig(output=tmp_path / "extra.pt", no_finding_output=True, **common),
        progress=False, echo=lambda line: None,
    )  # fmt: skip
    kept = load_checkpoint(extra.checkpoint_path)
    assert kept.state_dict["classifier.weight"].shape == (14, 1024)
    assert kept.state_dict["classifier.bias"].shape == (14,)
    assert len(kept.training["loss_weights"]["positive"]) == 15
    assert kept.training["no_finding_output"] is True and "No Finding" in kept.training["loss"]
    assert set(kept.metrics["val_auroc"]) == set(kept.findings) and len(kept.findings) == 14
    # Same seed and batches: the extra output's loss reached the features, not only its head.
    plain_weights = load_checkpoint(plain.checkpoint_path).state_dict
    assert not torch.equal(
        plain_weights["features.norm5.weight"], kept.state_dict["features.norm5.weight"]
    )
    extractor = FeatureExtractor(extra.checkpoint_path, "cpu").load()
    pixels = [np.random.default_rng(0).random((40, 40), dtype=np.float32)]
    codes, predicted = extractor.embed_and_predict(pixels)
    assert codes.shape == (1, 1024) and predicted.shape == (1, 14)
    assert RECIPES["paper"]["no_finding_output"] is False


def test_the_label_set_contrast_pulls_together_images_that_share_labels() -> None:
    nan = math.nan
    # Two normal films, one with finding 0, one with finding 0 and an uncertain finding 1.
    targets = torch.tensor([[0.0, 0.0], [0.0, 0.0], [1.0, 0.0], [1.0, nan]])
    grouped = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 1.0, 0.0]])
    mixed = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    assert label_set_contrast(grouped, targets).item() < 1e-3
    # Each anchor's only positive is orthogonal, its negative identical: cos 0 against 1, /0.1.
    assert label_set_contrast(mixed, targets).item() == pytest.approx(10.0, abs=1e-3)
    # Jaccard weights: [1, nan] shares half its labels with [1, 0], and the normal films none.
    images = torch.randn(4, 8, requires_grad=True)
    label_set_contrast(images, targets).backward()
    assert images.grad is not None and torch.isfinite(images.grad).all()
    # No image shares a label with a batch-mate: nothing to pull, a zero loss with a graph.
    alone = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    assert label_set_contrast(torch.randn(3, 8, requires_grad=True), alone).item() == 0.0
    with pytest.raises(TrainingError, match="label_contrast"):
        TrainConfig(labels_csv=Path("x.csv"), output=Path("x.pt"), label_contrast=-1.0)


def test_training_with_the_label_set_contrast_records_it(tmp_path: Path) -> None:
    labels = bundled_subset(tmp_path / "data", patients=14)
    config = TrainConfig(
        labels_csv=labels, images_dir=BUNDLED_DIR / "images", output=tmp_path / "m.pt",
        device="cpu", label_contrast=0.1, **(TINY_TRAINING | {"epochs": 1, "batch_size": 4}),
    )  # fmt: skip
    kept = load_checkpoint(
        train_encoder(config, progress=False, echo=lambda _: None).checkpoint_path
    )
    assert kept.training["label_contrast"] == 0.1
    assert "0.1 x label-set contrastive loss" in kept.training["loss"]
    assert RECIPES["paper"]["label_contrast"] == 0.0


def test_a_unit_code_head_reads_only_the_codes_direction() -> None:
    torch.manual_seed(0)
    plain = build_densenet121(14)
    torch.manual_seed(0)
    unit = build_densenet121(14, unit_code_scale=12.0)
    assert isinstance(unit.classifier, UnitCodeLinear) and unit.classifier.scale == 12.0
    assert torch.equal(plain.classifier.weight, unit.classifier.weight)  # same start
    codes = torch.rand(3, 1024) + 0.1
    assert torch.allclose(classify(unit, codes), classify(unit, 5.0 * codes), atol=1e-5)
    assert not torch.allclose(classify(plain, codes), classify(plain, 5.0 * codes), atol=1e-3)
    assert torch.allclose(
        classify(unit, codes), classify(plain, 12.0 * functional.normalize(codes, dim=1))
    )


def test_the_extractor_rebuilds_a_unit_code_head(tmp_path: Path) -> None:
    labels = bundled_subset(tmp_path / "data", patients=14)
    config = TrainConfig(
        labels_csv=labels, images_dir=BUNDLED_DIR / "images", output=tmp_path / "m.pt",
        device="cpu", unit_code_scale=12.0, **(TINY_TRAINING | {"epochs": 1, "batch_size": 4}),
    )  # fmt: skip
    path = train_encoder(config, progress=False, echo=lambda _: None).checkpoint_path
    kept = load_checkpoint(path)
    assert kept.training["unit_code_scale"] == 12.0 and RECIPES["paper"]["unit_code_scale"] == 0
    pixels = [np.random.default_rng(seed).random((40, 40), dtype=np.float32) for seed in (1, 2)]
    codes, predicted = FeatureExtractor(path, "cpu").load().embed_and_predict(pixels)
    # The same weights behind a plain head give other probabilities: the head was rebuilt.
    plain = build_densenet121(14)
    plain.load_state_dict(kept.state_dict)
    plain.eval()
    with torch.inference_mode():
        batch = prepare_batch(pixels, kept.image_size, kept.normalisation, torch.device("cpu"))
        features = pooled_features(plain, batch)
        by_plain_head = torch.sigmoid(classify(plain, features)).numpy()
        by_unit_head = torch.sigmoid(
            classify(plain, 12.0 * functional.normalize(features, dim=1))
        ).numpy()
    np.testing.assert_allclose(predicted, by_unit_head, atol=1e-4)
    assert not np.allclose(predicted, by_plain_head, atol=1e-3)


def _pooled_before_neck(model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """The last pooling layer's output, which a batch-norm neck then turns into the code."""
    return torch.flatten(
        functional.adaptive_avg_pool2d(functional.relu(model.features(batch)), 1), 1
    )


def test_a_code_neck_centres_the_code_the_classifier_and_retrieval_see() -> None:
    torch.manual_seed(0)
    necked = build_densenet121(14, unit_code_scale=12.0, code_batchnorm=True)
    assert isinstance(necked.classifier, CodeNeckHead)
    assert isinstance(necked.classifier.head, UnitCodeLinear)
    neck = necked.classifier.neck
    assert not neck.bias.requires_grad and torch.count_nonzero(neck.bias) == 0
    batch = torch.rand(6, 3, 32, 32)
    necked.train()
    codes = pooled_features(necked, batch)
    # In training the neck standardises each dimension over the batch: the codes are centred,
    # where pooled ReLU features are all positive.
    assert torch.allclose(codes.mean(0), torch.zeros(1024), atol=1e-4)
    assert (codes < 0).any()
    necked.eval()
    with torch.inference_mode():
        codes = pooled_features(necked, batch)
        raw = _pooled_before_neck(necked, batch)
        assert torch.allclose(codes, neck(raw), atol=1e-6)
        # The network's own forward pass and classify(pooled_features) agree.
        assert torch.allclose(necked(batch), classify(necked, codes), atol=1e-5)


def test_the_extractor_rebuilds_a_code_neck_and_a_no_finding_output_is_cut(
    tmp_path: Path,
) -> None:
    labels = bundled_subset(tmp_path / "data", patients=14)
    config = TrainConfig(
        labels_csv=labels, images_dir=BUNDLED_DIR / "images", output=tmp_path / "m.pt",
        device="cpu", code_batchnorm=True, no_finding_output=True,
        **(TINY_TRAINING | {"epochs": 1, "batch_size": 4}),
    )  # fmt: skip
    path = train_encoder(config, progress=False, echo=lambda _: None).checkpoint_path
    kept = load_checkpoint(path)
    assert kept.training["code_batchnorm"] is True and RECIPES["paper"]["code_batchnorm"] is False
    assert kept.state_dict["classifier.head.weight"].shape == (14, 1024)
    assert kept.state_dict["classifier.neck.weight"].shape == (1024,)  # not cut to the findings
    pixels = [np.random.default_rng(seed).random((40, 40), dtype=np.float32) for seed in (1, 2)]
    codes, _ = FeatureExtractor(path, "cpu").load().embed_and_predict(pixels)
    rebuilt = build_densenet121(14, code_batchnorm=True)
    rebuilt.load_state_dict(kept.state_dict)
    rebuilt.eval()
    with torch.inference_mode():
        batch = prepare_batch(pixels, kept.image_size, kept.normalisation, torch.device("cpu"))
        necked = functional.normalize(pooled_features(rebuilt, batch), dim=1).numpy()
        pooled = _pooled_before_neck(rebuilt, batch)
    np.testing.assert_allclose(codes, necked, atol=1e-5)
    assert not np.allclose(codes, functional.normalize(pooled, dim=1).numpy(), atol=1e-3)


def test_progress_lines_say_epoch_loss_auroc_and_time_left(tmp_path: Path) -> None:
    labels = bundled_subset(tmp_path / "data", patients=14)
    lines: list[str] = []
    config = TrainConfig(
        labels_csv=labels, images_dir=BUNDLED_DIR / "images", output=tmp_path / "m.pt",
        device="cpu", **(TINY_TRAINING | {"epochs": 2, "batch_size": 4}),
    )  # fmt: skip
    train_encoder(config, progress=False, echo=lines.append)
    within = [line for line in lines if line.startswith("  epoch 1/2: batch")]
    assert within and all(" left" in line and "train loss" in line for line in within)
    first = next(line for line in lines if line.startswith("epoch 1/2:"))
    assert "val mean AUROC" in first and "kept epoch 1" in first and "left" in first


def test_the_checkpoint_records_its_validation_images(tiny_training: TrainResult) -> None:
    checkpoint = load_checkpoint(tiny_training.checkpoint_path)
    split = checkpoint.training["split"]
    hashes = split["val_image_sha256"]
    assert len(hashes) == split["val_images"] == len(set(hashes))
    bundled = {file_sha256(path) for path in (BUNDLED_DIR / "images").glob("*.png")}
    assert set(hashes) <= bundled
    assert split["sources"] == {
        Path(checkpoint.training["labels_csv"][0]).parent.name: {
            "train_images": split["train_images"],
            "val_images": split["val_images"],
        }
    }


def _variant(source: Path, target: Path, **metrics: object) -> Path:
    checkpoint = load_checkpoint(source)
    changed = type(checkpoint)(
        checkpoint.findings, checkpoint.image_size, checkpoint.normalisation,
        checkpoint.state_dict, checkpoint.training, checkpoint.metrics | metrics,
    )  # fmt: skip
    return save_checkpoint(target, changed)


def test_evaluate_held_out_prints_views_baselines_and_intervals(
    tiny_training: TrainResult, tmp_path: Path
) -> None:
    checkpoint = load_checkpoint(tiny_training.checkpoint_path)
    labels = Path(checkpoint.training["labels_csv"][0])
    images = labels.parent / "images"
    if not images.exists():
        images.symlink_to(BUNDLED_DIR / "images")
    compare = _variant(tiny_training.checkpoint_path, tmp_path / "other.pt")
    query_set = _originals_subset(tmp_path / "originals-few", 12)
    result = CliRunner().invoke(
        main,
        [
            "evaluate", "--held-out", "--checkpoint", str(tiny_training.checkpoint_path),
            "--compare", str(compare), "--labels", str(labels), "--k", "10",
            "--resamples", "200", "--output-dir", str(tmp_path / "out"),
            "--query-set", str(query_set), "--json", str(tmp_path / "scripted" / "compare.json"),
        ],
        env={"MEDGRAPH_ENCODER_DEVICE": "cpu", "MEDGRAPH_HOME": str(tmp_path / "home")},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    out = result.output
    assert "held-out queries:" in out and "own patient excluded" in out
    for row in ("(exact)", "raw pixels", "random-init DenseNet-121", "random (expected)"):
        assert row in out
    assert "mean validation AUROC, encoder.pt:" in out and "encoder.pt minus other.pt" in out
    assert "encoder.pt (exact, re-ranked by findings)" in out
    assert "vs other.pt (exact, re-ranked" not in out  # only the checkpoint's codes
    saved = json.loads((tmp_path / "out" / "heldout.json").read_text())
    views = [view["view"] for view in saved["views"]]
    assert views == ["pooled", labels.parent.name, "originals-few"]
    assert saved["query_images"] == checkpoint.training["split"]["val_images"]
    rows = saved["views"][1]["rows"]
    # The same weights twice: the paired difference is exactly zero.
    twin = next(row for row in rows if row["name"] == "other.pt (exact)")
    assert all(math.isclose(twin["difference"][m]["value"], 0.0) for m in twin["difference"])
    assert all(np.isfinite(row["metrics"]["precision"]["value"]) for row in rows)
    # One source set here, so its within-source AUROC is the pooled one.
    source = labels.parent.name
    assert f"  within {source}: encoder.pt " in out
    by_source = saved["auroc_by_source"][source]
    assert by_source["encoder.pt"]["mean"] == saved["auroc"]["encoder.pt"]["mean"]
    assert math.isclose(by_source["other.pt"]["difference"]["value"], 0.0, abs_tol=1e-12)
    # The query set: its own view, its 12 films against the whole archive, never results.
    archive = len(read_label_sets([labels]).records)
    originals = next(view for view in saved["views"] if view["view"] == "originals-few")
    assert (originals["kind"], originals["queries"], originals["database"]) == (
        "query set", 12, archive,
    )  # fmt: skip
    assert saved["views"][0]["database"] == archive and saved["query_set_images"] == {
        "originals-few": 12
    }
    assert "random, same collection (expected)" not in [row["name"] for row in originals["rows"]]
    assert {"own_collection", "precision"} <= set(originals["rows"][0]["metrics"])
    # A query set shares no collection with the archive: the cue is zero by construction.
    assert originals["rows"][0]["metrics"]["own_collection"]["value"] == 0.0
    assert "query set originals-few: 12 images of new patients" in out
    assert saved["auroc_by_query_set"]["originals-few"]["encoder.pt"]["mean"]["value"] > 0
    # --json: the same results where a script wants them, with the paired comparison.
    scripted = json.loads((tmp_path / "scripted" / "compare.json").read_text())
    assert scripted == saved
    comparison = scripted["comparison"]
    assert (comparison["checkpoint"], comparison["compared"]) == ("encoder.pt", "other.pt")
    assert set(comparison["views"]) == {"pooled", source, "originals-few"}
    for view in comparison["views"].values():
        assert all(math.isclose(gain["value"], 0.0, abs_tol=1e-12) for gain in view.values())
    assert math.isclose(comparison["auroc_by_query_set"]["originals-few"]["value"], 0.0,
                        abs_tol=1e-12)  # fmt: skip


def _originals_subset(folder: Path, count: int) -> Path:
    """The first ``count`` bundled full-size originals as a query set of their own."""
    (shipped,) = query_label_files(REPO_ROOT / "data")
    lines = shipped.read_text().splitlines()[: count + 1]
    (folder / "images").mkdir(parents=True)
    for line in lines[1:]:
        name = line.split(",")[0]
        (folder / "images" / name).symlink_to(shipped.parent / "images" / name)
    (folder / "labels.csv").write_text("\n".join(lines) + "\n")
    return folder / "labels.csv"


def test_calibration_undoes_the_weighted_loss_prior_shift(tiny_training: TrainResult) -> None:
    checkpoint = load_checkpoint(tiny_training.checkpoint_path)
    # A finding in 10% of the training images: positives weigh 0.9, negatives 0.1, so the
    # trained odds are 9 times the true ones.
    weights = {"positive": [0.9] * 14, "negative": [0.1] * 14}
    weighted = replace(checkpoint, training=checkpoint.training | {"loss_weights": weights})
    predicted = np.full((2, 14), 0.5)
    predicted[1] = 0.9
    calibrated = weighted.calibrated(predicted)
    np.testing.assert_allclose(calibrated[0], 0.1, rtol=1e-6)
    np.testing.assert_allclose(calibrated[1], 0.5, rtol=1e-6)
    unweighted = replace(checkpoint, training={k: v for k, v in checkpoint.training.items()
                                               if k != "loss_weights"})  # fmt: skip
    np.testing.assert_array_equal(unweighted.calibrated(predicted), predicted)


def test_evaluate_held_out_refuses_a_checkpoint_without_validation_record(
    tiny_training: TrainResult, tmp_path: Path
) -> None:
    checkpoint = load_checkpoint(tiny_training.checkpoint_path)
    training = dict(checkpoint.training)
    training["split"] = {k: v for k, v in training["split"].items() if k != "val_image_sha256"}
    old = save_checkpoint(
        tmp_path / "old.pt",
        type(checkpoint)(
            checkpoint.findings, checkpoint.image_size, checkpoint.normalisation,
            checkpoint.state_dict, training, checkpoint.metrics,
        ),
    )  # fmt: skip
    result = CliRunner().invoke(
        main,
        ["evaluate", "--held-out", "--checkpoint", str(old), "--labels",
         str(BUNDLED_DIR / "labels.csv")],
    )  # fmt: skip
    assert result.exit_code == 1
    assert "does not record its validation images" in result.output
    assert "Traceback" not in result.output
