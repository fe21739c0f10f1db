"""Training in a child process: the same checkpoint, the same lines, errors that say why."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import torch
from encoder_testkit import BUNDLED_DIR, TINY_TRAINING, bundled_subset

from services.config import REPO_ROOT
from services.encoder.checkpoint import load_checkpoint
from services.encoder.training.config import TrainConfig, TrainingError
from services.encoder.training.loop import train_encoder
from services.encoder.training.process import (
    TRAINING_OPENMP_ENV,
    _environment,
    train_in_own_process,
)


def _config(tmp_path: Path, name: str) -> TrainConfig:
    labels = bundled_subset(tmp_path / "data", patients=12)
    return TrainConfig(
        labels_csv=labels, images_dir=BUNDLED_DIR / "images", output=tmp_path / name,
        device="cpu", **(TINY_TRAINING | {"epochs": 2, "batch_size": 8}),
    )  # fmt: skip


def test_the_child_trains_the_same_checkpoint_and_passes_its_lines_back(tmp_path: Path) -> None:
    lines: list[str] = []
    child = train_in_own_process(_config(tmp_path, "child.pt"), echo=lines.append)
    here = train_encoder(_config(tmp_path, "here.pt"), progress=False, echo=lambda _: None)
    assert child.checkpoint_path == tmp_path / "child.pt"
    assert [entry["val_loss"] for entry in child.history] == [
        entry["val_loss"] for entry in here.history
    ]
    # Same seed, same data: the wait policy changes the speed, never the arithmetic.
    theirs, ours = (load_checkpoint(r.checkpoint_path).state_dict for r in (child, here))
    assert all(torch.equal(theirs[name], ours[name]) for name in ours)
    assert any(line.startswith("epoch 1/2: train loss") for line in lines)
    assert any(line.startswith("keeping epoch") for line in lines)
    assert multiprocessing.active_children() == []


def test_bad_input_in_the_child_comes_back_as_a_training_error(tmp_path: Path) -> None:
    bad = tmp_path / "labels.csv"
    bad.write_text("Image Index,Finding Labels,Patient ID\nmissing.png,Mass,1\n")
    config = TrainConfig(labels_csv=bad, output=tmp_path / "x.pt", device="cpu")
    with pytest.raises(TrainingError, match="1 rows point to missing image files"):
        train_in_own_process(config)
    assert not (tmp_path / "x.pt").exists()


def test_a_child_that_dies_is_reported_with_its_exit_code(tmp_path: Path) -> None:
    def kill_the_child(line: str) -> None:
        for child in multiprocessing.active_children():
            if child.name == "medgraph-train":
                child.kill()

    with pytest.raises(TrainingError, match="exited with code -9 without a result"):
        train_in_own_process(_config(tmp_path, "x.pt"), echo=kill_the_child)
    assert not (tmp_path / "x.pt").exists()


def test_the_spinning_policy_is_only_lent_to_the_child() -> None:
    before = {key: os.environ.get(key) for key in TRAINING_OPENMP_ENV}
    with _environment(TRAINING_OPENMP_ENV):
        assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
    assert {key: os.environ.get(key) for key in TRAINING_OPENMP_ENV} == before


def test_the_child_exits_by_itself_after_its_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Terminated while it tears down, a child leaves its semaphores to the resource tracker,
    # which then warns of leaks on the user's terminal.
    terminated: list[str] = []
    original = multiprocessing.context.SpawnProcess.terminate

    def recording_terminate(process: multiprocessing.process.BaseProcess) -> None:
        terminated.append(process.name)
        original(process)  # type: ignore[arg-type]

    monkeypatch.setattr(multiprocessing.context.SpawnProcess, "terminate", recording_terminate)
    config = TrainConfig(
        **(vars(_config(tmp_path, "child.pt")) | {"code_batchnorm": True, "label_metric": 0.8})
    )
    train_in_own_process(config)
    assert terminated == []
    assert multiprocessing.active_children() == []


_PARENT_SCRIPT = """
import sys
from pathlib import Path
from encoder_testkit import BUNDLED_DIR, TINY_TRAINING, bundled_subset
from services.encoder.training.config import TrainConfig
from services.encoder.training.process import train_in_own_process

folder = Path(sys.argv[1])
labels = bundled_subset(folder / "data", patients=12)
config = TrainConfig(labels_csv=labels, images_dir=BUNDLED_DIR / "images",
                     output=folder / "never.pt", device="cpu",
                     **(TINY_TRAINING | {"epochs": 500, "batch_size": 8}))
train_in_own_process(config, echo=lambda line: print(line, flush=True))
"""


def test_a_killed_parent_takes_its_training_child_with_it(tmp_path: Path) -> None:
    # SIGKILL runs no `finally`: only the child's own watch can end it.
    testkit_dir = Path(__file__).resolve().parent
    parent = subprocess.Popen(
        [sys.executable, "-c", _PARENT_SCRIPT, str(tmp_path)],
        stdout=subprocess.PIPE, text=True,
        env=os.environ | {"PYTHONPATH": os.pathsep.join([str(testkit_dir), str(REPO_ROOT)])},
    )  # fmt: skip
    try:
        assert parent.stdout is not None
        first = parent.stdout.readline()  # the child is training once it reports
        assert first, "the parent ended before the child said anything"
        # The training child, not spawn's resource tracker.
        children = [process for process in psutil.Process(parent.pid).children()
                    if "spawn_main" in " ".join(process.cmdline())]  # fmt: skip
        assert len(children) == 1
        child = children[0]
    finally:
        parent.kill()
        parent.wait()
    gone, alive = psutil.wait_procs([child], timeout=15)
    for process in alive:
        process.kill()
    assert gone and not alive, "the training child outlived its parent"
    assert not (tmp_path / "never.pt").exists()
