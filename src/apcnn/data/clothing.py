"""Clothing Attribute Dataset (Chen, Gallagher, Girod, ECCV 2012): ``create_dataset("clothing")``.

Layout (``root`` is ``ClothingAttributeDataset/`` or its parent)::

    images/000001.jpg ... 001856.jpg     image i = i-th file in sorted name order
    labels/<attribute>_GT.mat            MATLAB, variable GT, shape (N, 1) float64, NaN = missing

Coding: the 23 binary attributes are 1 = no / 2 = yes (``gender`` 1 = male, 2 = female;
``skin_exposure`` 1 = low, 2 = high) and map to ``-1 / +1``; NaN (the six annotators disagreed)
is *missing*, never a negative. Default schema: the paper's 23 attributes in the four groups of
its Table II, in this order: colors (11), patterns (6), cloth_parts (4), appearance (2).

``include_multiclass=True`` appends the three multi-class attributes as one-vs-rest binary
attributes (kind ``"multiclass"``), each in its own group, with ``schema.multiclass`` filled:
``sleevelength`` (no_sleeves, short_sleeves, long_sleeves), ``neckline`` (v_shape, round, other),
``category`` (shirt, sweater, t_shirt, outerwear, suit, tank_top, dress; order of the dataset's
own README). Member ``j`` is +1 when the value is ``j + 1``, else -1; NaN masks all members.

There is no official split (``split="all"``); the benchmark protocol is 5-fold cross-validation
with :func:`apcnn.data.splits.kfold_indices`. Images have no class (``class_ids == -1``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from apcnn.data.base import AttributeDataset, find_root
from apcnn.data.errors import LabelShapeError, LabelValueError, MissingFileError
from apcnn.data.images import is_image_file
from apcnn.data.registry import register_dataset
from apcnn.data.schema import BINARY, MULTICLASS, AttributeSchema, MultiClassAttribute

GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "colors",
        (
            "black",
            "blue",
            "brown",
            "cyan",
            "gray",
            "green",
            "many_colors",
            "red",
            "purple",
            "white",
            "yellow",
        ),
    ),
    (
        "patterns",
        (
            "pattern_floral",
            "pattern_graphics",
            "pattern_plaid",
            "pattern_solid",
            "pattern_stripe",
            "pattern_spot",
        ),
    ),
    ("cloth_parts", ("necktie", "scarf", "placket", "collar")),
    ("appearance", ("skin_exposure", "gender")),
)
BINARY_ATTRIBUTES: tuple[str, ...] = tuple(a for _, names in GROUPS for a in names)
MULTICLASS_ATTRIBUTES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("sleevelength", ("no_sleeves", "short_sleeves", "long_sleeves")),
    ("neckline", ("v_shape", "round", "other")),
    ("category", ("shirt", "sweater", "t_shirt", "outerwear", "suit", "tank_top", "dress")),
)


def clothing_schema(include_multiclass: bool = False) -> AttributeSchema:
    """The schema of :class:`ClothingAttributes` (no files needed)."""
    names = list(BINARY_ATTRIBUTES)
    groups: list[tuple[str, tuple[int, ...]]] = []
    for g, attrs in GROUPS:
        groups.append((g, tuple(names.index(a) for a in attrs)))
    kinds = [BINARY] * len(names)
    multiclass = []
    if include_multiclass:
        for attr, labels in MULTICLASS_ATTRIBUTES:
            members = tuple(range(len(names), len(names) + len(labels)))
            names += [f"{attr}_{lab}" for lab in labels]
            kinds += [MULTICLASS] * len(labels)
            groups.append((attr, members))
            multiclass.append(MultiClassAttribute(attr, members, labels))
    return AttributeSchema(
        names=tuple(names), groups=tuple(groups), kinds=tuple(kinds), multiclass=tuple(multiclass)
    )


def read_gt(path: Path, n_images: int) -> np.ndarray:
    """``loadmat(path)['GT']`` as a float64 vector of length ``n_images`` (NaN = missing)."""
    import scipy.io

    if not path.is_file():
        raise MissingFileError(
            f"{path}: label file not found; every attribute needs labels/<attribute>_GT.mat "
            "from the dataset archive"
        )
    try:
        mat = scipy.io.loadmat(str(path))
    except Exception as e:  # scipy raises several types for damaged files
        raise LabelValueError(f"{path}: cannot read MATLAB file ({e}); restore it") from None
    if "GT" not in mat:
        keys = sorted(k for k in mat if not k.startswith("__"))
        raise LabelValueError(f"{path}: no variable 'GT' (found {keys}); restore the file")
    gt = np.asarray(mat["GT"], dtype=np.float64)
    if gt.ndim != 2 or 1 not in gt.shape or gt.size != n_images:
        raise LabelShapeError(
            f"{path}: GT has shape {gt.shape} but images/ holds {n_images} images; expected "
            f"({n_images}, 1): one row per image in sorted file order"
        )
    return gt.reshape(-1)


@register_dataset("clothing")
class ClothingAttributes(AttributeDataset):
    """Clothing Attribute Dataset; see the module docstring for layout, coding and groups."""

    SPLITS = ("all",)

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        *,
        split: str = "all",
        transform=None,
        image_size: int = 224,
        include_multiclass: bool = False,
        check_images: bool = False,
        skip_bad_images: bool = False,
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self._check_split(split)
        base = find_root("clothing", root, "ClothingAttributeDataset", "labels")
        img_dir = base / "images"
        if not img_dir.is_dir():
            raise MissingFileError(
                f"{img_dir}: images folder not found; expected images/000001.jpg ..."
            )
        files = sorted(f for f in os.listdir(img_dir) if is_image_file(f))
        if not files:
            raise MissingFileError(f"{img_dir}: no image files; expected images/000001.jpg ...")
        schema = clothing_schema(include_multiclass)
        n = len(files)
        targets = np.zeros((n, schema.num_attributes), dtype=np.float32)
        for m, attr in enumerate(BINARY_ATTRIBUTES):
            gt = read_gt(base / "labels" / f"{attr}_GT.mat", n)
            _check_codes(base / "labels" / f"{attr}_GT.mat", gt, 2)
            targets[:, m] = np.where(np.isnan(gt), 0.0, np.where(gt == 2, 1.0, -1.0))
        for mc in schema.multiclass:
            path = base / "labels" / f"{mc.name}_GT.mat"
            gt = read_gt(path, n)
            _check_codes(path, gt, len(mc.labels))
            for j, col in enumerate(mc.members):
                targets[:, col] = np.where(np.isnan(gt), 0.0, np.where(gt == j + 1, 1.0, -1.0))
        super().__init__(
            schema=schema,
            targets=targets,
            mask=targets != 0,
            sample_ids=[f"images/{f}" for f in files],
            sources=[img_dir / f for f in files],
            transform=transform,
            image_size=image_size,
            root=base,
            split=split,
            options={"include_multiclass": bool(include_multiclass), "image_size": image_size},
            check_images=check_images,
            skip_bad_images=skip_bad_images,
            cache_dir=cache_dir,
        )


def _check_codes(path: Path, gt: np.ndarray, k: int) -> None:
    vals = gt[~np.isnan(gt)]
    bad = vals[~np.isin(vals, np.arange(1, k + 1))]
    if bad.size:
        row = int(np.flatnonzero(~np.isnan(gt) & ~np.isin(gt, np.arange(1, k + 1)))[0]) + 1
        raise LabelValueError(
            f"{path}: value {bad[0]:g} in row {row}; expected 1..{k} or NaN (missing)"
        )


__all__ = ["BINARY_ATTRIBUTES", "GROUPS", "ClothingAttributes", "clothing_schema", "read_gt"]
