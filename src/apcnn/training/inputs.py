"""Everything that turns a run's splits into tensors for the tails.

The frozen trunk's output is computed once per source dataset and cached on disk
(:class:`apcnn.features.FeatureCache`, keyed by dataset, backbone, weights, transform and pooling);
the tails train on those cached features. With ``train.adapt_blocks=n`` the last n blocks of the
trunk are first fine-tuned on all attributes (:mod:`apcnn.adapt`, on cached maps of the frozen
blocks below; saved in ``checkpoints/adapted_top`` so a resumed run reuses it; with
``train.adapt_gate=validation`` the ImageNet top is put back when a ridge probe on its features
beats the adapted ones on the validation labels, and that reverted top is what is saved) and
every method works on the (kept) adapted trunk, while :meth:`Inputs.pretrained_inputs` still
gives the ImageNet trunk's features. With ``model.flip_average`` the bottom maps of the mirror
images are cached too. With ``model.freeze_trunk=false`` a split keeps its images instead, and
the current trunk runs on them batch by batch (training images augmented with seeded draws, for
exact resume).
Under torchrun the ranks extract contiguous shards and gather them in dataset order.
"""

from __future__ import annotations

import copy
import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import distributed


def cache_root() -> Path:
    """The feature cache's folder: ``$APCNN_CACHE`` or ``~/.cache/apcnn``."""
    return Path(os.environ.get("APCNN_CACHE", Path.home() / ".cache" / "apcnn"))


def hash_seed(seed: int, method: str, rnd: int, epoch: int) -> int:
    """A generator seed that depends only on the run seed and the step (stable across runs)."""
    import zlib

    return zlib.crc32(f"{seed}/{method}/{rnd}/{epoch}".encode()) & 0x7FFFFFFF


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


