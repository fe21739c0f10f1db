"""The paper's network: torchvision's DenseNet-121 with one logit per finding.

Grey X-rays are replicated to three channels rather than changing the first convolution, so a
local ImageNet-style initial weights file (``initial_weights``) fits unchanged. Nothing is ever
downloaded: without a weights file the network starts from random initialisation.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional
from torchvision.models import DenseNet, densenet121

ARCHITECTURE = "densenet121"
FEATURE_DIM = 1024
# Old torchvision/LuaTorch DenseNet files name layers 'norm.1'; current modules say 'norm1'.
_LEGACY_LAYER_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\."
    r"((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$"
)


class InitialWeightsError(ValueError):
    """A local initial weights file that cannot be loaded into DenseNet-121."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")


class UnitCodeLinear(nn.Linear):
    """The finding classifier fed the L2-normalised code times ``scale``: the logits can use only
    the code's direction, which is all that cosine retrieval compares (the plain head can also
    read the code's length, which retrieval throws away)."""

    def __init__(self, in_features: int, out_features: int, scale: float) -> None:
        super().__init__(in_features, out_features)
        self.scale = scale

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return super().forward(functional.normalize(features, dim=1) * self.scale)


class CodeNeckHead(nn.Module):
    """A batch-norm "neck" between the pooled features and the finding classifier (BNNeck, Luo
    et al. 2019, from person re-identification): the code is the neck's output. Pooled ReLU
    features all lie in one orthant, so every pair's cosine is high and dominated by their shared
    mean; the neck centres and scales each dimension (its shift is fixed at zero), and the
    classifier learns on those centred codes, which cosine retrieval then compares."""

    def __init__(self, head: nn.Linear) -> None:
        super().__init__()
        self.neck = nn.BatchNorm1d(head.in_features)
        self.neck.bias.requires_grad_(False)
        self.head = head

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(self.neck(features))


def build_densenet121(
    num_findings: int,
    initial_weights: Path | None = None,
    unit_code_scale: float = 0.0,
    code_batchnorm: bool = False,
) -> DenseNet:
    """DenseNet-121 with ``num_findings`` logits; ``initial_weights``: a local .pth or None;
    ``unit_code_scale`` > 0: the classifier sees the unit code times it (``UnitCodeLinear``);
    ``code_batchnorm``: the code passes a batch-norm neck first (``CodeNeckHead``)."""
    model = densenet121(weights=None, num_classes=num_findings)
    if unit_code_scale > 0:
        head = UnitCodeLinear(FEATURE_DIM, num_findings, unit_code_scale)
        # The same initial weights as the plain head, so the two differ only in what they see.
        head.load_state_dict(model.classifier.state_dict())
        model.classifier = head
    if initial_weights is not None:
        load_initial_weights(model, Path(initial_weights))
    if code_batchnorm:
        # After the initial weights: their file names the head 'classifier.*', as the plain one.
        model.classifier = CodeNeckHead(model.classifier)
    # NHWC lets oneDNN pick faster convolution kernels: one training step of batch 32 on the
    # 2-core CPU took 540 ms instead of 622 at 64 px, 1,773 instead of 1,992 at 128 px
    # (bench/train_step.py).
    return model.to(memory_format=torch.channels_last)


def load_initial_weights(model: DenseNet, path: Path) -> None:
    """Load a DenseNet-121 state dict (e.g. ImageNet's); the classifier is kept only if it fits."""
    if not path.is_file():
        raise InitialWeightsError(path, "the initial weights file does not exist")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for files that are not checkpoints
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InitialWeightsError(path, f"not a loadable weights file ({first_line})") from None
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]  # a medgraph checkpoint or a common training wrapper
    if not isinstance(loaded, dict):
        raise InitialWeightsError(path, f"expected a state dict, found {type(loaded).__name__}")
    state = {}
    for key, value in loaded.items():
        key = key.removeprefix("module.")  # saved from DataParallel
        match = _LEGACY_LAYER_KEY.match(key)
        state[match.group(1) + match.group(2) if match else key] = value
    own = model.state_dict()
    for key in ("classifier.weight", "classifier.bias"):
        if key in state and state[key].shape != own[key].shape:
            del state[key]  # a different number of classes (e.g. ImageNet's 1000): fresh head
    # Files older than PyTorch 0.4 have no BatchNorm step counters; nothing depends on them.
    missing = [
        key
        for key in own
        if key not in state
        and not key.startswith("classifier.")
        and not key.endswith("num_batches_tracked")
    ]
    unexpected = [key for key in state if key not in own]
    if missing or unexpected:
        raise InitialWeightsError(
            path,
            f"does not match DenseNet-121: {len(missing)} missing keys {missing[:3]}, "
            f"{len(unexpected)} unexpected keys {unexpected[:3]}",
        )
    mismatched = [key for key in state if state[key].shape != own[key].shape]
    if mismatched:
        raise InitialWeightsError(path, f"tensor shapes differ for {mismatched[:3]}")
    model.load_state_dict(state, strict=False)


def pooled_features(model: DenseNet, batch: torch.Tensor) -> torch.Tensor:
    """The (n, 1024) image code before L2: the last pooling layer's output, the paper's code
    (after the batch-norm neck when the network has one)."""
    features = functional.relu(model.features(batch))
    pooled = torch.flatten(functional.adaptive_avg_pool2d(features, 1), 1)
    classifier: nn.Module = model.classifier
    return classifier.neck(pooled) if isinstance(classifier, CodeNeckHead) else pooled


def classify(model: DenseNet, features: torch.Tensor) -> torch.Tensor:
    """Finding logits from ``pooled_features`` (the same path as ``model(batch)``)."""
    classifier: nn.Module = model.classifier
    if isinstance(classifier, CodeNeckHead):
        return classifier.head(features)
    return classifier(features)
