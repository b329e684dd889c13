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

from apcnn.data.errors import (  # the error classes: plain Python, imported eagerly
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

# Everything else is imported on first use (PEP 562), so ``import apcnn.data.template`` or
# ``apcnn.data.errors`` costs no NumPy, PIL or torch; name -> module that defines it.
_LAZY = {
    "AttributeDataset": "apcnn.data.base",
    "AttributeSchema": "apcnn.data.schema",
    "MultiClassAttribute": "apcnn.data.schema",
    "create_dataset": "apcnn.data.registry",
    "dataset_options": "apcnn.data.registry",
    "dataset_splits": "apcnn.data.registry",
    "get_dataset_class": "apcnn.data.registry",
    "list_datasets": "apcnn.data.registry",
    "register_dataset": "apcnn.data.registry",
    "verify_dataset": "apcnn.data.verify",
    "VerifyReport": "apcnn.data.verify",
    "build_transform": "apcnn.data.transforms",
    "default_transform": "apcnn.data.transforms",
    "open_rgb": "apcnn.data.images",
    "kfold_indices": "apcnn.data.splits",
    "train_val_split": "apcnn.data.splits",
}


#: submodules, reachable as attributes (``apcnn.data.registry``) like the eager imports were
_SUBMODULES = frozenset(
    "awa base celeba clothing cub folder groups images registry schema splits synthetic "
    "template transforms verify".split()
)


def __getattr__(name: str) -> Any:
    if name in _LAZY or name in _SUBMODULES:
        import importlib

        if name in _SUBMODULES:
            return importlib.import_module(f"{__name__}.{name}")
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'apcnn.data' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


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
