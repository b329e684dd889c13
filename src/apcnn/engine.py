"""The training system: S-CNN -> MTL -> MG-CNN, the paper's three stages (DESIGN.md section 1).

1. **S-CNN**: every attribute gets its own CNN tail and linear head, trained by SGD on the masked
   squared hinge. The head is the multi-task layer with S = I (K = M), so each column of
   L is one attribute's w_m.
2. **MTL**: on the tails' features X (N, M, D), W = [w_1 ... w_M] from S-CNN initialises L (SVD)
   and S; Algorithm 1 (``apcnn.solvers.fit_alternating``) solves eq. 2.
3. **MG-CNN**: alternate SGD through the fixed W = L S into the tails with re-solving L and S on the
   new features. **M-CNN** is the same with all attributes in one group.

The frozen trunk's output is computed once per dataset and cached on disk; the tails train on it.
With ``train.adapt_blocks=n`` the last n blocks of that trunk are first fine-tuned on all
attributes at once (``apcnn.adapt``, on cached maps of the blocks below; saved in
``checkpoints/adapted_top`` so a resumed run reuses it), and every method works on the adapted
trunk; ``Trainer.pretrained_inputs`` still gives the ImageNet trunk's features. With
``model.flip_average`` the bottom maps of the mirror images are cached too: the features are
averaged over each image and its mirror image, as the saved model computes them from images.
With ``model.freeze_trunk=false`` the images go through the whole network instead (trunk at
``train.lr * train.trunk_lr_scale``, training images randomly cropped and flipped), every epoch and
every solve: the paper's end-to-end fine-tuning, meant for GPUs.
Every phase is a list of steps (an SGD epoch, a solver call, an evaluation); after each step the
whole training state goes into an atomic checkpoint, so ``--resume`` continues at the next step and
ends with exactly the result of an uninterrupted run (batch order and learning rate are pure
functions of the seed and the step, never of hidden generator state).
"""

from __future__ import annotations

import copy
import hashlib
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from . import distributed
from .data.schema import AttributeSchema
from .data.splits import available_splits, build_datasets  # noqa: F401  (re-export)
from .devices import autocast_dtype, resolve_device
from .losses import masked_squared_hinge

METHOD_ORDER = ("S-CNN", "M-CNN", "MG-CNN")


# ----------------------------------------------------------------------------- helpers
class FromTrunk(nn.Module):
    """``predictor.forward_from_trunk`` as a module's forward, for DDP to wrap."""

    def __init__(self, predictor: nn.Module) -> None:
        super().__init__()
        self.predictor = predictor

    def forward(self, trunk_features: torch.Tensor) -> torch.Tensor:
        return self.predictor.forward_from_trunk(trunk_features)