class Inputs:
    """The splits of one run as tensors for the tails, and the feature caches behind them.

    ``datasets``: ``{split: (source dataset, indices)}`` (:func:`apcnn.data.splits.build_datasets`);
    ``cnn``: the predictor's CNN (its ``forward_trunk``; may be set after construction);
    ``top``: the trunk's top to adapt
    (``train.adapt_blocks``; ``bottom`` the frozen blocks below it), or None.
    Call :meth:`prepare` once to fill :attr:`splits`.
    """

    def __init__(
        self,
        cfg: Any,
        datasets: dict[str, tuple[Any, np.ndarray]],
        *,
        cnn: nn.Module | None,
        backbone_info: Any,
        transform: Any,
        train_transform: Any,
        device: torch.device,
        dtype: torch.dtype,
        amp: torch.dtype | None,
        run: Any,
        bottom: nn.Module | None = None,
        top: nn.Module | None = None,
    ) -> None:
        self.cfg, self.datasets, self.cnn = cfg, datasets, cnn
        self.backbone_info = backbone_info
        self.transform, self.train_transform = transform, train_transform
        self.device, self.dtype, self.amp = device, dtype, amp
        self.run, self.log = run, run.logger
        self.dist = distributed.info()
        self.trainable_trunk = not cfg.model.freeze_trunk
        self.bottom, self.top = bottom, top
        # the pretrained state of the top serves pretrained_inputs (reproduce's *-extract)
        self.pretrained_top = copy.deepcopy(top) if top is not None else None
        self.adaptation: dict[str, Any] | None = None  # history and digest, after prepare()
        self.splits: dict[str, SplitData] = {}

    # ------------------------------------------------------------------ the splits
    def prepare(self) -> dict[str, SplitData]:
        """Trunk features of every split, computed once per source dataset and cached on disk
        (a trainable trunk keeps the splits as datasets of images instead)."""
        features: dict[int, torch.Tensor] = {}
        if self.top is not None:
            features = self._adapted_features()
        for name, (source, indices) in self.datasets.items():
            inputs, images = None, None
            if self.trainable_trunk:
                images = source.subset(indices)
            else:
                if id(source) not in features:
                    features[id(source)] = self._trunk_features(source)
                idx = torch.as_tensor(indices, dtype=torch.long)
                inputs = features[id(source)][idx].to(self.device, self.dtype)
            self.splits[name] = SplitData(
                name=name,
                inputs=inputs,
                images=images,
                targets=torch.as_tensor(
                    source.targets[indices], dtype=torch.float32, device=self.device
                ),
                mask=torch.as_tensor(source.mask[indices], dtype=torch.bool, device=self.device),
                indices=np.asarray(indices),
            )
        fraction = self.cfg.data.label_fraction
        if fraction < 1.0:  # thinned by data.splits.build_datasets
            kept = {n: int(s.mask.sum()) for n, s in self.splits.items() if n != "test"}
            self.log.info(
                "data.label_fraction=%g: kept %s labels (stratified per attribute and class; "
                "test labels untouched)",
                fraction,
                ", ".join(f"{n} {k}" for n, k in kept.items()),
            )
        return self.splits

    def my_rows(self, data: SplitData) -> slice:
        """This rank's contiguous shard of a split's rows (all rows in one process)."""
        return slice(*distributed.shard_range(len(data), self.dist.rank, self.dist.world_size))

    def _loader(self, dataset: Any, **kwargs: Any) -> Any:
        from torch.utils.data import DataLoader

        return DataLoader(dataset, num_workers=self.cfg.data.num_workers, **kwargs)

    def trunk_batches(self, data: SplitData, rows: slice) -> Iterator[torch.Tensor]:
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
                trunk = self.cnn.forward_trunk(images)
            yield trunk.to(self.dtype)

    def augmented_batches(
        self, data: SplitData, batches: list[torch.Tensor], seed: int
    ) -> Iterator[torch.Tensor]:
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

    # ------------------------------------------------------------------ the feature caches
    def _cache(self) -> Any:
        from ..features import FeatureCache

        return FeatureCache(cache_root() / "features")

    def feature_key(self, dataset: Any) -> dict[str, Any]:
        """Feature-cache key of the pretrained trunk's output on ``dataset``."""
        m = self.cfg.model
        key = {
            "dataset": dataset.cache_key(),
            "backbone": m.backbone,
            "weights": self.backbone_info.weights_sha256,
            "tail": str(m.tail),
            "transform": repr(self.transform),
        }
        if m.pool_region is not None:  # absent otherwise: older caches stay valid
            key["pool_region"] = list(m.pool_region)
        if m.flip_average:
            key["flip_average"] = True
        return key

    def _extract(self, fn: Any, dataset: Any, **kwargs: Any) -> torch.Tensor:
        from ..features import extract_features

        return extract_features(
            fn,
            dataset,
            batch_size=self.cfg.train.batch_size,
            num_workers=self.cfg.data.num_workers,
            device=self.device,
            progress=self.run.is_main,
            **kwargs,
        )

    def bottom_maps(self, dataset: Any, *, mirrored: bool = False) -> torch.Tensor:
        """(N, C, H', W') outputs of the frozen blocks below the adapted top, cached on disk
        (they do not depend on the fold: every fold and method reuses them); ``mirrored``: of
        the left-right mirror images."""
        from ..adapt import Mirrored

        key = dict(self.feature_key(dataset), tail="bottom", bottom=self.cfg.train.adapt_blocks)
        key.pop("pool_region", None)
        key.pop("flip_average", None)
        if mirrored:
            key["mirrored"] = True

        def compute() -> torch.Tensor:
            what = "mirror images" if mirrored else "images"
            self.log.info("extracting the frozen bottom's maps (%d %s)", len(dataset), what)
            module = Mirrored(self.bottom) if mirrored else self.bottom
            return self._extract(module, dataset, desc="bottom maps")

        return self._cache().get_or_compute(key, compute)

    def mirror_maps(self, dataset: Any) -> torch.Tensor | None:
        """The bottom maps of the mirror images with ``model.flip_average``, else None."""
        return self.bottom_maps(dataset, mirrored=True) if self.cfg.model.flip_average else None

    def _adapted_features(self) -> dict[int, torch.Tensor]:
        """Adapt the top of the trunk on the training split (or load the adaptation of an
        interrupted run), then ``{id(source): pooled adapted-trunk features}`` of every source."""
        from ..adapt import adapt_top
        from ..checkpoint import load_checkpoint, save_checkpoint

        assert self.top is not None
        t = self.cfg.train
        maps: dict[tuple[int, bool], torch.Tensor | None] = {}  # each source's maps read once

        def read(source: Any, mirrored: bool = False) -> torch.Tensor | None:
            if (id(source), mirrored) not in maps:
                fn = self.mirror_maps if mirrored else self.bottom_maps
                maps[id(source), mirrored] = fn(source)
            return maps[id(source), mirrored]

        path = self.run.path / "checkpoints" / "adapted_top"
        if (path / "meta.json").exists():
            tensors, meta = load_checkpoint(path)
            self.top.load_state_dict(tensors)
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
            mirrored = read(source, True)
            history = adapt_top(
                self.top,
                read(source)[rows_t],
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
                for p in self.top.parameters():
                    p.copy_(distributed.all_reduce_sum(p) / self.dist.world_size)
            if t.adapt_gate == "validation" and not history[-1].get("rejected", False):
                gate = self._validation_gate(read)
                if gate is not None:
                    history[-1]["gate"] = gate
            # saved after the gate: a reverted adaptation is saved as the ImageNet top, so a
            # resumed run reaches the same features
            if self.dist.is_main:
                state = {k: v.detach().cpu().contiguous() for k, v in self.top.state_dict().items()}
                save_checkpoint(path, state, {"history": history})
            distributed.barrier()
        digest = self._top_digest()
        self.adaptation = {"history": history, "digest": digest}
        last = history[-1]
        # rejected by the collapse guard or reverted by the gate: the top is the ImageNet one,
        # and the features are exactly those of pretrained_inputs (S-extract's)
        reverted = last.get("rejected", False) or not (last.get("gate") or {}).get("kept", True)
        features = {}
        for source, _ in self.datasets.values():
            if id(source) not in features:
                features[id(source)] = (
                    self._pretrained_features(source, read)
                    if reverted
                    else self._adapted_top_features(source, read, digest)
                )
        return features

    def _top_digest(self) -> str:
        """A digest of the top's current weights: the adapted features' cache key."""
        from ..features import key_digest

        assert self.top is not None
        return key_digest(
            {
                k: hashlib.sha256(v.cpu().numpy().tobytes()).hexdigest()
                for k, v in self.top.state_dict().items()
            }
        )

    def _adapted_top_features(self, source: Any, read: Any, digest: str) -> torch.Tensor:
        """(N, D) pooled features of the current (adapted) top on ``source``'s bottom maps
        (``read(source, mirrored)``), cached under the top's ``digest``."""
        from ..adapt import top_features

        return self._cache().get_or_compute(
            dict(self.feature_key(source), adapted=digest),
            lambda: top_features(
                self.top,
                read(source),
                self.cfg.model.pool_region,
                mirrored=read(source, True),
                amp=self.amp,
            ),
        )

    def _pretrained_features(self, source: Any, read: Any = None) -> torch.Tensor:
        """(N, D) pooled features of the ImageNet (pretrained) top on ``source``'s cached bottom
        maps, cached under the frozen trunk's key; ``read(source, mirrored)`` gives the maps
        (default: :meth:`bottom_maps` / :meth:`mirror_maps`)."""
        from ..adapt import top_features

        assert self.pretrained_top is not None
        if read is None:

            def read(src: Any, mirrored: bool = False) -> torch.Tensor | None:
                return self.mirror_maps(src) if mirrored else self.bottom_maps(src)

        return self._cache().get_or_compute(
            self.feature_key(source),
            lambda: top_features(
                self.pretrained_top.to(self.device),
                read(source),
                self.cfg.model.pool_region,
                mirrored=read(source, True),
            ),
        )

    def _validation_gate(self, read: Any) -> dict[str, Any] | None:
        """The adaptation's validation gate (:func:`apcnn.adapt.validation_gate`): a per-attribute
        ridge probe on the adapted and on the ImageNet top's pooled features, fitted on the
        training split, scored on the validation split's labels. When the adapted top loses, the
        ImageNet top is put back (with a WARNING). Returns the gate's record, or None without
        validation labels. Every rank computes it; rank 0's decision is broadcast (the ranks'
        features may differ in the last bits on different devices)."""
        from ..adapt import validation_gate

        if "val" not in self.datasets:
            return None
        (source, rows), (val_source, val_rows) = self.datasets["train"], self.datasets["val"]
        if not np.asarray(val_source.mask[val_rows]).any():
            return None
        digest = self._top_digest()
        pairs = {}
        for name, fn in (
            ("adapted", lambda src: self._adapted_top_features(src, read, digest)),
            ("imagenet", lambda src: self._pretrained_features(src, read)),
        ):
            pairs[name] = (fn(source)[rows].numpy(), fn(val_source)[val_rows].numpy())
        gate = validation_gate(
            pairs["adapted"],
            pairs["imagenet"],
            np.asarray(source.targets[rows]),
            np.asarray(source.mask[rows], dtype=bool),
            np.asarray(val_source.targets[val_rows]),
            np.asarray(val_source.mask[val_rows], dtype=bool),
            seed=self.cfg.train.seed,
        )
        mine = [gate["adapted"], gate["imagenet"], float(gate["kept"])]
        agreed = distributed.all_reduce_sum(
            torch.tensor(mine if self.dist.is_main else [0.0] * 3, dtype=torch.float64)
        ).tolist()
        gate = {"adapted": agreed[0], "imagenet": agreed[1], "kept": agreed[2] > 0.5}
        labels = int(np.asarray(val_source.mask[val_rows]).sum())
        if gate["kept"]:
            self.log.info(
                "trunk adaptation kept by the validation gate: probe accuracy %.2f %% on the "
                "adapted features, %.2f %% on the ImageNet ones (%d validation labels)",
                100 * gate["adapted"],
                100 * gate["imagenet"],
                labels,
            )
            return gate
        assert self.pretrained_top is not None
        self.top.load_state_dict(self.pretrained_top.state_dict())
        self.log.warning(
            "trunk adaptation REVERTED by the validation gate, the ImageNet top is kept: a "
            "per-attribute ridge probe on the adapted features reaches %.2f %% validation "
            "accuracy against %.2f %% on the ImageNet features (%d validation labels). The "
            "adaptation overfits these labels: give more labels, lower train.adapt_epochs, or "
            "set train.adapt_blocks=0 (train.adapt_gate=none keeps the adaptation anyway)",
            100 * gate["adapted"],
            100 * gate["imagenet"],
            labels,
        )
        return gate

    def pretrained_inputs(self, split: str) -> torch.Tensor:
        """A split's trunk features from the pretrained (not adapted) trunk, (n, D) on the
        split's device: ``splits[split].inputs`` when there is no trunk adaptation."""

        data = self.splits[split]
        source, _ = self.datasets[split]
        idx = torch.as_tensor(data.indices, dtype=torch.long)
        if self.pretrained_top is None:
            if self.cfg.model.tail == "fc" and not self.trainable_trunk:
                return data.inputs  # the frozen, pooled ImageNet trunk's cached features
            return self._imagenet_features(source)[idx].to(self.device, self.dtype)
        return self._pretrained_features(source)[idx].to(self.device, self.dtype)

    def _imagenet_features(self, dataset: Any) -> torch.Tensor:
        """(N, D) pooled features of the whole ImageNet network (fresh from the weights file,
        whatever the model trains), cached under the key a frozen fc trunk's features have."""
        from ..models.backbone import create_backbone
        from ..models.fc_tail import PooledTrunk

        def compute() -> torch.Tensor:
            m = self.cfg.model
            backbone, _ = create_backbone(m.backbone, weights=m.weights)
            trunk = PooledTrunk(backbone, m.pool_region, flip_average=m.flip_average)
            self.log.info("extracting ImageNet features (%d images)", len(dataset))
            return self._extract(trunk, dataset)

        key = dict(self.feature_key(dataset), tail="fc")
        return self._cache().get_or_compute(key, compute)

    def _trunk_features(self, dataset: Any) -> torch.Tensor:
        key = self.feature_key(dataset)

        def compute(rows: range) -> torch.Tensor:
            self.log.info("extracting trunk features (%d images)", len(dataset))
            part = dataset if len(rows) == len(dataset) else dataset.subset(list(rows))
            return self._extract(self.cnn.forward_trunk, part, amp=False)

        cache = self._cache()
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
