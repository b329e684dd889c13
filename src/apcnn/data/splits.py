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


# ------------------------------------------------------------------ label budgets
#: the splits whose labels data.label_fraction thins (the test split keeps every label)
LABEL_FRACTION_SPLITS = ("train", "val")


def label_fraction_mask(
    targets: np.ndarray,
    mask: np.ndarray,
    fraction: float,
    *,
    seed: int = 0,
    stream: Sequence[int] = (),
    columns: Sequence[int] | None = None,
) -> np.ndarray:
    """(N, M) bool: the labels kept when only ``fraction`` of each attribute's labels is used.

    Stratified per attribute m and class c in {-1, +1}: of the ``n_mc`` labelled rows of that
    class, the first ``k_mc = max(1, floor(fraction * n_mc + 1/2))`` (round half up; 0 when
    ``n_mc = 0``) of one random order are kept. The order is
    ``default_rng([seed, *stream, columns[m], c > 0]).permutation(n_mc)``: it does not depend on
    ``fraction``, so budgets are nested (the 5 % subset lies inside the 10 % one), and it is the
    same on every machine. ``fraction == 1`` returns ``mask`` itself (a copy).

    Args:
        targets: (N, M) in {-1, +1}, 0 where missing.
        mask: (N, M) bool, True = labelled.
        fraction: in (0, 1].
        seed, stream: non-negative ints that name the draw (e.g. split seed, fold, split).
        columns: (M,) stream id of each column (default ``0..M-1``), so that columns of another
            array can get their own draws.
    """
    y = np.asarray(targets)
    known = np.asarray(mask, dtype=bool)
    if y.ndim != 2 or known.shape != y.shape:
        raise ValueError(f"targets {y.shape} and mask {known.shape} must be equal (N, M) shapes")
    if not 0.0 < float(fraction) <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    cols = list(range(y.shape[1])) if columns is None else [int(c) for c in columns]
    if len(cols) != y.shape[1]:
        raise ValueError(f"columns has {len(cols)} entries for {y.shape[1]} columns")
    keep = known.copy()
    if float(fraction) == 1.0:
        return keep
    keep[:] = False
    for m, col in enumerate(cols):
        for positive in (False, True):
            rows = np.flatnonzero(known[:, m] & ((y[:, m] > 0) if positive else (y[:, m] < 0)))
            if not len(rows):
                continue
            k = max(1, int(np.floor(float(fraction) * len(rows) + 0.5)))
            rng = np.random.default_rng([seed, *stream, col, int(positive)])
            order = rng.permutation(len(rows))
            keep[rows[order[:k]], m] = True
    return keep


def thin_labels(
    source: Any, split_rows: dict[str, np.ndarray], fraction: float, *, seed: int, fold: int
) -> Any:
    """``source`` with only ``fraction`` of the labels of each split in ``split_rows`` kept
    (:func:`label_fraction_mask` per split and attribute, stream ``(fold, split)``); the other
    entries are masked and their targets set to 0, so no consumer can see them. Rows of
    ``source`` in no listed split (the test split) are untouched. A shallow copy that shares
    the images (and the feature cache: its ``cache_key`` does not depend on labels);
    ``fraction == 1`` returns ``source`` itself."""
    import copy

    if float(fraction) == 1.0:
        return source
    mask = np.asarray(source.mask, dtype=bool).copy()
    for split, rows in split_rows.items():
        rows = np.asarray(rows, dtype=np.int64)
        code = LABEL_FRACTION_SPLITS.index(split)
        mask[rows] = label_fraction_mask(
            source.targets[rows], mask[rows], fraction, seed=seed, stream=(fold, code)
        )
    thinned = copy.copy(source)
    thinned.mask = mask
    thinned.targets = np.where(mask, source.targets, np.float32(0.0)).astype(np.float32)
    return thinned


# ------------------------------------------------------------------ the split protocol
def build_datasets(cfg: Any, transform: Any) -> dict[str, tuple[Any, np.ndarray]]:
    """train / val / test as ``{split: (source dataset, indices into it)}``.

    Datasets with official splits use them (``train``, ``val`` when present, ``test``); those
    without (Clothing) use the seeded k-fold protocol of docs/design.md section 2 on ``all``: fold
    ``data.fold`` of ``data.folds`` is the test set. Without an official ``val`` split, a seeded
    ``data.val_fraction`` of the training part is held out for calibration and monitoring.
    Splits that come from one source share its cached trunk features.

    ``data.label_fraction`` < 1: the train and val splits keep a stratified share of each
    attribute's labels (:func:`thin_labels`; seeded by ``data.split_seed`` and ``data.fold``),
    the rest is missing; test labels are never touched.

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
        return _thin(out, d)
    full = create_dataset(d.name, split="all", **kwargs)
    if not 0 <= d.fold < d.folds:
        from ..config import ConfigError

        raise ConfigError(f"data.fold={d.fold} is outside 0..{d.folds - 1} (data.folds={d.folds})")
    train_idx, test_idx = kfold_indices(len(full), d.folds, d.split_seed)[d.fold]
    tr, va = train_val_split(np.asarray(train_idx), d.val_fraction, d.split_seed)
    out = {
        "train": (full, np.asarray(tr)),
        "val": (full, np.asarray(va)),
        "test": (full, np.asarray(test_idx)),
    }
    return _thin(out, d)


def _thin(datasets: dict[str, tuple[Any, np.ndarray]], d: Any) -> dict[str, tuple[Any, np.ndarray]]:
    """``data.label_fraction`` applied to the train and val splits of ``datasets``: each source
    is replaced (for every split that reads it, so splits of one source still share it) by its
    :func:`thin_labels` copy."""
    fraction = float(getattr(d, "label_fraction", 1.0))
    if fraction == 1.0:
        return datasets
    sources = {id(src): src for src, _ in datasets.values()}
    thinned = {}
    for key, src in sources.items():
        rows = {
            split: idx
            for split, (s, idx) in datasets.items()
            if s is src and split in LABEL_FRACTION_SPLITS
        }
        thinned[key] = (
            thin_labels(src, rows, fraction, seed=d.split_seed, fold=d.fold) if rows else src
        )
    return {split: (thinned[id(src)], idx) for split, (src, idx) in datasets.items()}


def available_splits(name: str, root: str | None = None) -> tuple[str, ...]:
    from . import dataset_splits

    return tuple(dataset_splits(name, root=root))


__all__ = [
    "LABEL_FRACTION_SPLITS",
    "available_splits",
    "build_datasets",
    "indices_of_classes",
    "kfold_indices",
    "label_fraction_mask",
    "seen_unseen_classes",
    "seen_unseen_split",
    "thin_labels",
    "train_val_split",
]