class FromImages(FromTrunk):
    """The whole predictor on images, trunk included (trainable trunk), for DDP to wrap. The trunk
    stays float32; its output goes to the tails in their precision."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        trunk = self.predictor.cnn.forward_trunk(images)
        dtype = next(self.predictor.cnn.tails.parameters()).dtype
        return self.predictor.forward_from_trunk(trunk.to(dtype))


def cosine_lr(base_lr: float, step: int, total: int, schedule: str) -> float:
    if schedule == "constant" or total <= 1:
        return base_lr
    if schedule == "step":
        return base_lr * (0.1 ** (3 * step // max(total, 1)))
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * step / total))


def cache_root() -> Path:
    return Path(os.environ.get("APCNN_CACHE", Path.home() / ".cache" / "apcnn"))


# ------------------------------------------------------------------------------ splits
@dataclass
class SplitData:
    """A split's cached trunk features (or, with a trainable trunk, its images) and its labels,
    all in dataset order."""

    name: str
    inputs: torch.Tensor | None  # (N, C, h, w) trunk features; None with a trainable trunk
    targets: torch.Tensor  # (N, M) in {-1, +1}, 0 where missing
    mask: torch.Tensor  # (N, M) bool
    indices: np.ndarray  # (N,) positions in the dataset the split came from
    images: Any = None  # with a trainable trunk: the split as a dataset (eval transform)

    def __len__(self) -> int:
        return len(self.indices)


# ------------------------------------------------------------------------------ state
@dataclass
class TrainState:
    """Everything a resumed run needs besides the (deterministic) cached inputs."""

    completed: int = 0  # number of plan steps done
    results: dict[str, Any] = field(default_factory=dict)  # method -> test metrics
    # method -> objective history of each solve (monotone within a solve; the features change
    # between solves, so the objective may jump there)
    histories: dict[str, list[list[float]]] = field(default_factory=dict)
    chosen: dict[str, Any] = field(default_factory=dict)  # method -> hyperparameters chosen


class RidgeCV(NamedTuple):
    """Per-attribute SVMs by cross-validated ridge weight (:meth:`Trainer._ridge_cv`)."""

    lams: np.ndarray  #: (M,) chosen per-sample ridge weights (features of unit scale)
    scale: float  #: the features' scale (apcnn.selection.feature_scale)
    weights: np.ndarray  #: (D, M) SVM weights for the unscaled features
    bias: np.ndarray  #: (M,)


class Trainer:
    """Runs the plan of steps for one configuration; see the module docstring."""

    def __init__(self, cfg: Any, run: Any, *, resume: bool = False) -> None:
        from .config import config_to_dict
        from .data.transforms import build_transform
        from .models.backbone import create_backbone
        from .models.fc_tail import build_attribute_cnn
        from .models.latent import LatentTaskLayer
        from .predictor import AttributePredictor

        self.cfg, self.run = cfg, run
        self.config_dict = config_to_dict(cfg)
        self.log = run.logger
        self.dist = distributed.info()
        self.device = resolve_device(cfg.train.device)
        if self.device.type == "cuda" and self.dist.distributed:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.dtype = torch.float64 if cfg.train.precision == "float64" else torch.float32
        self.amp = (
            None if self.dtype == torch.float64 else autocast_dtype(cfg.train.amp, self.device)
        )
        backbone, self.backbone_info = create_backbone(
            cfg.model.backbone, weights=cfg.model.weights
        )
        info = self.backbone_info
        shape = {"crop_fraction": cfg.data.crop_fraction, "height": cfg.data.image_height}
        self.transform = build_transform(
            cfg.data.image_size, info.mean, info.std, train=False, **shape
        )
        # a trainable trunk sees images every epoch (augmented unless data.augment=false)
        self.trainable_trunk = not cfg.model.freeze_trunk
        augment = self.trainable_trunk if cfg.data.augment is None else cfg.data.augment
        self.train_transform = build_transform(
            cfg.data.image_size, info.mean, info.std, train=augment, **shape
        )
        self.datasets = build_datasets(cfg, self.transform)
        self.schema: AttributeSchema = self.datasets["train"][0].schema
        # (M,) loss weights or None; a wrong length fails here, not mid-run
        self.task_weights = self._task_weights()
        m = self.schema.num_attributes
        # trunk adaptation (apcnn.adapt): the top of the backbone is trained in _cache_splits;
        # a copy of its pretrained state serves pretrained_inputs (reproduce's *-extract)
        self._bottom: nn.Module | None = None
        self._top: nn.Module | None = None
        self._pretrained_top: nn.Module | None = None
        self.adaptation: dict[str, Any] | None = None
        if cfg.train.adapt_blocks:
            from .adapt import split_top

            try:
                self._bottom, self._top = split_top(backbone, cfg.train.adapt_blocks)
            except ValueError as exc:
                from .config import ConfigError

                raise ConfigError(str(exc)) from None
            self._pretrained_top = copy.deepcopy(self._top)
        cnn = build_attribute_cnn(
            backbone,
            num_attributes=m,
            tail=cfg.model.tail,
            freeze_trunk=cfg.model.freeze_trunk,
            pool_region=cfg.model.pool_region,
            flip_average=cfg.model.flip_average,
        )
        head = LatentTaskLayer(cnn.feature_dim, num_latent=m, num_attributes=m)
        self.predictor = AttributePredictor(cnn, head, m).to(self.device)
        # train.precision applies to the tails and the head; the trunk (and with it the feature
        # cache) stays float32
        self.predictor.cnn.tails.to(self.dtype)
        self.predictor.head.to(self.dtype)
        self._single_head(self.predictor)
        self.model_meta = {
            "backbone": cfg.model.backbone,
            "weights": cfg.model.weights,
            "tail": cfg.model.tail,
            "freeze_trunk": cfg.model.freeze_trunk,
            "num_attributes": m,
            "rank": m,
            "feature_dim": cnn.feature_dim,
        }
        if cfg.model.pool_region is not None:
            self.model_meta["pool_region"] = list(cfg.model.pool_region)
        if cfg.model.flip_average:
            self.model_meta["flip_average"] = True
        if cfg.train.adapt_blocks:  # informational: the adapted weights are in the state dict
            self.model_meta["adapt_blocks"] = cfg.train.adapt_blocks
        self.preprocessing = {
            "image_size": cfg.data.image_size,
            "mean": list(info.mean),
            "std": list(info.std),
        }
        # only when not the defaults, so older checkpoints and their readers stay as they were
        if cfg.data.image_height is not None:
            self.preprocessing["image_height"] = cfg.data.image_height
        if cfg.data.crop_fraction != 0.875:
            self.preprocessing["crop_fraction"] = cfg.data.crop_fraction
        self.splits = self._cache_splits()
        self.state = TrainState()
        if self.adaptation is not None:
            t = cfg.train
            self.state.chosen["adapt"] = {
                "blocks": t.adapt_blocks,
                "epochs": t.adapt_epochs,
                "lr": t.adapt_lr,
                "final_loss": self.adaptation["history"][-1]["loss"],
            }
        self._ridge: RidgeCV | None = None  # see _ridge_cv
        # the ridge CV behind the "auto" choices and the probe sees the initial tails (before
        # any resumed state is loaded), so a resumed run chooses exactly as the first did
        if "auto" in (cfg.mtl.task_weights, cfg.mtl.lam) or cfg.train.linear_probe:
            self._ridge_cv()
        if cfg.mtl.task_weights == "auto":
            self.set_task_weights(self._auto_task_weights())
        self.optimizer: torch.optim.Optimizer | None = None
        self.step_module: nn.Module | None = None  # what SGD calls: DDP-wrapped under torchrun
        # the tails' initial values (for train.tail_decay_to_init), taken before any resume
        self._tail_init: list[torch.Tensor] | None = None
        if cfg.train.tail_decay_to_init:
            self._tail_init = [p.detach().clone() for p in self._tail_params()]
        self.plan = self._make_plan()
        if resume:
            self._load_state()

    # ------------------------------------------------------------------ data
    def _cache_splits(self) -> dict[str, SplitData]:
        """Trunk features of every split, computed once per source dataset and cached on disk
        (a trainable trunk keeps the splits as datasets of images instead)."""
        features: dict[int, torch.Tensor] = {}
        if self._top is not None:
            features = self._adapted_features()
        splits = {}
        for name, (source, indices) in self.datasets.items():
            inputs, images = None, None
            if self.trainable_trunk:
                images = source.subset(indices)
            else:
                if id(source) not in features:
                    features[id(source)] = self._trunk_features(source)
                idx = torch.as_tensor(indices, dtype=torch.long)
                inputs = features[id(source)][idx].to(self.device, self.dtype)
            splits[name] = SplitData(
                name=name,
                inputs=inputs,
                images=images,
                targets=torch.as_tensor(
                    source.targets[indices], dtype=torch.float32, device=self.device
                ),
                mask=torch.as_tensor(source.mask[indices], dtype=torch.bool, device=self.device),
                indices=np.asarray(indices),
            )
        return splits

    def _loader(self, dataset: Any, **kwargs: Any) -> Any:
        from torch.utils.data import DataLoader

        return DataLoader(dataset, num_workers=self.cfg.data.num_workers, **kwargs)

    def _trunk_batches(self, data: SplitData, rows: slice) -> Any:
        """Trunk features of ``rows`` of a split, in order, batch by batch: slices of the cache,
        or (trainable trunk) the current trunk on the split's images, un-augmented. Call in
        inference mode with the predictor in eval mode."""
        size = self.cfg.train.batch_size
        if data.inputs is not None:
            yield from data.inputs[rows].split(size)
            return
        part = data.images.subset(np.arange(len(data))[rows])
        for batch in self._loader(part, batch_size=size, shuffle=False):
            images = batch["image"].to(self.device)
            with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
                trunk = self.predictor.cnn.forward_trunk(images)
            yield trunk.to(self.dtype)

    def _augmented_batches(self, data: SplitData, batches: list[torch.Tensor], seed: int) -> Any:
        """Training images of the given lists of split rows, augmented by ``train_transform``
        with random draws that are a pure function of ``seed`` (exact resume)."""
        train_set = copy.copy(data.images)
        train_set.transform = self.train_transform
        todo = [b.tolist() for b in batches if len(b)]
        generator = torch.Generator().manual_seed(seed)
        loader = iter(self._loader(train_set, batch_sampler=todo, generator=generator))
        d = self.cfg.data
        shape = (0, 3, d.image_height or d.image_size, d.image_size)
        # without workers the transforms draw from the global generator: seed it, and give the
        # caller's random state back afterwards
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for b in batches:
                yield next(loader)["image"] if len(b) else torch.zeros(shape)

    def _feature_key(self, dataset: Any) -> dict[str, Any]:
        """Feature-cache key of the pretrained trunk's output on ``dataset``."""
        key = {
            "dataset": dataset.cache_key(),
            "backbone": self.cfg.model.backbone,
            "weights": self.backbone_info.weights_sha256,
            "tail": str(self.cfg.model.tail),
            "transform": repr(self.transform),
        }
        if self.cfg.model.pool_region is not None:  # absent otherwise: older caches stay valid
            key["pool_region"] = list(self.cfg.model.pool_region)
        if self.cfg.model.flip_average:
            key["flip_average"] = True
        return key

    def _bottom_maps(self, dataset: Any, *, mirrored: bool = False) -> torch.Tensor:
        """(N, C, H', W') outputs of the frozen blocks below the adapted top, cached on disk
        (they do not depend on the fold: every fold and method reuses them); ``mirrored``: of
        the left-right mirror images."""
        from .adapt import Mirrored
        from .features import FeatureCache, extract_features

        key = dict(self._feature_key(dataset), tail="bottom", bottom=self.cfg.train.adapt_blocks)
        key.pop("pool_region", None)
        key.pop("flip_average", None)
        if mirrored:
            key["mirrored"] = True

        def compute() -> torch.Tensor:
            self.log.info(
                "extracting the frozen bottom's maps (%d %simages)",
                len(dataset),
                "mirror " if mirrored else "",
            )
            return extract_features(
                Mirrored(self._bottom) if mirrored else self._bottom,
                dataset,
                batch_size=self.cfg.train.batch_size,
                num_workers=self.cfg.data.num_workers,
                device=self.device,
                progress=self.run.is_main,
                desc="bottom maps",
            )

        return FeatureCache(cache_root() / "features").get_or_compute(key, compute)

    def _mirror_maps(self, dataset: Any) -> torch.Tensor | None:
        """The bottom maps of the mirror images with ``model.flip_average``, else None."""
        return self._bottom_maps(dataset, mirrored=True) if self.cfg.model.flip_average else None

    def _adapted_features(self) -> dict[int, torch.Tensor]:
        """Adapt the top of the trunk on the training split (or load the adaptation of an
        interrupted run), then ``{id(source): pooled adapted-trunk features}`` of every source."""
        from .adapt import adapt_top, top_features
        from .checkpoint import load_checkpoint, save_checkpoint
        from .features import FeatureCache, key_digest

        assert self._top is not None
        t = self.cfg.train
        maps: dict[tuple[int, bool], torch.Tensor] = {}  # each source's maps read once

        def bottom_maps(source: Any, mirrored: bool = False) -> torch.Tensor | None:
            if (id(source), mirrored) not in maps:
                read = self._mirror_maps if mirrored else self._bottom_maps
                maps[id(source), mirrored] = read(source)
            return maps[id(source), mirrored]

        path = self.run.path / "checkpoints" / "adapted_top"
        if (path / "meta.json").exists():
            tensors, meta = load_checkpoint(path)
            self._top.load_state_dict(tensors)
            history = meta["history"]
            self.log.info("trunk adaptation loaded from %s", path)
        else:
            source, rows = self.datasets["train"]
            self.log.info(
                "adapting the last %d blocks of the trunk on %d training images (%d epochs)",
                t.adapt_blocks,
                len(rows),
                t.adapt_epochs,
            )
            rows_t = torch.as_tensor(rows, dtype=torch.long)
            mirrored = bottom_maps(source, True)
            history = adapt_top(
                self._top,
                bottom_maps(source)[rows_t],
                torch.as_tensor(source.targets[rows], dtype=torch.float32),
                torch.as_tensor(source.mask[rows], dtype=torch.bool),
                pool_region=self.cfg.model.pool_region,
                mirrored=None if mirrored is None else mirrored[rows_t],
                epochs=t.adapt_epochs,
                lr=t.adapt_lr,
                seed=hash_seed(t.seed, "adapt", 0, 0),
                device=self.device,
                amp=self.amp,
                progress=self.run.is_main,
                log=self.log,
            )
            # every rank ran the same seeded adaptation; the mean makes them agree bit for bit
            with torch.no_grad():
                for p in self._top.parameters():
                    p.copy_(distributed.all_reduce_sum(p) / self.dist.world_size)
            if self.dist.is_main:
                state = {
                    k: v.detach().cpu().contiguous() for k, v in self._top.state_dict().items()
                }
                save_checkpoint(path, state, {"history": history})
            distributed.barrier()
        digest = key_digest(
            {
                k: hashlib.sha256(v.cpu().numpy().tobytes()).hexdigest()
                for k, v in self._top.state_dict().items()
            }
        )
        self.adaptation = {"history": history, "digest": digest}
        cache = FeatureCache(cache_root() / "features")
        features = {}
        for source, _ in self.datasets.values():
            if id(source) in features:
                continue
            key = dict(self._feature_key(source), adapted=digest)
            features[id(source)] = cache.get_or_compute(
                key,
                lambda src=source: top_features(
                    self._top,
                    bottom_maps(src),
                    self.cfg.model.pool_region,
                    mirrored=bottom_maps(src, True),
                    amp=self.amp,
                ),
            )
        return features

    def pretrained_inputs(self, split: str) -> torch.Tensor:
        """A split's trunk features from the pretrained (not adapted) trunk, (n, D) on the
        split's device: ``splits[split].inputs`` when there is no trunk adaptation."""
        from .adapt import top_features
        from .features import FeatureCache

        data = self.splits[split]
        source, _ = self.datasets[split]
        if self._pretrained_top is None:
            if self.cfg.model.tail == "fc" and not self.trainable_trunk:
                return data.inputs  # the frozen, pooled ImageNet trunk's cached features
            idx = torch.as_tensor(data.indices, dtype=torch.long)
            return self._imagenet_features(source)[idx].to(self.device, self.dtype)
        features = FeatureCache(cache_root() / "features").get_or_compute(
            self._feature_key(source),
            lambda: top_features(
                self._pretrained_top.to(self.device),
                self._bottom_maps(source),
                self.cfg.model.pool_region,
                mirrored=self._mirror_maps(source),
            ),
        )
        idx = torch.as_tensor(data.indices, dtype=torch.long)
        return features[idx].to(self.device, self.dtype)

    def _imagenet_features(self, dataset: Any) -> torch.Tensor:
        """(N, D) pooled features of the whole ImageNet network (fresh from the weights file,
        whatever the model trains), cached under the key a frozen fc trunk's features have."""
        from .features import FeatureCache, extract_features
        from .models.backbone import create_backbone
        from .models.fc_tail import PooledTrunk

        def compute() -> torch.Tensor:
            backbone, _ = create_backbone(self.cfg.model.backbone, weights=self.cfg.model.weights)
            trunk = PooledTrunk(
                backbone, self.cfg.model.pool_region, flip_average=self.cfg.model.flip_average
            )
            self.log.info("extracting ImageNet features (%d images)", len(dataset))
            return extract_features(
                trunk,
                dataset,
                batch_size=self.cfg.train.batch_size,
                num_workers=self.cfg.data.num_workers,
                device=self.device,
                progress=self.run.is_main,
            )

        key = dict(self._feature_key(dataset), tail="fc")
        return FeatureCache(cache_root() / "features").get_or_compute(key, compute)

    def _trunk_features(self, dataset: Any) -> torch.Tensor:
        from .features import FeatureCache, extract_features

        key = self._feature_key(dataset)

        def compute(rows: range) -> torch.Tensor:
            self.log.info("extracting trunk features (%d images)", len(dataset))
            part = dataset if len(rows) == len(dataset) else dataset.subset(list(rows))
            return extract_features(
                self.predictor.cnn.forward_trunk,
                part,
                batch_size=self.cfg.train.batch_size,
                num_workers=self.cfg.data.num_workers,
                device=self.device,
                amp=False,
                progress=self.run.is_main,
            )

        cache = FeatureCache(cache_root() / "features")
        if not self.dist.distributed:
            return cache.get_or_compute(key, lambda: compute(range(len(dataset))))
        # every rank reads its node's cache; if any misses, the ranks extract contiguous shards
        # and gather them in dataset order, and each node's first rank stores the result
        cached = cache.load(key)
        hits = distributed.all_reduce_sum(torch.tensor([float(cached is not None)]))
        if int(hits.item()) == self.dist.world_size:
            return cached
        start, stop = distributed.shard_range(len(dataset), self.dist.rank, self.dist.world_size)
        features = distributed.gather_rows(compute(range(start, stop)).cpu(), len(dataset))
        if self.dist.local_rank == 0:
            cache.save(key, features)
        distributed.barrier()
        return features

    # ------------------------------------------------------------------ plan
    def _methods(self) -> list[str]:
        methods = list(self.cfg.train.methods)
        unknown = [x for x in methods if x not in METHOD_ORDER]
        if unknown:
            from .config import ConfigError

            raise ConfigError(
                f"train.methods: unknown method {unknown[0]!r}; valid: {', '.join(METHOD_ORDER)}"
            )
        return [x for x in METHOD_ORDER if x in methods or x == "S-CNN"]

    def _make_plan(self) -> list[tuple[str, str, int, int]]:
        t = self.cfg.train
        plan = [("S-CNN", "probe", 0, 0)] if t.linear_probe else []
        plan += [("S-CNN", "sgd", 0, e) for e in range(t.epochs_single)]
        plan.append(("S-CNN", "finish", 0, 0))
        for method in self._methods()[1:]:
            plan.append((method, "solve", 0, 0))
            for r in range(1, t.rounds + 1):
                plan += [(method, "sgd", r, e) for e in range(t.epochs_joint)]
                plan.append((method, "solve", r, 0))
            plan.append((method, "finish", 0, 0))
        return plan

    def run_plan(self) -> dict[str, Any]:
        from tqdm.auto import tqdm

        bar = tqdm(
            total=len(self.plan),
            initial=self.state.completed,
            desc="training",
            unit="step",
            disable=not self.run.is_main,
        )
        for i in range(self.state.completed, len(self.plan)):
            method, kind, rnd, epoch = self.plan[i]
            bar.set_postfix_str(f"{method} {kind} r{rnd} e{epoch}")
            if kind == "sgd":
                self._sgd_epoch(method, rnd, epoch)
            elif kind == "solve":
                self._solve(method, rnd)
            elif kind == "probe":
                self._probe()
            else:
                self._finish(method)
            self.state.completed = i + 1
            self._save_state()
            bar.update(1)
        bar.close()
        return self.state.results

    # ------------------------------------------------------------------ stages
    @staticmethod
    def _single_head(predictor: nn.Module) -> None:
        """S-CNN head: S = I (K = M), so column m of L is attribute m's own w_m."""
        head = predictor.head
        with torch.no_grad():
            head.L.zero_()
            head.S.copy_(torch.eye(head.S.shape[0], head.S.shape[1]))
            head.bias.zero_()
        head.S.requires_grad_(False)

    def _trainable(self, method: str) -> list[nn.Parameter]:
        head = self.predictor.head
        return self._tail_params() + ([head.L, head.bias] if method == "S-CNN" else [head.bias])

    def set_task_weights(self, weights: list[float] | None) -> None:
        """Set ``mtl.task_weights`` after construction (``apcnn reproduce`` derives them from
        the frozen features); the config stored in checkpoints follows."""
        from .config import config_to_dict

        self.cfg.mtl.task_weights = None if weights is None else [float(w) for w in weights]
        self.task_weights = self._task_weights()
        self.config_dict = config_to_dict(self.cfg)

    def _auto_task_weights(self) -> list[float]:
        """``mtl.task_weights: auto``: c_m = geometric mean(λ) / λ_m from :meth:`_ridge_cv`."""
        from .selection import task_weights_from_ridge

        weights = task_weights_from_ridge(self._ridge_cv().lams)
        self.state.chosen["task_weights"] = dict(zip(self.schema.names, weights.tolist()))
        return weights.tolist()

    def _ridge_cv(self) -> RidgeCV:
        """A ridge weight per attribute by 3-fold CV on the training split's initial tail
        features (:func:`apcnn.selection.linear_probe`; per sample, on features divided by
        their scale), with the SVMs refitted on the whole split (the linear probe's heads).
        Computed once in ``__init__`` when ``task_weights: auto``, ``lam: auto`` or
        ``linear_probe`` needs it, on all rows by every rank (identical result)."""
        if self._ridge is None:
            from .selection import feature_scale, linear_probe

            data = self.splits["train"]
            self.log.info("ridge weight per attribute by 3-fold CV on the training split")
            x = self._tail_features(data, slice(None))
            W, bias, lams = linear_probe(
                x, data.targets.cpu().numpy(), data.mask.cpu().numpy(), seed=self.cfg.train.seed
            )
            self.log.info("ridge weights per attribute: %s", lams.tolist())
            self._ridge = RidgeCV(lams=lams, scale=feature_scale(x), weights=W, bias=bias)
            self.state.chosen["ridge_lam"] = dict(zip(self.schema.names, lams.tolist()))
        return self._ridge

    def _mtl_lam(self) -> float:
        """``mtl.lam`` per training sample; "auto": geometric mean of the cross-validated λ_m
        times scale² (λ_m were chosen on features divided by ``scale``)."""
        lam = self.cfg.mtl.lam
        if lam != "auto":
            return float(lam)
        ridge = self._ridge_cv()
        value = float(np.exp(np.log(ridge.lams).mean())) * ridge.scale**2
        self.state.chosen["lam"] = value
        return value

    def _task_weights(self) -> torch.Tensor | None:
        """``mtl.task_weights`` as an (M,) tensor (None: all 1), checked against the schema;
        kept as ``self.task_weights`` (set in ``__init__`` and by :meth:`set_task_weights`)."""
        weights = self.cfg.mtl.task_weights
        if weights is None or weights == "auto":  # auto: set in __init__ once features exist
            return None
        m = self.schema.num_attributes
        if len(weights) != m:
            from .config import ConfigError

            raise ConfigError(
                f"'mtl.task_weights' has {len(weights)} values; the dataset has {m} attributes "
                f"({', '.join(self.schema.names[:5])}{', ...' if m > 5 else ''})"
            )
        return torch.as_tensor(weights, dtype=self.dtype, device=self.device)

    def _tail_params(self) -> list[nn.Parameter]:
        """The trainable CNN parameters: the tails, and the trunk when it is trainable."""
        return [p for p in self.predictor.cnn.parameters() if p.requires_grad]

    def _trunk_param_ids(self) -> set[int]:
        trunk = getattr(self.predictor.cnn, "trunk", None)
        return set() if trunk is None else {id(p) for p in trunk.parameters()}

    def _new_optimizer(self, method: str) -> torch.optim.Optimizer:
        t = self.cfg.train
        head = self.predictor.head
        head.L.requires_grad_(method == "S-CNN")
        head.S.requires_grad_(False)
        # the set of trainable parameters changes between methods and heads are replaced by
        # solves, so the DDP wrapper is rebuilt with every optimizer
        self.step_module = (FromImages if self.trainable_trunk else FromTrunk)(self.predictor)
        if self.dist.distributed:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.step_module = DistributedDataParallel(self.step_module, device_ids=ids)
        head_wd = t.weight_decay if t.head_weight_decay is None else t.head_weight_decay
        cnn_params = self._tail_params()
        in_trunk = self._trunk_param_ids()
        # with tail_decay_to_init the decay is added to the gradients in _sgd_epoch
        cnn_wd = 0.0 if t.tail_decay_to_init else t.weight_decay
        groups = [
            {"params": [p for p in cnn_params if id(p) not in in_trunk], "weight_decay": cnn_wd},
            {"params": self._trainable(method)[len(cnn_params) :], "weight_decay": head_wd},
        ]
        trunk = [p for p in cnn_params if id(p) in in_trunk]
        if trunk:  # trainable trunk: a slower learning rate (lr_scale, applied in _sgd_epoch)
            groups.append({"params": trunk, "weight_decay": cnn_wd, "lr_scale": t.trunk_lr_scale})
        return torch.optim.SGD(groups, lr=t.lr, momentum=t.momentum)

    def _decay_tails_to_init(self) -> None:
        """L2-SP: grad += weight_decay (θ − θ₀) for the tails (θ₀: their initial values)."""
        assert self._tail_init is not None  # taken in __init__ when the option is on
        wd = self.cfg.train.weight_decay
        for p, p0 in zip(self._tail_params(), self._tail_init, strict=True):
            if p.grad is not None:
                p.grad.add_(p.detach() - p0, alpha=wd)

    def _sgd_epoch(self, method: str, rnd: int, epoch: int) -> None:
        t = self.cfg.train
        data = self.splits["train"]
        if self.optimizer is None or epoch == 0:
            self.optimizer = self._new_optimizer(method)
        epochs = t.epochs_single if method == "S-CNN" else t.epochs_joint
        steps_per_epoch = math.ceil(len(data) / t.batch_size)
        total = epochs * steps_per_epoch
        # the same global batches whatever the number of ranks; each rank takes its slice
        sampler = distributed.GlobalBatchSampler(
            len(data),
            t.batch_size,
            seed=hash_seed(t.seed, method, rnd, 0),
            rank=self.dist.rank,
            world_size=self.dist.world_size,
        )
        sampler.set_epoch(epoch)
        world = self.dist.world_size
        global_batches = list(sampler.global_batches())
        images = None
        if data.inputs is None:  # trainable trunk: (augmented) images, loaded in the background
            images = self._augmented_batches(
                data,
                [sampler.local(b) for b in global_batches],
                seed=hash_seed(t.seed, method, rnd, epoch) + self.dist.rank,
            )
        self.predictor.train()
        running, start = 0.0, time.time()
        for step, batch in enumerate(global_batches):
            lr = cosine_lr(t.lr, epoch * steps_per_epoch + step, total, t.schedule)
            for group in self.optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
            idx = sampler.local(batch).to(self.device)
            inputs = data.inputs[idx] if images is None else next(images).to(self.device)
            with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
                scores = self.step_module(inputs)
            # DDP averages gradients over ranks: scale so that they sum to the global batch's
            n_labelled = data.mask[batch.to(self.device)].sum()
            loss = (
                masked_squared_hinge(
                    scores.to(self.dtype),
                    data.targets[idx],
                    data.mask[idx],
                    n_labelled,
                    self.task_weights,
                )
                * world
            )
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if t.tail_decay_to_init:
                self._decay_tails_to_init()
            self.optimizer.step()
            running += float(loss.detach())
        if images is not None:
            images.close()  # leaves its fork_rng block now: the global random state comes back
        n_steps = step + 1
        running = float(distributed.all_reduce_sum(torch.tensor([running]))) / world
        val = self._evaluate("val")
        self.run.log_metrics(
            self.state.completed,
            method=method,
            phase="sgd",
            round=rnd,
            epoch=epoch,
            loss=running / n_steps,
            val_accuracy=val["accuracy"]["total"],
            lr=lr,
            seconds=time.time() - start,
        )
        self.log.info(
            "%s round %d epoch %d: loss %.4f, val accuracy %.2f%%",
            method,
            rnd,
            epoch,
            running / n_steps,
            100 * val["accuracy"]["total"],
        )

    def _probe(self) -> None:
        """``train.linear_probe``: S-CNN's heads become the exact per-attribute SVMs that
        :meth:`_ridge_cv` fitted on the initial tail features of the training split; SGD
        fine-tunes from there."""
        ridge = self._ridge_cv()  # fitted on the initial tails, which the probe step still has
        head = self.predictor.head
        with torch.no_grad():
            head.L.copy_(torch.as_tensor(ridge.weights, dtype=head.L.dtype))
            head.bias.copy_(torch.as_tensor(ridge.bias, dtype=head.bias.dtype))
        val = self._evaluate("val")["accuracy"]["total"]
        self.log.info("S-CNN linear probe: validation accuracy %.2f%%", 100 * val)
        if self.cfg.train.keep_best:
            self._keep_if_best("S-CNN", 0, val)

    def _solve(self, method: str, rnd: int) -> None:
        """Algorithm 1 on the current tail features: L, S (and bias) of eq. 2.

        The first solve of a method starts from S-CNN (W = [w_1 .. w_M], L from its SVD); later
        rounds warm-start from the current L and S. With ``mtl.mu_grid`` the first solve tries
        each mu and keeps the one with the best validation accuracy.
        """
        from .models.latent import LatentTaskLayer

        m_cfg = self.cfg.mtl
        warm = rnd > 0
        if not warm:
            self._restore_scnn()
        head = self.predictor.head
        x = self._tail_features(self.splits["train"], self._my_rows(self.splits["train"]))
        if warm:
            mu = self.state.chosen.get(method, {}).get("mu", m_cfg.mu)
            result = self._fit_mtl(method, mu, x, L0=head.L, S0=head.S)
        else:
            w0 = (head.L @ head.S).detach()
            self.predictor.head = LatentTaskLayer(
                head.L.shape[0], num_latent=self.cfg.model.rank, num_attributes=head.S.shape[1]
            ).to(self.device, self.dtype)
            best = None
            for mu in m_cfg.mu_grid or [m_cfg.mu]:
                candidate = self._fit_mtl(method, mu, x, W0=w0)
                self.predictor.head.load_solution(candidate.L, candidate.S, candidate.bias)
                val = self._evaluate("val")["accuracy"]["total"]
                self.log.info("%s: mu=%g gives validation accuracy %.2f%%", method, mu, 100 * val)
                if best is None or val > best[0]:
                    best = (val, mu, candidate)
            val, mu, result = best
            self.state.chosen[method] = {"mu": mu, "val_accuracy": val}
        self.predictor.head.load_solution(result.L, result.S, result.bias)
        if self.cfg.train.keep_best:
            self._keep_if_best(method, rnd, val if not warm else None)
        if self.cfg.train.dist_debug:
            for name in ("L", "S", "bias"):
                distributed.assert_same_on_all_ranks(
                    getattr(self.predictor.head, name), f"{method} round {rnd}: {name}"
                )
        self.state.histories.setdefault(method, []).append([float(v) for v in result.history])
        self.run.log_metrics(
            self.state.completed,
            method=method,
            phase="solve",
            round=rnd,
            objective=float(result.history[-1]),
            outer_iterations=int(result.n_iter),
            converged=bool(result.converged),
        )
        self.log.info(
            "%s round %d: solver objective %.5g after %d outer iterations",
            method,
            rnd,
            result.history[-1],
            result.n_iter,
        )

    def _fit_mtl(self, method: str, mu: float, x: np.ndarray, *, W0=None, L0=None, S0=None):
        """fit_alternating on tail features x (n, M, D) of this rank's training rows, penalties
        scaled per sample; under torchrun the solvers all-reduce their sums over samples."""
        from .solvers import fit_alternating

        m_cfg, data = self.cfg.mtl, self.splits["train"]
        rows = self._my_rows(data)
        y, mask = data.targets[rows].cpu().numpy(), data.mask[rows].cpu().numpy()
        schema = self.schema if method == "MG-CNN" else self.schema.with_single_group()
        # penalties are per training sample (see config): n counts the labels of all ranks
        n = float(data.mask.sum(dim=0).float().mean())

        def numpy(t: torch.Tensor | None) -> np.ndarray | None:
            return None if t is None else t.detach().cpu().numpy()

        return fit_alternating(
            x,
            y,
            schema.group_indices,
            mu=mu * n,
            gamma=m_cfg.gamma * n,
            lam=self._mtl_lam() * n,
            K=self.cfg.model.rank,
            mask=mask,
            W0=numpy(W0),
            L0=numpy(L0),
            S0=numpy(S0),
            max_outer=m_cfg.max_outer,
            tol=m_cfg.tol,
            method=m_cfg.method,
            loss=m_cfg.loss,
            bias=True,
            seed=self.cfg.train.seed,
            max_iter=m_cfg.max_iter,
            inner_tol=m_cfg.inner_tol,
            sample_reduce=distributed.all_reduce_sum if self.dist.distributed else None,
            task_weights=None if self.task_weights is None else self.task_weights.cpu().numpy(),
        )

    def _best_path(self, method: str) -> Path:
        return self.run.path / "checkpoints" / f"{method}.best"

    def _keep_if_best(self, method: str, rnd: int, val: float | None) -> None:
        """After a solve: if this round's model has the best validation accuracy of the method so
        far, store it (``checkpoints/<method>.best``) for :meth:`_finish` to return to."""
        from .checkpoint import save_checkpoint

        if val is None:
            val = self._evaluate("val")["accuracy"]["total"]
        record = self.state.chosen.setdefault(method, {})
        record["last_round"] = rnd
        self.log.info("%s round %d: validation accuracy %.2f%%", method, rnd, 100 * val)
        if "best_round" in record and val <= record["best_val_accuracy"]:
            return
        record.update(best_round=rnd, best_val_accuracy=val)
        tensors = {k: v.detach().cpu().clone() for k, v in self.predictor.state_dict().items()}
        self._best_snapshot = tensors  # every rank; the file is for --resume
        if self.dist.is_main:
            save_checkpoint(self._best_path(method), tensors, {"round": rnd, "val_accuracy": val})
        distributed.barrier()

    def _return_to_best(self, method: str) -> None:
        from .checkpoint import load_checkpoint

        record = self.state.chosen.get(method, {})
        if "best_round" not in record:
            return
        if record["best_round"] != record["last_round"]:
            tensors = getattr(self, "_best_snapshot", None)
            if tensors is None:  # resumed after the best round
                tensors, _ = load_checkpoint(self._best_path(method))
            self.predictor.load_state_dict(tensors)
            self.log.info(
                "%s: back to round %d (best validation accuracy %.2f%%)",
                method,
                record["best_round"],
                100 * record["best_val_accuracy"],
            )

    def _finish(self, method: str) -> None:
        from .calibration import calibration_prior, fit_platt
        from .predictor import save_predictor

        if self.cfg.train.keep_best:
            if method == "S-CNN" and "best_round" in self.state.chosen.get(method, {}):
                self._keep_if_best(method, 1, None)  # after the probe (round 0): SGD, round 1
            self._return_to_best(method)

        val_scores = self._scores("val")
        val = self.splits["val"]
        val_targets, val_mask = val.targets.cpu().numpy(), val.mask.cpu().numpy()
        params = fit_platt(val_scores, val_targets, val_mask)
        # the label frequency the calibration was fitted under (zero-shot divides by it)
        prior = [
            None if np.isnan(r) else float(r) for r in calibration_prior(val_targets, val_mask)
        ]
        self.predictor.calibration.copy_(torch.as_tensor(params, dtype=torch.float32))
        metrics = self._evaluate("test")
        self.state.results[method] = metrics
        meta = dict(self.model_meta, rank=int(self.predictor.head.S.shape[0]))
        if self.dist.is_main:
            save_predictor(
                self.run.path / "checkpoints" / method,
                self.predictor,
                model_meta=meta,
                schema=self.schema,
                preprocessing=self.preprocessing,
                config=self.config_dict,
                extra={"method": method, "metrics": metrics, "calibration_prior": prior},
            )
        distributed.barrier()
        self._best_snapshot = None
        if self.dist.is_main:  # the method's final predictor replaces its best-round snapshot
            shutil.rmtree(self._best_path(method), ignore_errors=True)
        if method == "S-CNN":
            self._scnn_snapshot = copy.deepcopy(self.predictor.state_dict())
        self.log.info("%s test accuracy %.2f%%", method, 100 * metrics["accuracy"]["total"])

    def _restore_scnn(self) -> None:
        """M-CNN and MG-CNN both start from S-CNN's fine-tuned tails."""
        from .models.latent import LatentTaskLayer

        m = self.schema.num_attributes
        self.predictor.head = LatentTaskLayer(
            self.predictor.cnn.feature_dim, num_latent=m, num_attributes=m
        ).to(self.device, self.dtype)
        self.predictor.load_state_dict(self._scnn_state())

    def _scnn_state(self) -> dict[str, torch.Tensor]:
        snapshot = getattr(self, "_scnn_snapshot", None)
        if snapshot is None:
            from .checkpoint import load_checkpoint

            snapshot, _ = load_checkpoint(self.run.path / "checkpoints" / "S-CNN")
        return snapshot

    # ------------------------------------------------------------------ evaluation
    def _my_rows(self, data: SplitData) -> slice:
        """This rank's contiguous shard of a split's rows (all rows in one process)."""
        return slice(*distributed.shard_range(len(data), self.dist.rank, self.dist.world_size))

    @torch.inference_mode()
    def _tail_features(self, data: SplitData, rows: slice) -> np.ndarray:
        """X (n, M, D) of ``rows`` from the current tails, in eval mode (float32, or float64
        with ``train.precision=float64``: the solvers then work in that precision)."""
        self.predictor.eval()
        out = []
        for chunk in self._trunk_batches(data, rows):
            with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
                feats = self.predictor.cnn.forward_tails(chunk)
            out.append(feats.to(self.dtype).cpu())
        return torch.cat(out).numpy()

    @torch.inference_mode()
    def _scores(self, split: str) -> np.ndarray:
        """(N, M) scores of a split, in dataset order: each rank scores its shard, once."""
        self.predictor.eval()
        data = self.splits[split]
        m = self.schema.num_attributes
        out = [torch.zeros(0, m)]
        for chunk in self._trunk_batches(data, self._my_rows(data)):
            with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
                out.append(self.predictor.forward_from_trunk(chunk).float().cpu())
        return distributed.gather_rows(torch.cat(out), len(data)).numpy()

    def _evaluate(self, split: str) -> dict[str, Any]:
        from .metrics import attribute_metrics

        data = self.splits[split]
        return attribute_metrics(
            self._scores(split), data.targets.cpu().numpy(), data.mask.cpu().numpy(), self.schema
        )

    # ------------------------------------------------------------------ checkpoints
    def _state_path(self) -> Path:
        return self.run.path / "checkpoints" / "state"

    def _save_state(self) -> None:
        from .checkpoint import flatten_state_dict, save_checkpoint

        if not self.dist.is_main:  # every rank holds the same state; rank 0 writes it
            distributed.barrier()
            return
        tensors = {
            f"model.{k}": v.detach().cpu().contiguous()
            for k, v in self.predictor.state_dict().items()
        }
        opt_meta = None
        if self.optimizer is not None:
            opt_tensors, opt_meta = flatten_state_dict(self.optimizer.state_dict())
            tensors.update({f"optim.{k}": v for k, v in opt_tensors.items()})
        meta = {
            "completed": self.state.completed,
            "plan": [list(p) for p in self.plan],
            "results": self.state.results,
            "histories": self.state.histories,
            "chosen": self.state.chosen,
            "rank": int(self.predictor.head.S.shape[0]),
            "optimizer": opt_meta,
            "config": self.config_dict,
            "world_size": self.dist.world_size,
        }
        save_checkpoint(self._state_path(), tensors, meta)
        distributed.barrier()

    def _load_state(self) -> None:
        from .checkpoint import load_checkpoint, unflatten_state_dict
        from .models.latent import LatentTaskLayer

        path = self._state_path()
        try:
            tensors, meta = load_checkpoint(path)
        except FileNotFoundError:
            self.log.info("no checkpoint in %s: starting from scratch", path.parent)
            return
        if meta["plan"] != [list(p) for p in self.plan]:
            from .checkpoint import CheckpointError

            raise CheckpointError(
                f"{path}: the run was started with a different schedule; resume with the "
                "config saved in the run folder or start a new --out folder"
            )
        m, rank = self.schema.num_attributes, int(meta["rank"])
        self.predictor.head = LatentTaskLayer(
            self.predictor.cnn.feature_dim, num_latent=rank, num_attributes=m
        ).to(self.device, self.dtype)
        model = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
        self.predictor.load_state_dict(model)
        self.state = TrainState(
            completed=int(meta["completed"]),
            results=meta["results"],
            histories=meta["histories"],
            chosen=meta.get("chosen", {}),
        )
        if meta["optimizer"] is not None and self.state.completed < len(self.plan):
            method = self.plan[self.state.completed - 1][0] if self.state.completed else "S-CNN"
            next_method, next_kind, _, next_epoch = self.plan[self.state.completed]
            if next_kind == "sgd" and next_epoch > 0 and next_method == method:
                self.optimizer = self._new_optimizer(next_method)
                opt = {k[len("optim.") :]: v for k, v in tensors.items() if k.startswith("optim.")}
                self.optimizer.load_state_dict(unflatten_state_dict(opt, meta["optimizer"]))
        self.log.info("resumed after step %d of %d", self.state.completed, len(self.plan))


