"""Averaged encoders: several networks trained on the same patient split with other seeds, held
in one checkpoint (``medgraph average-encoders``).

Each network's unit code carries its own seed's noise as well as the findings; the mean of the
unit codes keeps what they agree on. On the 268 full-size films (issue 28) the mean of two
``retrieval --equalise`` seeds gave ACG_p@50 0.156 against 0.151 and 0.153 for the seeds alone
(point estimates; paired intervals against the older recipe in ``services/encoder/README.md``).
The price is one forward pass per network for every image.

The networks must agree on everything that shapes a code's meaning or an evaluation's fairness:
architecture, findings, input size, normalisation, the validation images (so held-out figures
stay held out for every network) and the loss weights (so ``EncoderCheckpoint.calibrated``
holds for the averaged probabilities).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from services.encoder.checkpoint import (
    CheckpointError,
    EncoderCheckpoint,
    file_sha256,
    load_checkpoint,
)

# The training record's fields every averaged network must share, and why a reader cares.
_SHARED_TRAINING = {
    "loss_weights": "loss weights (the calibration of the averaged findings)",
}


def _validation_images(checkpoint: EncoderCheckpoint) -> Any:
    return checkpoint.training.get("split", {}).get("val_image_sha256")


def average_checkpoints(paths: Sequence[Path]) -> EncoderCheckpoint:
    """One checkpoint holding every network of ``paths`` (averaged ones are flattened).

    Raises CheckpointError naming the file and what differs from the first one."""
    if len(paths) < 2:
        raise CheckpointError(", ".join(map(str, paths)) or "(none)", "averaging needs 2 or more")
    loaded = [(Path(path), load_checkpoint(Path(path))) for path in paths]
    first_path, first = loaded[0]
    if not _validation_images(first):
        raise CheckpointError(first_path, "it does not record its validation images")
    networks = []
    sources = []
    for path, checkpoint in loaded:
        differs = [
            what
            for what, same in (
                ("architecture", checkpoint.architecture == first.architecture),
                ("findings", checkpoint.findings == first.findings),
                ("input size", checkpoint.image_size == first.image_size),
                ("normalisation", checkpoint.normalisation == first.normalisation),
                ("validation images", _validation_images(checkpoint) == _validation_images(first)),
            )
            if not same
        ] + [
            what
            for key, what in _SHARED_TRAINING.items()
            if checkpoint.training.get(key) != first.training.get(key)
        ]
        if differs:
            raise CheckpointError(path, f"differs from {first_path.name} in {', '.join(differs)}")
        digest = file_sha256(path)
        if any(source["sha256"] == digest for source in sources):
            raise CheckpointError(path, "the same file is already among the averaged networks")
        for network in checkpoint.networks:
            networks.append(network)
            sources.append({"file": path.name, "sha256": digest})
    averaged = [
        replace(network, training=network.training | {"averaged_from": source})
        for network, source in zip(networks, sources, strict=True)
    ]
    return replace(
        first,
        state_dict=averaged[0].state_dict,
        training=averaged[0].training,
        metrics=averaged[0].metrics,
        code_metric=averaged[0].code_metric,
        members=tuple(averaged[1:]),
    )
