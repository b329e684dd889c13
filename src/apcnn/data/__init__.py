"""Dataset layer: attribute datasets in their published layouts, behind one contract.

Quick start::

    from apcnn.data import create_dataset, list_datasets
    from apcnn.data.splits import kfold_indices

    ds = create_dataset("clothing", root="../shared/data/ClothingAttributeDataset")
    ds.schema.group_names            # ['colors', 'patterns', 'cloth_parts', 'appearance']
    item = ds[0]                     # image (3, 224, 224) float, target (23,), mask (23,), ...
    train, test = kfold_indices(len(ds), k=5, seed=0)[0]
    train_ds = ds.subset(train)

    demo = create_dataset("synthetic", split="train")   # no files needed

Datasets: ``clothing``, ``awa2``, ``awa``, ``celeba``, ``cub``, ``folder``, ``synthetic``.
Submodules: :mod:`~apcnn.data.base` (the contract), :mod:`~apcnn.data.registry`,
:mod:`~apcnn.data.splits`, :mod:`~apcnn.data.transforms`, :mod:`~apcnn.data.images`,
:mod:`~apcnn.data.verify`, :mod:`~apcnn.data.schema`.
"""

from __future__ import annotations

from typing import Any

from apcnn.data.base import AttributeDataset
from apcnn.data.errors import (
    CorruptImageError,
    DatasetError,
    DatasetOptionError,
    DuplicateRowError,
    EncodingError,
    LabelShapeError,
    LabelValueError,
    MissingFileError,
    UnknownClassError,
    UnknownDatasetError,
)
from apcnn.data.registry import (
    create_dataset,
    dataset_options,
    dataset_splits,
    get_dataset_class,
    list_datasets,
    register_dataset,
)
from apcnn.data.schema import AttributeSchema, MultiClassAttribute

_LAZY = {
    "verify_dataset": "apcnn.data.verify",
    "VerifyReport": "apcnn.data.verify",
    "build_transform": "apcnn.data.transforms",
    "default_transform": "apcnn.data.transforms",
    "open_rgb": "apcnn.data.images",
    "kfold_indices": "apcnn.data.splits",
    "train_val_split": "apcnn.data.splits",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'apcnn.data' has no attribute {name!r}")


__all__ = [
    "AttributeDataset",
    "AttributeSchema",
    "CorruptImageError",
    "DatasetError",
    "DatasetOptionError",
    "DuplicateRowError",
    "EncodingError",
    "LabelShapeError",
    "LabelValueError",
    "MissingFileError",
    "MultiClassAttribute",
    "UnknownClassError",
    "UnknownDatasetError",
    "build_transform",
    "create_dataset",
    "dataset_options",
    "dataset_splits",
    "default_transform",
    "get_dataset_class",
    "kfold_indices",
    "list_datasets",
    "open_rgb",
    "register_dataset",
    "train_val_split",
    "verify_dataset",
    "VerifyReport",
]
