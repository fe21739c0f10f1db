"""From decoded pixels to network input, the same way for training and for image codes.

Each image is resized to ``image_size`` squared (bilinear, antialiased; no aspect-preserving
padding, as is usual for chest X-ray classifiers), normalised with the training set's mean and
standard deviation (stored in the checkpoint) and replicated to three channels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional
from torchvision.transforms import v2

INPUT_CHANNELS = 3


@dataclass(frozen=True)
class Normalisation:
    mean: float
    std: float

    def apply(self, batch: torch.Tensor) -> torch.Tensor:
        return (batch - self.mean) / self.std


def resize_pixels(pixels: np.ndarray, image_size: int) -> torch.Tensor:
    """(H, W) float pixels in [0, 1] -> (1, S, S) float32 tensor."""
    tensor = torch.as_tensor(np.ascontiguousarray(pixels, dtype=np.float32))[None, None]
    if tensor.shape[-2:] != (image_size, image_size):
        tensor = functional.interpolate(
            tensor,
            size=(image_size, image_size),
            mode="bilinear",
            antialias=True,
            align_corners=False,
        )
    # Out of place: without a resize the tensor shares memory with the caller's array.
    return tensor[0].clamp(0.0, 1.0)


def to_network_input(resized: torch.Tensor, normalisation: Normalisation) -> torch.Tensor:
    """(n, 1, S, S) tensors in [0, 1] -> normalised (n, 3, S, S)."""
    return normalisation.apply(resized).expand(-1, INPUT_CHANNELS, -1, -1)


def prepare_batch(
    images: Sequence[np.ndarray],
    image_size: int,
    normalisation: Normalisation,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Grey pixel arrays of any size -> normalised (n, 3, S, S) on ``device``.

    One channel travels to the device; normalising and replicating happen there.
    """
    resized = torch.stack([resize_pixels(pixels, image_size) for pixels in images])
    return to_network_input(resized.to(device, non_blocking=True), normalisation)


class XrayAugmentation:
    """Training-time perturbations a chest X-ray can plausibly show.

    Small rotation, shift and zoom (patient positioning) and mild brightness/contrast changes
    (exposure). No horizontal flip: the heart sits on the left, and a mirrored film is a different
    anatomy (dextrocardia), not the same finding.
    """

    description = (
        "affine(rotate +-7 deg, translate 5%, scale 0.95-1.05), brightness +-0.05, "
        "contrast x0.9-1.1; no flips"
    )

    def __init__(self) -> None:
        self._affine = v2.RandomAffine(degrees=7.0, translate=(0.05, 0.05), scale=(0.95, 1.05))

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        image = self._affine(image)
        contrast = torch.empty(1).uniform_(0.9, 1.1)
        brightness = torch.empty(1).uniform_(-0.05, 0.05)
        mean = image.mean()
        return ((image - mean) * contrast + mean + brightness).clamp_(0.0, 1.0)
