"""Deterministic index splits: k-fold cross-validation, train/val, seen/unseen classes.

All functions are pure: the same arguments give the same arrays on every machine (NumPy's
``default_rng`` PCG64 stream is stable across platforms and versions). Indices are ``int64``
positions into a dataset of length ``n``; use them with ``AttributeDataset.subset``.

Clothing protocol (docs/design.md §2): ``kfold_indices(1856, k=5, seed=0)``: permute ``0..n-1`` with
``np.random.default_rng(seed).permutation(n)``, cut the permutation into ``k`` consecutive folds
with ``np.array_split`` (the first ``n % k`` folds get one extra index), fold ``f`` is the test
set of split ``f`` and the other folds (sorted) its training set.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def _check_int(name: str, value: int, minimum: int) -> int:
    if isinstance(value, bool) or int(value) != value or int(value) < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def kfold_indices(n: int, k: int = 5, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """``k`` (train_idx, test_idx) pairs over ``range(n)``; test folds partition ``range(n)``.

    ``perm = default_rng(seed).permutation(n)``; ``folds = np.array_split(perm, k)``;
    split ``f`` = (``sort(concat(folds[j] for j != f))``, ``sort(folds[f])``).
    """
    n = _check_int("n", n, 1)
    k = _check_int("k", k, 2)
    if k > n:
        raise ValueError(f"k={k} folds need at least k samples, got n={n}")
    perm = np.random.default_rng(seed).permutation(n)
    folds = np.array_split(perm, k)
    out = []
    for f in range(k):
        test = np.sort(folds[f]).astype(np.int64)
        train = np.sort(np.concatenate([folds[j] for j in range(k) if j != f])).astype(np.int64)
        out.append((train, test))
    return out


def train_val_split(
    indices: Sequence[int] | np.ndarray | int, val_fraction: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Split ``indices`` (or ``range(indices)`` for an int) into sorted (train, val) arrays.

    ``n_val = round(val_fraction * n)``, at least 1 when ``0 < val_fraction`` and ``n >= 2``;
    the validation set is the first ``n_val`` entries of ``default_rng(seed).permutation``.
    """
    idx = np.arange(indices) if isinstance(indices, (int, np.integer)) else np.asarray(indices)
    idx = idx.astype(np.int64).ravel()
    if not 0.0 <= float(val_fraction) < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    n = len(idx)
    n_val = int(round(float(val_fraction) * n))
    if val_fraction > 0 and n >= 2:
        n_val = min(max(n_val, 1), n - 1)
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(idx[perm[n_val:]]), np.sort(idx[perm[:n_val]])


def seen_unseen_classes(
    num_classes: int, num_unseen: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """A random (seen, unseen) partition of class ids ``0..num_classes-1`` (both sorted)."""
    c = _check_int("num_classes", num_classes, 2)
    u = _check_int("num_unseen", num_unseen, 1)
    if u >= c:
        raise ValueError(f"num_unseen={u} must be < num_classes={c} (some classes must be seen)")
    perm = np.random.default_rng(seed).permutation(c)
    return np.sort(perm[u:]).astype(np.int64), np.sort(perm[:u]).astype(np.int64)


def indices_of_classes(class_ids: Sequence[int] | np.ndarray, classes: Sequence[int]) -> np.ndarray:
    """Sorted positions ``i`` with ``class_ids[i]`` in ``classes`` (e.g. unseen-class images)."""
    cid = np.asarray(class_ids, dtype=np.int64)
    return np.flatnonzero(np.isin(cid, np.asarray(list(classes), dtype=np.int64))).astype(np.int64)


def seen_unseen_split(
    class_ids: Sequence[int] | np.ndarray, unseen_classes: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """(seen-class sample indices, unseen-class sample indices) for a zero-shot protocol.

    Samples with ``class_id == -1`` (no class) are in neither part.
    """
    cid = np.asarray(class_ids, dtype=np.int64)
    unseen = np.isin(cid, np.asarray(list(unseen_classes), dtype=np.int64))
    seen = (~unseen) & (cid >= 0)
    return np.flatnonzero(seen).astype(np.int64), np.flatnonzero(unseen).astype(np.int64)


# ------------------------------------------------------------------ the split protocol
def build_datasets(cfg: Any, transform: Any) -> dict[str, tuple[Any, np.ndarray]]:
    """train / val / test as ``{split: (source dataset, indices into it)}``.

    Datasets with official splits use them (``train``, ``val`` when present, ``test``); those
    without (Clothing) use the seeded k-fold protocol of docs/design.md section 2 on ``all``: fold
    ``data.fold`` of ``data.folds`` is the test set. Without an official ``val`` split, a seeded
    ``data.val_fraction`` of the training part is held out for calibration and monitoring.
    Splits that come from one source share its cached trunk features.

    ``data.skip_bad_images``: every image is decoded once while the datasets are built
    (``check_images=True``, unless ``data.options`` sets it) and the bad ones are dropped, with a
    warning, before the splits are drawn. (Replacing a bad image later, while loading, would
    leave its row without features, or give it another image's pixels.)
    """
    from . import create_dataset

    d = cfg.data
    kwargs = dict(root=d.root, transform=transform, **(d.options or {}))
    if d.skip_bad_images:
        kwargs["skip_bad_images"] = True
        kwargs.setdefault("check_images", True)
    splits = available_splits(d.name, d.root)
    if "train" in splits and "test" in splits:
        train = create_dataset(d.name, split="train", **kwargs)
        test = create_dataset(d.name, split="test", **kwargs)
        out = {"train": (train, np.arange(len(train))), "test": (test, np.arange(len(test)))}
        if "val" in splits:
            val = create_dataset(d.name, split="val", **kwargs)
            out["val"] = (val, np.arange(len(val)))
        else:
            tr, va = train_val_split(np.arange(len(train)), d.val_fraction, d.split_seed)
            out["train"], out["val"] = (train, np.asarray(tr)), (train, np.asarray(va))
        return out
    full = create_dataset(d.name, split="all", **kwargs)
    if not 0 <= d.fold < d.folds:
        from ..config import ConfigError

        raise ConfigError(f"data.fold={d.fold} is outside 0..{d.folds - 1} (data.folds={d.folds})")
    train_idx, test_idx = kfold_indices(len(full), d.folds, d.split_seed)[d.fold]
    tr, va = train_val_split(np.asarray(train_idx), d.val_fraction, d.split_seed)
    return {
        "train": (full, np.asarray(tr)),
        "val": (full, np.asarray(va)),
        "test": (full, np.asarray(test_idx)),
    }


def available_splits(name: str, root: str | None = None) -> tuple[str, ...]:
    from . import dataset_splits

    return tuple(dataset_splits(name, root=root))


__all__ = [
    "available_splits",
    "build_datasets",
    "indices_of_classes",
    "kfold_indices",
    "seen_unseen_classes",
    "seen_unseen_split",
    "train_val_split",
]
