"""Step 4, the images: labelled images resized once (kept in memory when they fit) and the
training set's normalisation."""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from services.encoder.imaging import read_image
from services.encoder.labels import LabelTable
from services.encoder.preprocessing import Normalisation, equalise_histograms, resize_pixels

# Images read to estimate the normalisation; more adds time, not accuracy.
NORMALISATION_SAMPLE = 2000
# Resized training images are kept in memory when they fit in this (the bundled sets at 64 px
# take 36 MiB): decoding PNGs again every epoch cost a third of a CPU epoch.
IMAGE_CACHE_BYTES = 2 << 30


class LabelledImages(Dataset):
    """(1, S, S) images in [0, 1] and their targets, read lazily so any dataset size fits."""

    def __init__(
        self,
        table: LabelTable,
        image_size: int,
        augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
        cache: bool = False,
    ) -> None:
        self.table = table
        self.image_size = image_size
        self.augment = augment
        self._cache: list[torch.Tensor | None] | None = (
            [None] * len(table.records)
            if cache and len(table.records) * image_size**2 * 4 <= IMAGE_CACHE_BYTES
            else None
        )

    def __len__(self) -> int:
        return len(self.table.records)

    def unaugmented(self) -> LabelledImages:
        """The same images (and in-memory copies) without augmentation."""
        view = copy.copy(self)
        view.augment = None
        return view

    def resized(self, index: int) -> torch.Tensor:
        """The (1, S, S) image before augmentation (kept in memory after the first read)."""
        if self._cache is not None and self._cache[index] is not None:
            return self._cache[index]  # type: ignore[return-value]
        record = self.table.records[index]
        image = resize_pixels(read_image(record.image_path).pixels, self.image_size)
        if self._cache is not None:
            self._cache[index] = image
        return image

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        record = self.table.records[index]
        image = self.resized(index)
        if self.augment is not None:
            image = self.augment(image)
        return image, torch.from_numpy(record.targets)


def compute_normalisation(
    table: LabelTable, image_size: int, seed: int, equalise: bool = False
) -> Normalisation:
    """Mean and standard deviation of the (resized, maybe equalised) training images, from a
    seeded sample."""
    count = min(len(table.records), NORMALISATION_SAMPLE)
    chosen = np.random.default_rng(seed).choice(len(table.records), size=count, replace=False)
    images = LabelledImages(table.subset(chosen), image_size)
    stacked = torch.stack([images[i][0] for i in range(len(images))])
    if equalise:
        stacked = equalise_histograms(stacked)
    return Normalisation(
        mean=float(stacked.mean()), std=max(float(stacked.std()), 1e-3), equalise=equalise
    )
