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

    ``encoder_checkpoint`` if set; else one `medgraph train` wrote,
    ``<models_dir>/densenet121-<size>px.pt``, when it exists (a user's own training wins); else
    the shipped ``models/densenet121-demo.pt`` when its checksum matches and it was made for
    ``image_size``; else the trained path (the demo trains one there). With an explicit
    ``image_size``, always the trained path (where `medgraph train` writes).
    """
    if settings.encoder_checkpoint is not None:
        return settings.encoder_checkpoint
    trained = settings.models_dir / f"{ARCHITECTURE}-{image_size or settings.image_size}px.pt"
    if image_size is None and not trained.is_file():
        shipped = shipped_checkpoint(image_size=settings.image_size)
        if shipped is not None:
            return shipped
    return trained
