"""From decoded pixels to network input, the same way for training and for image codes.

Each image is resized to ``image_size`` squared (bilinear, antialiased; no aspect-preserving
padding, as is usual for chest X-ray classifiers), optionally histogram-equalised on its own
(the checkpoint says whether), normalised with the training set's mean and standard deviation
(stored in the checkpoint) and replicated to three channels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional
from torchvision.transforms import v2

INPUT_CHANNELS = 3


GREY_LEVELS = 256


def equalise_histograms(batch: torch.Tensor) -> torch.Tensor:
    """(n, 1, S, S) images in [0, 1] -> each mapped through its own grey-level distribution.

    Every monotone change of tone (window, gamma, contrast, a vendor's look-up table) gives the
    same output, so the network cannot tell archives apart by how their films were processed.
    Each level maps to the middle of its share of the image, so ties stay ties and a flat image
    maps to 0.5.
    """
    flat = batch.reshape(batch.shape[0], -1)
    levels = (flat.clamp(0.0, 1.0) * (GREY_LEVELS - 1)).round().long()
    counts = torch.zeros(flat.shape[0], GREY_LEVELS, device=batch.device, dtype=flat.dtype)
    counts.scatter_add_(1, levels, torch.ones_like(flat))
    middle_of_level = (counts.cumsum(1) - counts / 2) / flat.shape[1]
    return middle_of_level.gather(1, levels).reshape(batch.shape)


@dataclass(frozen=True)
class Normalisation:
    mean: float
    std: float
    # Histogram-equalise each image before the mean and standard deviation apply.
    equalise: bool = False

    def apply(self, batch: torch.Tensor) -> torch.Tensor:
        if self.equalise:
            batch = equalise_histograms(batch)
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


AUGMENTATIONS = ("light", "strong", "robust")


class XrayAugmentation:
    """Training-time perturbations a chest X-ray can plausibly show.

    Small rotation, shift and zoom (patient positioning) and mild brightness/contrast changes
    (exposure). No horizontal flip: the heart sits on the left, and a mirrored film is a different
    anatomy (dextrocardia), not the same finding.

    ``strong`` widens every range and adds a gamma change (detector response) and a little
    Gaussian noise (quantum noise): with 1,700 training images the network otherwise learns them
    by heart within a few epochs.

    ``robust`` is ``strong`` plus the cues by which archives differ rather than findings: half
    of the images are first reduced to between a third and all of their size and brought back
    (another source resolution and resampling chain), and half are blurred by up to one pixel
    (another detector or reduction filter).
    """

    _RANGES = {
        # rotation deg, shift, zoom, brightness, contrast, gamma, noise std
        "light": (7.0, 0.05, (0.95, 1.05), 0.05, (0.9, 1.1), None, 0.0),
        "strong": (10.0, 0.08, (0.85, 1.15), 0.1, (0.75, 1.25), (0.8, 1.25), 0.02),
        "robust": (10.0, 0.08, (0.85, 1.15), 0.1, (0.75, 1.25), (0.8, 1.25), 0.02),
    }
    # Resolution: (chance, smallest size as a share); blur: (chance, largest sigma in pixels).
    _ACQUISITION = {"robust": ((0.5, 1 / 3), (0.5, 1.0))}

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
        self._acquisition = self._ACQUISITION.get(strength)
        self.description = (
            f"affine(rotate +-{degrees:g} deg, translate {shift:.0%}, scale {zoom[0]}-{zoom[1]}), "
            f"brightness +-{brightness}, contrast x{contrast[0]}-{contrast[1]}"
            + (f", gamma {gamma[0]}-{gamma[1]}" if gamma else "")
            + (f", Gaussian noise sd {noise}" if noise else "")
            + (
                f", p={self._acquisition[0][0]:g} resampled from {self._acquisition[0][1]:.2f}-1 "
                f"of the size, p={self._acquisition[1][0]:g} Gaussian blur sigma 0-"
                f"{self._acquisition[1][1]:g} px"
                if self._acquisition
                else ""
            )
            + "; no flips"
        )

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        if self._acquisition is not None:
            image = self._acquire_differently(image)
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

    def _acquire_differently(self, image: torch.Tensor) -> torch.Tensor:
        (resample_chance, smallest_share), (blur_chance, largest_sigma) = self._acquisition
        size = image.shape[-1]
        if torch.rand(1).item() < resample_chance:
            share = torch.empty(1).uniform_(smallest_share, 1.0).item()
            reduced = max(8, round(size * share))
            small = functional.interpolate(
                image[None], size=(reduced, reduced), mode="bilinear", antialias=True
            )
            image = functional.interpolate(small, size=image.shape[-2:], mode="bilinear")[0]
        if torch.rand(1).item() < blur_chance:
            sigma = torch.empty(1).uniform_(0.1, largest_sigma).item()
            image = v2.functional.gaussian_blur(image, kernel_size=[5, 5], sigma=[sigma, sigma])
        return image
