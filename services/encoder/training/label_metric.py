"""Step 8, after the last epoch: the label metric of the kept weights (``code_metric.py``), fit
on the training images' codes."""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional
from torch.utils.data import DataLoader

from services.encoder.code_metric import CodeMetric, CodeMetricError, fit_code_metric
from services.encoder.network import build_densenet121, pooled_features
from services.encoder.preprocessing import Normalisation, to_network_input
from services.encoder.training.best_epoch import BestEpoch
from services.encoder.training.config import TrainConfig, TrainingError
from services.encoder.training.dataset import LabelledImages
from services.encoder.training.losses import label_set_matrix


def fit_label_metric(
    config: TrainConfig,
    outputs: int,
    best: BestEpoch,
    images: LabelledImages,
    normalisation: Normalisation,
    device: torch.device,
    mixed_precision: bool,
) -> CodeMetric:
    """The label metric of the kept weights, fit on the training images' unit codes (no
    augmentation), the way the extractor will compute them."""
    model = build_densenet121(outputs, None, config.unit_code_scale, config.code_batchnorm)
    model.load_state_dict(best.state_dict)
    model = model.to(device).eval()
    codes: list[np.ndarray] = []
    targets: list[torch.Tensor] = []
    with torch.inference_mode():
        for batch, batch_targets in DataLoader(images, batch_size=config.batch_size * 2):
            inputs = to_network_input(batch.to(device), normalisation)
            with torch.autocast(device.type, dtype=torch.float16, enabled=mixed_precision):
                features = pooled_features(model, inputs)
            codes.append(functional.normalize(features.float(), dim=1).cpu().numpy())
            targets.append(batch_targets)
    try:
        return fit_code_metric(
            np.concatenate(codes),
            label_set_matrix(torch.cat(targets)).numpy(),
            config.label_metric,
        )
    except CodeMetricError as exc:
        raise TrainingError(f"cannot fit the label metric: {exc}") from None
