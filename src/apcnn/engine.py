"""Compatibility: the training system now lives in :mod:`apcnn.training` (one module per job:
inputs, steps, state, trainer, run). This module re-exports its public names."""

from .data.splits import available_splits, build_datasets
from .devices import autocast_dtype, resolve_device
from .selection import RidgeCV
from .training import (
    METHOD_ORDER,
    DistributedRunError,
    FromImages,
    FromTrunk,
    SplitData,
    Trainer,
    TrainState,
    cache_root,
    cosine_lr,
    hash_seed,
    train,
    train_from_config,
    write_run_outputs,
)

__all__ = [
    "METHOD_ORDER",
    "DistributedRunError",
    "FromImages",
    "FromTrunk",
    "RidgeCV",
    "SplitData",
    "TrainState",
    "Trainer",
    "autocast_dtype",
    "available_splits",
    "build_datasets",
    "cache_root",
    "cosine_lr",
    "hash_seed",
    "resolve_device",
    "train",
    "train_from_config",
    "write_run_outputs",
]
