"""Training pieces checked directly (split, loss weights, loss, AUROC) and one tiny real run."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from encoder_testkit import BUNDLED_DIR, BUNDLED_LABELS, TINY_TRAINING, bundled_subset
from sklearn.metrics import roc_auc_score

from services.config import Settings
from services.encoder.checkpoint import CHECKPOINT_FORMAT, load_checkpoint
from services.encoder.labels import FINDINGS_NIH, LabelRecord, LabelTable, read_labels
from services.encoder.network import InitialWeightsError, build_densenet121
from services.encoder.training.config import TrainConfig, TrainingError
from services.encoder.training.demo_checkpoint import ensure_demo_checkpoint
from services.encoder.training.loop import TrainResult, train_encoder
from services.encoder.training.losses import WeightedBCELoss, finding_loss_weights
from services.encoder.training.split import patient_disjoint_split
from services.encoder.training.validation import validation_auroc

NAN = math.nan


# --- loss weights and loss -------------------------------------------------------------------


def test_loss_weights_are_the_class_ratios_over_known_labels() -> None:
    targets = np.array(
        [
            [1, 0, NAN, NAN],
            [0, 0, 1, NAN],
            [0, 0, 0, NAN],
            [0, 1, 0, NAN],
        ],
        dtype=np.float32,
    )
    positive, negative = finding_loss_weights(targets)
    # Finding 0: 1 positive of 4 -> positives weigh 3/4, negatives 1/4.
    # Finding 2: the NaN is not counted: 1 positive of 3 known.
    # Finding 3: nothing known -> weighs nothing.
    np.testing.assert_allclose(positive, [3 / 4, 3 / 4, 2 / 3, 0])
    np.testing.assert_allclose(negative, [1 / 4, 1 / 4, 1 / 3, 0])
    assert positive.dtype == negative.dtype == np.float32


def test_weighted_bce_matches_the_formula_and_ignores_uncertain_labels() -> None:
    logits = torch.tensor([[2.0, -1.0, 0.5], [-0.3, 4.0, -2.0]], requires_grad=True)
    targets = torch.tensor([[1.0, 0.0, NAN], [0.0, 1.0, 1.0]])
    positive_weight = np.array([0.9, 0.7, 0.6], dtype=np.float32)
    negative_weight = np.array([0.1, 0.3, 0.4], dtype=np.float32)
    loss = WeightedBCELoss(positive_weight, negative_weight)(logits, targets)

    probability = 1 / (1 + np.exp(-logits.detach().numpy()))
    expected_terms = [
        -0.9 * np.log(probability[0, 0]),
        -0.3 * np.log(1 - probability[0, 1]),
        -0.1 * np.log(1 - probability[1, 0]),
        -0.7 * np.log(probability[1, 1]),
        -0.6 * np.log(probability[1, 2]),
    ]
    assert loss.item() == pytest.approx(np.sum(expected_terms) / 5, rel=1e-5)
    loss.backward()
    assert logits.grad[0, 2] == 0  # the uncertain label gives no gradient
    assert (logits.grad[[0, 1, 1, 1, 0], [0, 0, 1, 2, 1]] != 0).all()


def test_weighting_balances_a_rare_finding() -> None:
    # 1 positive in 10: with the paper's weights both classes contribute equally in total.
    targets = np.array([[1]] + [[0]] * 9, dtype=np.float32)
    positive, negative = finding_loss_weights(targets)
    assert positive[0] * 1 == pytest.approx(negative[0] * 9)
    loss = WeightedBCELoss(positive, negative)
    zero_logits = torch.zeros(10, 1)
    total = loss(zero_logits, torch.from_numpy(targets)) * 10
    # At p = 0.5 every term is w * log 2: 0.9 * log2 + 9 * 0.1 * log2.
    assert total.item() == pytest.approx(1.8 * math.log(2), rel=1e-5)


def test_loss_is_finite_for_extreme_logits() -> None:
    loss = WeightedBCELoss(np.ones(2, np.float32), np.ones(2, np.float32))
    value = loss(torch.tensor([[1e4, -1e4]]), torch.tensor([[0.0, 1.0]]))
    assert torch.isfinite(value) and value.item() == pytest.approx(1e4)


# --- split -----------------------------------------------------------------------------------


def test_split_is_patient_disjoint_complete_and_seeded() -> None:
    table = read_labels(BUNDLED_LABELS)
    split = patient_disjoint_split(table, val_fraction=0.2, seed=0)
    patients = np.array([record.patient_id for record in table.records])
    train_patients, val_patients = set(patients[split.train]), set(patients[split.val])
    assert not train_patients & val_patients
    assert sorted(np.concatenate([split.train, split.val])) == list(range(len(table.records)))
    assert (split.train_patients, split.val_patients) == (len(train_patients), len(val_patients))
    assert 0.15 <= len(split.val) / len(table.records) <= 0.3

    again = patient_disjoint_split(table, val_fraction=0.2, seed=0)
    np.testing.assert_array_equal(again.val, split.val)
    other = patient_disjoint_split(table, val_fraction=0.2, seed=1)
    assert set(other.val) != set(split.val)


def test_split_keeps_findings_on_both_sides() -> None:
    table = read_labels(BUNDLED_LABELS)
    split = patient_disjoint_split(table, val_fraction=0.2, seed=0)
    val, train = table.targets()[split.val], table.targets()[split.train]
    covered = [
        finding
        for i, finding in enumerate(FINDINGS_NIH)
        if val[:, i].any() and not val[:, i].all() and train[:, i].any()
    ]
    one_candidate = patient_disjoint_split(table, val_fraction=0.2, seed=0, candidates=1)
    val_one = table.targets()[one_candidate.val]
    covered_one = sum(bool(val_one[:, i].any()) for i in range(len(FINDINGS_NIH)))
    assert len(covered) >= covered_one
    assert len(covered) >= 12  # the bundled set has a positive of every finding in 6+ images


def test_split_needs_two_patients(tmp_path: Path) -> None:
    records = [
        LabelRecord(tmp_path / f"{i}.png", "same", (), np.zeros(14, np.float32)) for i in range(5)
    ]
    with pytest.raises(TrainingError, match="2 or more patients"):
        patient_disjoint_split(LabelTable(FINDINGS_NIH, records), 0.2, 0)


# --- AUROC -----------------------------------------------------------------------------------


def test_validation_auroc_skips_single_class_findings_and_says_why() -> None:
    findings = ("a", "b", "c", "d")
    targets = np.array([[1, 0, 1, 1], [0, 0, 1, NAN], [1, 0, 1, 0], [0, 0, 1, 1]], dtype=np.float32)
    scores = np.array(
        [[0.9, 0.1, 0.5, 0.8], [0.2, 0.3, 0.5, 0.1], [0.4, 0.2, 0.5, 0.3], [0.5, 0.1, 0.5, 0.6]],
        dtype=np.float32,
    )
    report = validation_auroc(findings, targets, scores)
    assert report.per_finding["a"] == pytest.approx(roc_auc_score(targets[:, 0], scores[:, 0]))
    assert report.per_finding["b"] is None and report.skipped["b"] == "no positives in validation"
    assert report.per_finding["c"] is None and report.skipped["c"] == "no negatives in validation"
    known = ~np.isnan(targets[:, 3])
    assert report.per_finding["d"] == pytest.approx(
        roc_auc_score(targets[known, 3], scores[known, 3])
    )
    assert report.mean == pytest.approx((report.per_finding["a"] + report.per_finding["d"]) / 2)
    table = report.table()
    assert "no positives in validation" in table and "(over 2 of 4)" in table


# --- a real, tiny training run ---------------------------------------------------------------


def test_tiny_training_run_writes_a_complete_checkpoint(tiny_training: TrainResult) -> None:
    checkpoint = load_checkpoint(tiny_training.checkpoint_path)
    assert checkpoint.findings == FINDINGS_NIH
    assert checkpoint.image_size == TINY_TRAINING["image_size"]
    assert 0 < checkpoint.normalisation.mean < 1 and 0 < checkpoint.normalisation.std < 1
    training = checkpoint.training
    assert training["epochs"] == 1 and training["batch_size"] == TINY_TRAINING["batch_size"]
    assert training["learning_rate"] == 1e-3 and training["optimizer"] == "Adam"
    assert (
        "ReduceLROnPlateau" in training["lr_schedule"] and "factor=0.1" in training["lr_schedule"]
    )
    assert training["initial_weights"] is None and training["device"] == "cpu"
    assert "no flips" in training["augmentation"]
    assert training["split"]["method"] == "patient-disjoint, seeded"
    assert len(training["loss_weights"]["positive"]) == 14
    metrics = checkpoint.metrics
    assert set(metrics["val_auroc"]) == set(FINDINGS_NIH)
    assert metrics["val_mean_auroc"] == tiny_training.report.mean
    assert len(metrics["history"]) == 1 and metrics["history"][0]["epoch"] == 1
    scored = [value for value in metrics["val_auroc"].values() if value is not None]
    assert scored and all(0.0 <= value <= 1.0 for value in scored)
    assert set(metrics["val_auroc_skipped"]) == {
        finding for finding, value in metrics["val_auroc"].items() if value is None
    }
    # The weights are the trained ones, not a fresh initialisation.
    fresh = build_densenet121(14).state_dict()
    trained = checkpoint.state_dict
    assert not torch.equal(fresh["classifier.weight"], trained["classifier.weight"])
    assert (
        load_checkpoint(tiny_training.checkpoint_path).to_payload()["format"] == CHECKPOINT_FORMAT
    )


def test_training_starts_from_a_local_initial_weights_file(tmp_path: Path) -> None:
    # An ImageNet-shaped file (1000 classes) with the legacy 'norm.1' key names of old releases.
    imagenet_like = build_densenet121(1000).state_dict()
    legacy = {
        key.replace("norm1", "norm.1").replace("conv2", "conv.2"): value
        for key, value in imagenet_like.items()
        if not key.endswith("num_batches_tracked")  # absent from files of that age
    }
    weights = tmp_path / "densenet121-imagenet.pth"
    torch.save(legacy, weights)
    model = build_densenet121(14, initial_weights=weights)
    state = model.state_dict()
    assert torch.equal(state["features.conv0.weight"], imagenet_like["features.conv0.weight"])
    key = "features.denseblock1.denselayer1.norm1.weight"
    assert torch.equal(state[key], imagenet_like[key])
    assert state["classifier.weight"].shape == (14, 1024)  # a fresh head for 14 findings
    # A network with a batch-norm neck starts from the same file; its head is a fresh one too.
    necked = build_densenet121(14, initial_weights=weights, code_batchnorm=True).state_dict()
    assert torch.equal(necked["features.conv0.weight"], imagenet_like["features.conv0.weight"])
    assert necked["classifier.head.weight"].shape == (14, 1024)
    own_head = build_densenet121(14).state_dict()
    fitting = tmp_path / "densenet121-14.pth"
    torch.save(own_head, fitting)
    necked = build_densenet121(14, initial_weights=fitting, code_batchnorm=True).state_dict()
    assert torch.equal(necked["classifier.head.weight"], own_head["classifier.weight"])


def test_bad_initial_weights_are_refused(tmp_path: Path) -> None:
    not_weights = tmp_path / "notes.pth"
    not_weights.write_text("not a tensor file")
    with pytest.raises(InitialWeightsError, match="not a loadable weights file"):
        build_densenet121(14, initial_weights=not_weights)
    resnet_like = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, resnet_like)
    with pytest.raises(InitialWeightsError, match="does not match DenseNet-121"):
        build_densenet121(14, initial_weights=resnet_like)
    with pytest.raises(InitialWeightsError, match="does not exist"):
        build_densenet121(14, initial_weights=tmp_path / "absent.pth")


def test_training_refuses_a_missing_cuda_device(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A machine without CUDA, on every machine (a GPU runner would otherwise skip the path).
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    config = TrainConfig(labels_csv=BUNDLED_LABELS, output=tmp_path / "x.pt", device="cuda")
    with pytest.raises(TrainingError, match="CUDA is not available"):
        train_encoder(config, progress=False, echo=lambda _: None)


def test_ensure_demo_checkpoint_trains_once_then_reuses(tmp_path: Path) -> None:
    data = tmp_path / "data"
    bundled_subset(data, patients=12)
    (data / "images").symlink_to(BUNDLED_DIR / "images")
    settings = Settings(
        home=tmp_path / "home",
        data_dir=data,
        train_epochs=1,
        image_size=TINY_TRAINING["image_size"],
        encoder_device="cpu",
    )
    path = ensure_demo_checkpoint(settings)
    assert path == settings.models_dir / "densenet121-32px.pt"
    assert load_checkpoint(path).image_size == 32
    written = path.stat().st_mtime_ns
    assert ensure_demo_checkpoint(settings) == path
    assert path.stat().st_mtime_ns == written  # reused, not retrained

    configured = Settings(home=tmp_path / "home", encoder_checkpoint=tmp_path / "absent.pt")
    with pytest.raises(ValueError, match="absent.pt: the checkpoint file does not exist"):
        ensure_demo_checkpoint(configured)


def _tiny_config(tmp_path: Path, **overrides: object) -> TrainConfig:
    labels = bundled_subset(tmp_path / "data", patients=12)
    values: dict[str, object] = {
        "labels_csv": labels,
        "images_dir": BUNDLED_DIR / "images",
        "output": tmp_path / "model.pt",
        "device": "cpu",
        **TINY_TRAINING,
    }
    return TrainConfig(**(values | overrides))


def test_the_lowest_validation_loss_epoch_is_kept(tmp_path: Path) -> None:
    result = train_encoder(_tiny_config(tmp_path, epochs=3), progress=False, echo=lambda _: None)
    metrics = load_checkpoint(result.checkpoint_path).metrics
    losses = [entry["val_loss"] for entry in metrics["history"]]
    assert len(losses) == 3 and metrics["epochs_run"] == 3 and metrics["stopped_early"] is None
    best = int(np.argmin(losses))
    assert metrics["selected_epoch"] == best + 1
    assert metrics["val_loss"] == pytest.approx(losses[best])
    assert metrics["val_mean_auroc"] == pytest.approx(metrics["history"][best]["val_mean_auroc"])


def test_time_limit_stops_training_and_says_so(tmp_path: Path) -> None:
    lines: list[str] = []
    config = _tiny_config(tmp_path, epochs=5, time_limit_s=0.01)
    result = train_encoder(config, progress=False, echo=lines.append)
    metrics = load_checkpoint(result.checkpoint_path).metrics
    assert metrics["epochs_run"] == 1 and len(result.history) == 1
    assert "time limit of 0s (train_time_limit_s)" in metrics["stopped_early"]
    assert any(line.startswith("stopping after epoch 1 of 5") for line in lines)


def test_a_split_seed_keeps_the_validation_patients_while_the_seed_changes_the_run(
    tmp_path: Path,
) -> None:
    def run(name: str, **overrides: object) -> tuple[list[str], dict[str, torch.Tensor]]:
        config = _tiny_config(tmp_path / name, output=tmp_path / f"{name}.pt", **overrides)
        result = train_encoder(config, progress=False, echo=lambda _: None)
        checkpoint = load_checkpoint(result.checkpoint_path)
        return checkpoint.training["split"]["val_image_sha256"], checkpoint.state_dict

    base_val, base_weights = run("base", seed=0)
    same_split_val, same_split_weights = run("same-split", seed=1, split_seed=0)
    other_split_val, _ = run("other-split", seed=1)
    assert same_split_val == base_val  # the same queries: paired comparison possible
    assert other_split_val != base_val  # --seed alone still draws another split
    assert any(not torch.equal(base_weights[name], same_split_weights[name])
               for name in base_weights)  # fmt: skip
