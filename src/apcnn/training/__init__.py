"""The training system, one room per job (docs/architecture.md):

- :mod:`.inputs`: a run's splits as tensors for the tails (feature caches, trunk adaptation,
  ImageNet features, sharding under torchrun);
- :mod:`.steps`: the methods as data and the plan's steps as functions (SGD epoch, probe, solve,
  finish, evaluate);
- :mod:`.state`: the training state, keep-best, and their atomic save / exact resume;
- :mod:`.trainer`: builds a run's parts, makes the plan, runs it;
- :mod:`.run`: ``train``, ``train_from_config`` and the run folder's outputs.
"""

from .inputs import SplitData, cache_root, hash_seed
from .run import DistributedRunError, train, train_from_config, write_run_outputs
from .state import KeepBest, TrainState
from .steps import METHOD_ORDER, METHODS, FromImages, FromTrunk, Method, cosine_lr
from .trainer import Trainer, make_plan

__all__ = [
    "METHODS",
    "METHOD_ORDER",
    "DistributedRunError",
    "FromImages",
    "FromTrunk",
    "KeepBest",
    "Method",
    "SplitData",
    "TrainState",
    "Trainer",
    "cache_root",
    "cosine_lr",
    "hash_seed",
    "make_plan",
    "train",
    "train_from_config",
    "write_run_outputs",
]
