"""Which checkpoint file the platform uses: the configured one, the shipped one, or the one
`medgraph train` writes."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from services.encoder.network import ARCHITECTURE
from services.encoder.shipping import shipped_checkpoint

if TYPE_CHECKING:
    from services.config import Settings


def default_checkpoint_path(settings: Settings, image_size: int | None = None) -> Path:
    """The checkpoint the platform uses.

    ``encoder_checkpoint`` if set; else the shipped GPU-trained ``models/densenet121-demo.pt``
    when present with a matching checksum; else ``<models_dir>/densenet121-<size>px.pt``. With
    an explicit ``image_size``, always the last (where `medgraph train` writes).
    """
    if settings.encoder_checkpoint is not None:
        return settings.encoder_checkpoint
    if image_size is None:
        shipped = shipped_checkpoint()
        if shipped is not None:
            return shipped
    return settings.models_dir / f"{ARCHITECTURE}-{image_size or settings.image_size}px.pt"
