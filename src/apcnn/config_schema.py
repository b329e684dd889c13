"""The training configuration's schema: :class:`TrainConfig` and its sections as typed
dataclasses, each field documented by its ``#:`` comment and checked in ``__post_init__``, and the
keys that were removed (:data:`REMOVED_KEYS`). Reading YAML files and ``key=value`` overrides into
these classes is :mod:`apcnn.config`'s job (import the names from there).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal


class ConfigError(ValueError):
    """A configuration problem; the message is one line naming the key and the fix."""


# ------------------------------------------------------------------------------- the dataclasses
#: Dataset names that need no ``data.root`` (generated in memory).
DATASETS_WITHOUT_ROOT = frozenset({"synthetic"})


def _check(cond: bool, key: str, message: str) -> None:
    if not cond:
        raise ConfigError(f"'{key}' {message}")


def _check_finite(obj: Any, prefix: str, names: Sequence[str]) -> None:
    """Every named float of ``obj`` is finite (``inf`` passes ``> 0`` checks; nan fails them)."""
    for name in names:
        value = getattr(obj, name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            _check(math.isfinite(value), f"{prefix}.{name}", f"must be finite, got {value}")


#: ``train.device``: auto, cpu, mps, or cuda / xpu with an optional index
_DEVICE = re.compile(r"auto|cpu|mps|(cuda|xpu)(:\d+)?")


@dataclass
class DataConfig:
    """Dataset and split. Folds come from a permutation seeded by ``split_seed``."""

    name: str = "synthetic"  #: dataset registry name (synthetic, clothing, awa, ...)
    root: str | None = None  #: dataset directory; synthetic needs none
    split_seed: int = 0  #: seed of the fold permutation
    folds: int = 5  #: number of cross-validation folds
    fold: int = 0  #: test fold index, 0 <= fold < folds
    val_fraction: float = 0.15  #: share of the training folds held out for validation
    image_size: int = 224  #: input width in pixels (and height, unless image_height is set)
    #: input height in pixels; null: square image_size (portrait photos: e.g. 320 x 480)
    image_height: int | None = None
    #: image_size / resize size: resize to the input size / crop_fraction, then crop the centre
    #: (random crop when augmenting); 1.0 resizes straight to the input size
    crop_fraction: float = 0.875
    num_workers: int = 2  #: DataLoader worker processes
    skip_bad_images: bool = False  #: skip unreadable images instead of failing
    #: random crop + horizontal flip of training images; null: on exactly when images go through
    #: the network during SGD (model.freeze_trunk=false); a frozen trunk's features are cached
    #: once, so it cannot be augmented
    augment: bool | None = None
    options: dict[str, Any] = field(default_factory=dict)  #: dataset-specific keyword arguments
    #: keep this share of each attribute's labels in the training folds (train and validation
    #: splits), stratified by class, the rest masked as missing; the same subset for every
    #: method (seeded by split_seed); test labels are never touched. 1.0: all labels
    label_fraction: float = 1.0

    def __post_init__(self) -> None:
        _check(
            0.0 < self.label_fraction <= 1.0,
            "data.label_fraction",
            f"must be in (0, 1], got {self.label_fraction}",
        )
        _check(self.folds >= 2, "data.folds", f"must be >= 2, got {self.folds}")
        _check(
            0 <= self.fold < self.folds,
            "data.fold",
            f"must be in 0..{self.folds - 1} (data.folds={self.folds}), got {self.fold}",
        )
        _check(0.0 <= self.val_fraction < 1.0, "data.val_fraction", "must be in [0, 1)")
        _check(self.image_size > 0, "data.image_size", f"must be > 0, got {self.image_size}")
        _check(
            self.image_height is None or self.image_height > 0,
            "data.image_height",
            f"must be > 0 or null, got {self.image_height}",
        )
        _check(
            0.0 < self.crop_fraction <= 1.0,
            "data.crop_fraction",
            f"must be in (0, 1], got {self.crop_fraction}",
        )
        _check(self.num_workers >= 0, "data.num_workers", "must be >= 0")
        _check_finite(self, "data", ["val_fraction", "crop_fraction"])


@dataclass
class ModelConfig:
    """Backbone and the factored last layer W = L S (L: D x K, S: K x M)."""

    backbone: str = "tf_efficientnet_lite0"  #: timm model name
    weights: str | None = "imagenet"  #: "imagenet", a local weights file, or None (random init)
    tail: str | int = "head"  #: attribute-specific part: "head" or number of trailing blocks
    #: keep the shared trunk frozen (its features cached once); false: fine-tune it end to end
    #: with the tails (images go through the whole network every epoch: slow on a CPU)
    freeze_trunk: bool = True
    rank: int = 64  #: K, number of latent tasks (columns of L)
    #: [top, bottom, left, right] fractions of the final feature map averaged into the features
    #: (apcnn.models.pooling; e.g. [0.15, 0.85, 0.25, 0.75]: the middle, where a garment is);
    #: null: global average pooling
    pool_region: list[float] | None = None
    #: average each image's pooled features with those of its mirror image (left-right flip),
    #: in training, evaluation and prediction alike; needs tail=fc
    flip_average: bool = False

    def __post_init__(self) -> None:
        _check(self.rank >= 1, "model.rank", f"must be >= 1, got {self.rank}")
        if isinstance(self.tail, int):
            _check(self.tail >= 0, "model.tail", f"must be 'head' or an int >= 0, got {self.tail}")
        if self.pool_region is not None:
            from .models.regions import check_region  # no torch: configs load fast

            try:
                check_region(self.pool_region)
            except ValueError as exc:
                _check(False, "model.pool_region", str(exc))


@dataclass
class MTLConfig:
    """Multi-task layer, eq. 2.

    loss + mu sum_k sum_g ||S[k, g]||_2 + gamma ||L||_1 + lam ||L||_F^2

    The penalties here are *per training sample*: eq. 2 sums the loss over samples, so the engine
    passes mu * n, gamma * n and lam * n to the solvers (n = mean number of labelled samples per
    attribute) and the same values suit a dataset of any size. The solver API itself
    (``apcnn.solvers``) takes eq. 2's penalties as they are.
    """

    mu: float = 0.01  #: group-sparsity weight on S
    gamma: float = 1e-4  #: l1 weight on L
    #: squared-Frobenius weight on L; "auto": the geometric mean of the per-attribute ridge
    #: weights λ_m chosen by 3-fold CV on the training split's initial tail features, in the
    #: units of those features (the same CV as task_weights: auto; with both, attribute m is
    #: regularised as its own cross-validated SVM would be, before the group penalty)
    lam: float | Literal["auto"] = 1e-3
    #: loss of eq. 2 on the scores: squared hinge (the paper's), hinge or logistic
    loss: Literal["squared_hinge", "hinge", "logistic"] = "squared_hinge"
    method: Literal["fista", "spgd"] = "fista"  #: S-step solver
    max_outer: int = 20  #: alternations of the S- and L-steps
    tol: float = 1e-5  #: relative objective decrease that stops the alternation
    max_iter: int = 500  #: iterations per subproblem
    inner_tol: float = 1e-6  #: relative change that stops a subproblem solver
    #: if not empty: mu values tried at the first solve of each method, the best on the
    #: validation split is kept (and recorded); mu above is then ignored
    mu_grid: list[float] = field(default_factory=list)
    #: per-attribute loss weights c_m (one per attribute, > 0) in the solvers and the SGD loss:
    #: attribute m's regularisation acts as if divided by c_m (beyond eq. 2); null: all 1;
    #: "auto": c_m = geometric mean(λ) / λ_m from a ridge weight λ_m per attribute chosen by
    #: 3-fold cross-validation on the training split's initial tail features (as `apcnn
    #: reproduce` does)
    task_weights: list[float] | Literal["auto"] | None = None
    #: wall-clock seconds per solver call (one mu of mu_grid, one round): the solver stops at
    #: its next iteration when they are up and keeps its iterate so far (never worse than its
    #: start); the run's log says so. null: no limit
    time_budget: float | None = None
    #: proximal-gradient iterations per solver call, all sub-problems together; null: no limit
    iter_budget: int | None = None
    #: also stop when one iterate meets both blocks' KKT conditions (L given S, S given L) to
    #: this relative violation (a stationarity certificate of eq. 2); null: only `tol`
    gap_tol: float | None = None
    #: warm starts across mu_grid: each mu after the first starts from the previous mu's
    #: solution instead of S-CNN's heads (faster; can change the chosen solution)
    warm_start_grid: bool = False
    #: the tail features the solver works on: dense = the (N, M, D) array (4·N·M·D bytes);
    #: factored (model.tail=fc only) = the trunk features and the M tail matrices
    #: (apcnn.features_store: the same problem exactly, memory N·D + M·D², much faster at large N)
    features: Literal["dense", "factored"] = "dense"

    def __post_init__(self) -> None:
        _check_finite(self, "mtl", ["mu", "gamma", "lam", "tol", "inner_tol"])
        for name in ("time_budget", "gap_tol", "iter_budget"):
            value = getattr(self, name)
            _check(
                value is None or (math.isfinite(value) and value > 0),
                f"mtl.{name}",
                f"must be null or a number > 0, got {value}",
            )
        for name in ("mu", "gamma", "lam"):
            value = getattr(self, name)
            _check(
                value == "auto" if name == "lam" and isinstance(value, str) else value >= 0,
                f"mtl.{name}",
                "must be >= 0" + (" or auto" if name == "lam" else ""),
            )
        _check(self.tol > 0, "mtl.tol", "must be > 0")
        _check(self.max_outer >= 1, "mtl.max_outer", "must be >= 1")
        _check(self.max_iter >= 1, "mtl.max_iter", "must be >= 1")
        _check(
            self.task_weights in (None, "auto") or all(w > 0 for w in self.task_weights),
            "mtl.task_weights",
            "must be null, auto or a list of positive numbers, one per attribute",
        )


@dataclass
class TrainLoopConfig:
    """SGD fine-tuning: S-CNN epochs, then MG-CNN rounds alternating the solver and SGD."""

    seed: int = 0  #: seed of initialisation, shuffling and augmentation (not of the folds)
    device: str = "auto"  #: "auto", "cpu", "cuda", "cuda:1", ...
    #: mixed precision (autocast) of the network: auto = bf16 on CPU / fp16 on CUDA, or off
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"
    #: float64: tails, head and solvers in double precision (slow; for reproducibility checks,
    #: e.g. that N data-parallel processes reproduce one; no autocast)
    precision: Literal["float32", "float64"] = "float32"
    batch_size: int = 64  #: images (or feature rows) per SGD step
    lr: float = 0.01  #: peak SGD learning rate of the tails and heads
    momentum: float = 0.9  #: SGD momentum
    weight_decay: float = 5e-4  #: SGD weight decay (L2) of tails and heads
    #: weight decay of the head (S-CNN's per-attribute w_m); None: ``weight_decay``
    head_weight_decay: float | None = None
    #: the SGD loss weights attribute m by mtl.task_weights' c_m, as the solver's objective.
    #: Every parameter SGD trains belongs to one attribute (its tail, its head column, its
    #: bias), so c_m mainly scales that attribute's step size; false: unweighted SGD loss (the
    #: same steps for every attribute; the objective differs only through weight_decay / c_m).
    #: With few labels c_m can span 300x (10 % of Clothing's: 0.29 to 87) and the 87x
    #: attribute's steps diverge at lr 0.01
    sgd_task_weights: bool = True
    #: L2-SP: the tails' weight decay pulls them towards their initial (pretrained / identity)
    #: values instead of towards zero (Li et al., ICML 2018)
    tail_decay_to_init: bool = False
    #: with model.freeze_trunk=false: the trunk's learning rate is lr times this (pretrained
    #: layers move slowly; 0 keeps them fixed but still updates their batch-norm statistics)
    trunk_lr_scale: float = 0.1
    schedule: Literal["cosine", "step", "constant"] = "cosine"  #: learning-rate schedule
    epochs_single: int = 5  #: S-CNN epochs per attribute network
    #: S-CNN starts from exact per-attribute SVMs on the initial tail features (ridge weight per
    #: attribute by 3-fold CV on the training split), then SGD fine-tunes tails and heads from
    #: there (linear probe, then fine-tune); with keep_best, S-CNN keeps the probe when SGD does
    #: not improve the validation accuracy
    linear_probe: bool = False
    #: trunk adaptation (apcnn.adapt): before the methods, fine-tune the last n blocks of the
    #: frozen trunk and its head convolution on all attributes at once (logistic loss, a
    #: temporary linear head), on cached outputs of the blocks below; every method then works
    #: on the adapted trunk. 0: off (the ImageNet trunk). Needs model.tail=fc.
    adapt_blocks: int = 0
    adapt_epochs: int = 8  #: epochs of trunk adaptation
    adapt_lr: float = 1e-3  #: AdamW peak learning rate of the adapted blocks (head: 10x)
    #: after the adaptation, "validation": a per-attribute ridge probe on the adapted and on the
    #: ImageNet top's pooled features (fitted on train, scored on the validation labels); the
    #: ImageNet top is put back when the adapted one scores lower (few labels); "none": off
    adapt_gate: Literal["validation", "none"] = "validation"
    epochs_joint: int = 3  #: MG-CNN epochs per round
    rounds: int = 2  #: alternations between the MTL solver and SGD
    #: M-CNN / MG-CNN end with the model of the round (the state after a solve) with the best
    #: validation accuracy, not necessarily the last: re-solving on features that SGD has just
    #: fitted to the training images can overfit (S-CNN with linear_probe: probe or SGD)
    keep_best: bool = True
    #: per-attribute decision thresholds, chosen on the validation split after calibration:
    #: "0" = the trained boundary (score >= 0, as the paper), "accuracy" = the probability
    #: threshold with the best validation accuracy, "balanced" = the best validation balanced
    #: accuracy (raises mA on rare attributes, costs accuracy), "prior_shift" = every threshold
    #: moved by one shared step from the boundary towards the attribute's label frequency, the
    #: step with the best validation mA that costs at most threshold_max_accuracy_loss of
    #: validation accuracy; saved in the checkpoint, used by predict and ONNX
    threshold: Literal["0", "accuracy", "balanced", "prior_shift"] = "0"
    #: threshold=prior_shift: the validation accuracy (a fraction, 0.003 = 0.3 points) it may
    #: give up for mA
    threshold_max_accuracy_loss: float = 0.003
    #: class weighting of the losses (SGD and solvers): none, or "ratio" = DeepMAR's positive-
    #: ratio weights, exp(1 - p_m) on positives and exp(p_m) on negatives of attribute m, p_m its
    #: positive rate in the training split (rare positives count more)
    pos_weight: Literal["none", "ratio"] = "none"
    #: seconds a collective may wait under torchrun before the job fails (dead or stuck rank)
    dist_timeout: float = 300.0
    #: under torchrun, check after every solver call that L and S are identical on all ranks
    dist_debug: bool = False
    #: methods to train, in METHOD order; S-CNN always runs (the others start from it)
    methods: list[Literal["S-CNN", "M-CNN", "MG-CNN"]] = field(
        default_factory=lambda: ["S-CNN", "M-CNN", "MG-CNN"]
    )

    def __post_init__(self) -> None:
        _check(self.batch_size >= 1, "train.batch_size", "must be >= 1")
        _check_finite(
            self,
            "train",
            ["lr", "momentum", "weight_decay", "head_weight_decay", "trunk_lr_scale", "adapt_lr"],
        )
        _check(
            isinstance(self.device, str) and _DEVICE.fullmatch(self.device) is not None,
            "train.device",
            f"must be auto, cpu, cuda, cuda:N or mps, got {self.device!r}",
        )
        _check(self.lr > 0, "train.lr", f"must be > 0, got {self.lr}")
        _check(
            0.0 <= self.threshold_max_accuracy_loss <= 1.0,
            "train.threshold_max_accuracy_loss",
            f"must be in [0, 1] (a fraction: 0.003 = 0.3 points), got "
            f"{self.threshold_max_accuracy_loss}",
        )
        _check(0 <= self.momentum < 1, "train.momentum", "must be in [0, 1)")
        _check(self.weight_decay >= 0, "train.weight_decay", "must be >= 0")
        _check(
            self.head_weight_decay is None or self.head_weight_decay >= 0,
            "train.head_weight_decay",
            "must be >= 0 or null",
        )
        _check(self.adapt_blocks >= 0, "train.adapt_blocks", "must be >= 0 (0: off)")
        _check(self.adapt_epochs >= 1, "train.adapt_epochs", "must be >= 1")
        _check(self.adapt_lr > 0, "train.adapt_lr", f"must be > 0, got {self.adapt_lr}")
        for name in ("epochs_single", "epochs_joint", "rounds"):
            _check(getattr(self, name) >= 0, f"train.{name}", "must be >= 0")
        _check(self.trunk_lr_scale >= 0, "train.trunk_lr_scale", "must be >= 0")
        _check(self.dist_timeout > 0, "train.dist_timeout", "must be > 0 (seconds)")
        _check(len(self.methods) > 0, "train.methods", "must name at least one method")


@dataclass
class RunConfig:
    """Where results go."""

    out: str = "runs/default"  #: output directory (the run's name is its folder name)


@dataclass
class TrainConfig:
    """Everything ``apcnn train`` needs."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    mtl: MTLConfig = field(default_factory=MTLConfig)
    train: TrainLoopConfig = field(default_factory=TrainLoopConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self) -> None:
        _check(
            not (self.data.augment and self.model.freeze_trunk),
            "data.augment",
            "true needs model.freeze_trunk=false (a frozen trunk's features are computed once "
            "and cached, so training images cannot be augmented); set data.augment=false",
        )
        _check(
            not self.train.adapt_blocks or (self.model.tail == "fc" and self.model.freeze_trunk),
            "train.adapt_blocks",
            "needs model.tail=fc and model.freeze_trunk=true (it adapts the top of the frozen "
            "trunk; a trainable trunk is fine-tuned whole, conv tails already own the top blocks)",
        )
        _check(
            not self.model.flip_average or self.model.tail == "fc",
            "model.flip_average",
            "needs model.tail=fc (it averages the pooled trunk features of an image and its "
            "mirror image; conv tails pool inside each attribute's branch)",
        )
        _check(
            self.mtl.features != "factored" or self.model.tail == "fc",
            "mtl.features",
            f"factored needs model.tail=fc (got model.tail={self.model.tail!r}): only fc tails "
            "are affine in the trunk features; set model.tail=fc or mtl.features=dense",
        )


#: Keys that earlier versions accepted but never read, with the reason each is gone. A YAML file
#: or an override that sets one is refused (:class:`ConfigError` naming the key and the reason);
#: :func:`config_from_dict` drops them, so configurations stored in older checkpoints still load.
REMOVED_KEYS: dict[str, str] = {
    "model.bias": "the multi-task layer always has a per-attribute bias",
    "train.checkpoint_every": "the run checkpoints after every step (epoch, solve, probe)",
    "train.calibrate": "probability calibration is always fitted on the validation split",
    "train.log_every": "log lines are written once per epoch and once per solve",
    "run.name": "a run is named by its folder; use --out DIR (run.out)",
}


def check_data_root(cfg: TrainConfig) -> None:
    """Raise :class:`ConfigError` if ``cfg.data`` names a dataset that needs a root but has none."""
    if cfg.data.name.lower() not in DATASETS_WITHOUT_ROOT and not cfg.data.root:
        raise ConfigError(
            f"data.root is not set: dataset {cfg.data.name!r} reads its files from a directory; "
            "pass --set data.root=DIR"
        )