def hash_seed(seed: int, method: str, rnd: int, epoch: int) -> int:
    """A generator seed that depends only on the run seed and the step (stable across runs)."""
    import zlib

    return zlib.crc32(f"{seed}/{method}/{rnd}/{epoch}".encode()) & 0x7FFFFFFF


# ------------------------------------------------------------------------------ entry points
def train(cfg: Any, *, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Train every method of ``cfg.train.methods`` and write the run folder ``cfg.run.out``.

    A folder that already holds a run is continued with ``resume=True``, replaced with
    ``overwrite=True`` and otherwise refused (nothing is lost by accident).

    Returns ``{"results": {method: metrics}, "histories": ..., "schema": AttributeSchema,
    "S": final S, "W": final W, "seconds": wall time}``.
    """
    from .config import check_data_root

    check_data_root(cfg)
    # under torchrun (WORLD_SIZE > 1) join the process group first: every rank runs this
    dist = distributed.init_distributed(
        resolve_device(cfg.train.device).type, cfg.train.dist_timeout
    )
    try:
        return _train(cfg, dist, resume=resume, overwrite=overwrite)
    except RuntimeError as exc:
        if not dist.distributed or isinstance(exc, (DistributedRunError,)):
            raise
        # a peer died or stalled inside a collective: one line instead of a gloo/NCCL traceback
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DistributedRunError(
            f"rank {dist.rank}: a collective with the other ranks failed ({first[:200]}); "
            "another rank probably died or stalled (torchrun names it); the run folder keeps "
            "the last completed step: rerun with --resume"
        ) from None
    finally:
        distributed.cleanup()


class DistributedRunError(RuntimeError):
    """A rank lost its peers mid-run; the message names the rank and how to continue."""


def _train(cfg: Any, dist: Any, *, resume: bool, overwrite: bool) -> dict[str, Any]:
    from .config import save_config
    from .runlog import RunDir, seed_everything

    state = Path(cfg.run.out) / "checkpoints" / "state"
    exists = state.exists()
    distributed.barrier()  # every rank has looked before rank 0 may delete anything
    if exists and not resume:
        if not overwrite:
            from .config import ConfigError

            raise ConfigError(
                f"run folder {cfg.run.out} already holds a run; pass --resume to continue it or "
                "--out DIR for a new one"
            )
        if dist.is_main:
            for name in ("checkpoints", "metrics.jsonl", "metrics.json", "train.log"):
                target = Path(cfg.run.out) / name
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()
        distributed.barrier()
    start = time.time()
    seed_everything(cfg.train.seed)
    with RunDir(cfg.run.out) as run:
        if run.is_main:
            save_config(cfg, run.path / "config.yaml")
            run.write_environment(seed=cfg.train.seed, extra={"world_size": dist.world_size})
        trainer = Trainer(cfg, run, resume=resume)
        results = trainer.run_plan()
        head = trainer.predictor.head
        out = {
            "results": results,
            "histories": trainer.state.histories,
            "chosen": trainer.state.chosen,
            "schema": trainer.schema,
            "S": head.S.detach().cpu().numpy(),
            "W": (head.L @ head.S).detach().cpu().numpy(),
            "seconds": time.time() - start,
        }
        write_run_outputs(run, cfg, out)
    return out


def write_run_outputs(run: Any, cfg: Any, out: dict[str, Any]) -> None:
    """metrics.json (results.json fields per method) and report.md in the run folder."""
    from .metrics import method_block
    from .reports import write_report

    if not run.is_main:
        return
    schema = out["schema"]
    methods = {name: method_block([m], schema) for name, m in out["results"].items()}
    results = {
        "protocol": {
            "dataset": cfg.data.name,
            "fold": cfg.data.fold,
            "folds": cfg.data.folds,
            "seed": cfg.train.seed,
        },
        "methods": methods,
        "chosen_hyperparameters": out.get("chosen", {}),
        "seconds": out["seconds"],
    }
    run.save_json("metrics.json", results)
    history = None
    if out["histories"]:
        history = [v for solve in out["histories"][list(out["histories"])[-1]] for v in solve]
    write_report(run.path, results, schema=schema, S=out["S"], W=out["W"], history=history)
    out["results_json"] = results


def train_from_config(
    *, config_path: str | None, overrides: list[str], out: str | None, resume: bool
) -> dict[str, Any]:
    from .config import TrainConfig, load_config
    from .reports import format_table

    all_overrides = list(overrides) + ([f"run.out={out}"] if out else [])
    cfg = load_config(TrainConfig, config_path, all_overrides)
    result = train(cfg, resume=resume)
    if "results_json" in result:  # rank 0 (the only rank that writes)
        print(format_table(result["results_json"], None, title="accuracy (%) on the test split"))
    return result
