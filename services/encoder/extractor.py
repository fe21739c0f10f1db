"""Image codes: the paper's L2-normalised 1024-d DenseNet-121 pooling output (passed through
the checkpoint's label metric, ``code_metric.py``, when it has one). For an averaged checkpoint
(``averaging.py``), the re-normalised mean of its networks' codes.

Load once per process, then call :meth:`FeatureExtractor.embed` as often as needed::

    extractor = FeatureExtractor(ensure_demo_checkpoint(get_settings())).load()
    codes = extractor.embed([read_image(path).pixels for path in paths])  # (n, 1024) float32
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional

from services.encoder.checkpoint import (
    EncoderCheckpoint,
    NetworkWeights,
    file_sha256,
    load_checkpoint,
)
from services.encoder.code_metric import CodeMetric
from services.encoder.network import ARCHITECTURE, FEATURE_DIM, build_densenet121, classify
from services.encoder.network import pooled_features as network_pooled_features
from services.encoder.preprocessing import prepare_batch
from services.encoder.training.config import resolve_device
from services.encoder.training.demo_checkpoint import ensure_demo_checkpoint

__all__ = ["FEATURE_DIM", "FeatureExtractor", "ensure_demo_checkpoint"]

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class _LoadedNetwork:
    model: torch.nn.Module
    code_metric: CodeMetric | None


def _load_network(
    network: NetworkWeights, finding_count: int, device: torch.device
) -> _LoadedNetwork:
    model = build_densenet121(
        finding_count,
        unit_code_scale=float(network.training.get("unit_code_scale") or 0.0),
        code_batchnorm=bool(network.training.get("code_batchnorm")),
    )
    model.load_state_dict(network.state_dict)
    metric = network.code_metric.to(device) if network.code_metric is not None else None
    return _LoadedNetwork(model.to(device).eval(), metric)


class FeatureExtractor:
    """Loaded once per process. embed() returns float32 (n, 1024), L2 unit rows, deterministic.

    ``precision`` other than fp32 runs the network under autocast (GPU); outputs stay float32.
    """

    def __init__(
        self,
        checkpoint: Path,
        device: str | None = None,
        *,
        batch_size: int = 64,
        precision: str = "fp32",
    ) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
        self.checkpoint_path = Path(checkpoint)
        self.device = resolve_device(device)
        self.batch_size = batch_size
        self.precision = precision
        self._networks: tuple[_LoadedNetwork, ...] = ()
        self._checkpoint: EncoderCheckpoint | None = None
        self._model_version: str | None = None

    def load(self) -> FeatureExtractor:
        checkpoint = load_checkpoint(self.checkpoint_path)
        if self.device.type == "cuda":
            # Fixed convolution algorithms, so the same image always gives the same code.
            torch.backends.cudnn.benchmark = False
            torch.backends.cudnn.deterministic = True
        self._networks = tuple(
            _load_network(network, len(checkpoint.findings), self.device)
            for network in checkpoint.networks
        )
        self._checkpoint = checkpoint
        self._model_version = f"{ARCHITECTURE}-{file_sha256(self.checkpoint_path)[:12]}"
        return self

    @property
    def loaded(self) -> bool:
        return bool(self._networks)

    @property
    def network_count(self) -> int:
        """How many networks each image passes through (2 or more: an averaged checkpoint)."""
        return len(self._require_loaded()[0])

    @property
    def model_version(self) -> str:
        """Stable id of the checkpoint: architecture and the first 12 hex of its sha256."""
        if self._model_version is None:
            self._model_version = f"{ARCHITECTURE}-{file_sha256(self.checkpoint_path)[:12]}"
        return self._model_version

    @property
    def findings(self) -> tuple[str, ...]:
        return self._require_loaded()[1].findings

    @property
    def image_size(self) -> int:
        return self._require_loaded()[1].image_size

    @property
    def metrics(self) -> dict:
        return self._require_loaded()[1].metrics

    def embed(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """(n, 1024) float32 unit vectors for grey (H, W) pixel arrays in [0, 1] of any size."""
        features, _ = self._run(images, with_findings=False)
        return features

    def predict(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """(n, n_findings) float32 finding probabilities, columns in ``findings`` order."""
        _, probabilities = self._run(images, with_findings=True)
        return probabilities

    def embed_and_predict(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Codes and finding probabilities from one forward pass."""
        return self._run(images, with_findings=True)

    def embed_with_findings(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Codes (n, 1024) and *calibrated* finding probabilities (n, n_findings) float32, from
        one forward pass: the probabilities at the training prevalence
        (``EncoderCheckpoint.calibrated``), which the search's re-ranking by findings compares
        between images (the raw ones of ``predict`` rank images within one finding, not
        across images)."""
        codes, probabilities = self._run(images, with_findings=True)
        checkpoint = self._require_loaded()[1]
        return codes, checkpoint.calibrated(probabilities).astype(np.float32)

    def _run(
        self, images: Sequence[np.ndarray], *, with_findings: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        networks, checkpoint = self._require_loaded()
        for position, pixels in enumerate(images):
            if not isinstance(pixels, np.ndarray) or pixels.ndim != 2 or min(pixels.shape) == 0:
                shape = getattr(pixels, "shape", type(pixels).__name__)
                raise ValueError(f"image {position}: expected a 2-D pixel array, got {shape}")
        codes = np.zeros((len(images), FEATURE_DIM), dtype=np.float32)
        probabilities = np.zeros((len(images), len(checkpoint.findings)), dtype=np.float32)
        autocast = self.precision != "fp32"
        with torch.inference_mode():
            for start in range(0, len(images), self.batch_size):
                chunk = images[start : start + self.batch_size]
                batch = prepare_batch(
                    chunk, checkpoint.image_size, checkpoint.normalisation, self.device
                )
                unit_codes, chunk_probabilities = [], []
                for network in networks:
                    with torch.autocast(
                        self.device.type, dtype=PRECISIONS[self.precision], enabled=autocast
                    ):
                        features = network_pooled_features(network.model, batch)
                        if with_findings:
                            logits = classify(network.model, features)
                    unit = functional.normalize(features.float(), dim=1)
                    if network.code_metric is not None:
                        unit = network.code_metric.apply(unit)
                    unit_codes.append(unit)
                    if with_findings:
                        chunk_probabilities.append(torch.sigmoid(logits.float()))
                if len(unit_codes) > 1:
                    # Left alone for one network, so its codes stay bit-identical to before.
                    unit = functional.normalize(torch.stack(unit_codes).sum(dim=0), dim=1)
                stop = start + len(chunk)
                codes[start:stop] = unit.cpu().numpy()
                if with_findings:
                    mean = torch.stack(chunk_probabilities).mean(dim=0)
                    probabilities[start:stop] = mean.cpu().numpy()
        return codes, probabilities

    def _require_loaded(self) -> tuple[tuple[_LoadedNetwork, ...], EncoderCheckpoint]:
        if not self._networks or self._checkpoint is None:
            raise RuntimeError("FeatureExtractor.load() must be called before use")
        return self._networks, self._checkpoint
