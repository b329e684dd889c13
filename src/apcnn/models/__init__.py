"""Neural network modules of apcnn.

Submodules (imported lazily, so ``import apcnn.models`` stays cheap):

- ``backbone``: ``create_backbone``, ``BackboneInfo`` (timm models from local weights)
- ``tails``: ``StackedTail`` (M attribute-specific tail copies as one batched computation)
- ``attribute_cnn``: ``AttributeCNN`` (shared trunk + M tails), ``BaseCNN``, ``MTL``
- ``latent``: ``LatentTaskLayer`` (W = L S)
- ``spec``: ``ModelSpec`` (a trained model's architecture and preprocessing, as checkpoints
  record them)
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "BackboneInfo": "backbone",
    "create_backbone": "backbone",
    "StackedTail": "tails",
    "AttributeCNN": "attribute_cnn",
    "BaseCNN": "attribute_cnn",
    "MTL": "attribute_cnn",
    "LatentTaskLayer": "latent",
    "ModelSpec": "spec",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
