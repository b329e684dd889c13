"""Dataset registry: ``create_dataset(name, ...)``, ``list_datasets()``, ``@register_dataset``.

Built-in datasets (``clothing``, ``awa2``, ``awa``, ``celeba``, ``cub``, ``folder``,
``synthetic``) register themselves when their module is imported; the registry imports them on
first use, so ``import apcnn.data`` stays cheap. Options are the keyword-only parameters of the
dataset class's ``__init__``; an unknown option raises :class:`DatasetOptionError` listing the
valid ones.
"""

from __future__ import annotations

import importlib
import inspect
import os
from collections.abc import Callable
from typing import Any, TypeVar

from apcnn.data.errors import DatasetOptionError, UnknownDatasetError

_REGISTRY: dict[str, type] = {}
_BUILTIN_MODULES = ("clothing", "awa", "celeba", "cub", "folder", "synthetic")
_loaded = False

T = TypeVar("T", bound=type)


def register_dataset(name: str) -> Callable[[T], T]:
    """Class decorator: register an :class:`AttributeDataset` subclass under ``name``.

    The class must accept ``root``, ``split`` and ``transform`` keywords; its other keyword-only
    parameters are its options.
    """
    key = str(name).lower()

    def deco(cls: T) -> T:
        if key in _REGISTRY and _REGISTRY[key] is not cls:
            raise ValueError(f"dataset name {key!r} is already registered to {_REGISTRY[key]}")
        cls.name = key  # type: ignore[attr-defined]
        _REGISTRY[key] = cls
        return cls

    return deco


def _load_builtins() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for mod in _BUILTIN_MODULES:
            importlib.import_module(f"apcnn.data.{mod}")


def list_datasets() -> list[str]:
    """Registered dataset names, sorted."""
    _load_builtins()
    return sorted(_REGISTRY)


def get_dataset_class(name: str) -> type:
    """The class registered as ``name`` (case-insensitive)."""
    _load_builtins()
    key = str(name).lower()
    if key not in _REGISTRY:
        raise UnknownDatasetError(
            f"unknown dataset {name!r}; valid datasets: {', '.join(sorted(_REGISTRY))}"
        )
    return _REGISTRY[key]


def dataset_options(name: str) -> dict[str, Any]:
    """Options of dataset ``name`` with their defaults (``root``/``split``/``transform`` aside)."""
    sig = inspect.signature(get_dataset_class(name).__init__)
    return {
        p.name: p.default
        for p in sig.parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in ("root", "split", "transform")
    }


def dataset_splits(name: str, root: str | os.PathLike[str] | None = None) -> tuple[str, ...]:
    """Split names dataset ``name`` accepts (its ``SPLITS``), ``"all"`` first.

    With ``root``, datasets whose splits depend on the files (``folder``: only when labels.csv
    has a ``split`` column) report the splits actually present.
    """
    cls = get_dataset_class(name)
    present = getattr(cls, "splits_present", None)
    if root is not None and present is not None:
        return tuple(present(root))
    return tuple(cls.SPLITS)


def create_dataset(
    name: str,
    *,
    root: str | os.PathLike[str] | None = None,
    split: str = "all",
    transform: Callable[[Any], Any] | None = None,
    **options: Any,
):
    """Build dataset ``name`` for ``split``; ``options`` go to its constructor after checking.

    Example: ``create_dataset("clothing", root="data/ClothingAttributeDataset", image_size=224)``.
    """
    cls = get_dataset_class(name)
    valid = dataset_options(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise DatasetOptionError(
            f"dataset {cls.name!r} has no option {', '.join(map(repr, unknown))}; valid options: "
            f"{', '.join(sorted(valid)) or '(none)'}"
        )
    return cls(root=root, split=split, transform=transform, **options)


__all__ = [
    "create_dataset",
    "dataset_options",
    "dataset_splits",
    "get_dataset_class",
    "list_datasets",
    "register_dataset",
]
