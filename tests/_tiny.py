"""The tiny synthetic training run that engine, report and zero-shot tests build on.

Tests add their own ``--set`` style overrides after these (later keys win).
"""

from __future__ import annotations

from pathlib import Path

TINY = [
    "data.name=synthetic",
    "data.image_size=64",
    "data.num_workers=0",
    "data.options={num_images: 160}",
    "model.tail=head",
    "model.rank=8",
    "mtl.max_outer=3",
    "train.batch_size=32",
    "train.epochs_single=2",
    "train.epochs_joint=1",
    "train.rounds=1",
    "train.methods=[S-CNN, M-CNN, MG-CNN]",
]


def tiny_config(out: Path, *extra: str):
    """A :class:`apcnn.config.TrainConfig` of the tiny run writing to ``out``."""
    from apcnn.config import TrainConfig, load_config

    return load_config(TrainConfig, None, [*TINY, f"run.out={out}", *extra])
