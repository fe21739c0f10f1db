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
    """(n, 1, S, S) tensors in [0, 1] -> normalised (n, 3, S, S), channels-last like the network."""
    replicated = normalisation.apply(resized).expand(-1, INPUT_CHANNELS, -1, -1)
    return replicated.contiguous(memory_format=torch.channels_last)


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


AUGMENTATIONS = ("light", "strong")


class XrayAugmentation:
    """Training-time perturbations a chest X-ray can plausibly show.

    Small rotation, shift and zoom (patient positioning) and mild brightness/contrast changes
    (exposure). No horizontal flip: the heart sits on the left, and a mirrored film is a different
    anatomy (dextrocardia), not the same finding.

    ``strong`` widens every range and adds a gamma change (detector response) and a little
    Gaussian noise (quantum noise): with 1,700 training images the network otherwise learns them
    by heart within a few epochs.
    """

    _RANGES = {
        # rotation deg, shift, zoom, brightness, contrast, gamma, noise std
        "light": (7.0, 0.05, (0.95, 1.05), 0.05, (0.9, 1.1), None, 0.0),
        "strong": (10.0, 0.08, (0.85, 1.15), 0.1, (0.75, 1.25), (0.8, 1.25), 0.02),
    }

    def __init__(self, strength: str = "light") -> None:
        if strength not in self._RANGES:
            raise ValueError(f"augmentation must be one of {AUGMENTATIONS}, got {strength!r}")
        self.strength = strength
        degrees, shift, zoom, brightness, contrast, gamma, noise = self._RANGES[strength]
        self._affine = v2.RandomAffine(degrees=degrees, translate=(shift, shift), scale=zoom)
        self._brightness, self._contrast, self._gamma, self._noise = (
            brightness,
            contrast,
            gamma,
            noise,
        )
        self.description = (
            f"affine(rotate +-{degrees:g} deg, translate {shift:.0%}, scale {zoom[0]}-{zoom[1]}), "
            f"brightness +-{brightness}, contrast x{contrast[0]}-{contrast[1]}"
            + (f", gamma {gamma[0]}-{gamma[1]}" if gamma else "")
            + (f", Gaussian noise sd {noise}" if noise else "")
            + "; no flips"
        )

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        image = self._affine(image)
        if self._gamma is not None:
            gamma = torch.empty(1).uniform_(*self._gamma)
            image = image.clamp(0.0, 1.0) ** gamma
        contrast = torch.empty(1).uniform_(*self._contrast)
        brightness = torch.empty(1).uniform_(-self._brightness, self._brightness)
        mean = image.mean()
        image = (image - mean) * contrast + mean + brightness
        if self._noise:
            image = image + torch.randn_like(image) * self._noise
        return image.clamp_(0.0, 1.0)
