"""The deployable predictor: attribute-specific CNNs, the multi-task layer W = L S, calibration.

A predictor is rebuilt from its checkpoint alone (safetensors + JSON, never unpickled): the JSON
holds the model's :class:`~apcnn.models.spec.ModelSpec` (backbone architecture, tail split, rank,
preprocessing) and the attribute schema; the safetensors file holds every weight, the pretrained
trunk included.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import __version__
from .data.schema import AttributeSchema
from .models.spec import ModelSpec, model_fields

FORMAT = "apcnn.predictor/1"


class AttributePredictor(nn.Module):
    """images (B, 3, H, W) -> scores (B, M) = [x_m(i)^T L s_m + b_m]_m.

    ``cnn`` maps images to attribute-specific features (B, M, D); ``head`` is a
    :class:`~apcnn.models.latent.LatentTaskLayer`; ``calibration`` (2, M) holds the Platt slopes
    and offsets turning scores into probabilities.
    """

    def __init__(self, cnn: nn.Module, head: nn.Module, num_attributes: int) -> None:
        super().__init__()
        self.cnn = cnn
        self.head = head
        calibration = torch.zeros(2, num_attributes)
        calibration[0] = 1.0
        self.register_buffer("calibration", calibration)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self._to_head(self.cnn(images)))

    def forward_from_trunk(self, trunk_features: torch.Tensor) -> torch.Tensor:
        return self.head(self._to_head(self.cnn.forward_tails(trunk_features)))

    def _to_head(self, features: torch.Tensor) -> torch.Tensor:
        # features may come out of bf16/fp16 autocast; the head works in its own precision
        return features.to(self.head.L.dtype)

    def probabilities(self, scores: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(scores * self.calibration[0] + self.calibration[1])


def build_predictor(spec: ModelSpec | Mapping[str, Any], *, pretrained: bool) -> AttributePredictor:
    """Build the architecture ``spec`` describes, with ImageNet weights (``pretrained``) or none.

    ``spec``: a :class:`~apcnn.models.spec.ModelSpec`, or (the older call, still accepted) a
    checkpoint's ``model`` dict, checked by :func:`~apcnn.models.spec.model_fields`.
    """
    from .models.backbone import create_backbone
    from .models.fc_tail import build_attribute_cnn
    from .models.latent import LatentTaskLayer

    f = vars(spec) if isinstance(spec, ModelSpec) else model_fields(spec)
    backbone, _ = create_backbone(f["backbone"], weights=f["weights"] if pretrained else "none")
    cnn = build_attribute_cnn(
        backbone,
        num_attributes=f["num_attributes"],
        tail=f["tail"],
        freeze_trunk=f["freeze_trunk"],
        pool_region=f["pool_region"],
        flip_average=f["flip_average"],
    )
    if f["feature_dim"] is not None and f["feature_dim"] != cnn.feature_dim:
        raise ValueError(
            f"model.feature_dim is {f['feature_dim']} but {f['backbone']} with tail "
            f"{f['tail']!r} gives {cnn.feature_dim}-dimensional features"
        )
    head = LatentTaskLayer(
        cnn.feature_dim, num_latent=f["rank"], num_attributes=f["num_attributes"]
    )
    return AttributePredictor(cnn, head, f["num_attributes"])


def save_predictor(
    path: str | Path,
    predictor: AttributePredictor,
    *,
    spec: ModelSpec | None = None,
    schema: AttributeSchema,
    config: dict[str, Any],
    extra: dict[str, Any] | None = None,
    model_meta: dict[str, Any] | None = None,
    preprocessing: dict[str, Any] | None = None,
) -> None:
    """Write ``predictor`` as a checkpoint: its weights, and as JSON its ``spec`` (the ``model``
    and ``preprocessing`` entries), ``schema``, training ``config`` and ``extra`` entries.

    ``model_meta`` and ``preprocessing`` (the dicts, instead of ``spec``): the older call, still
    accepted; they are checked by :meth:`ModelSpec.from_checkpoint_meta` and written as given.
    """
    from .checkpoint import save_checkpoint

    if spec is None:
        if model_meta is None or preprocessing is None:
            raise TypeError("save_predictor needs spec= (or both model_meta= and preprocessing=)")
        ModelSpec.from_checkpoint_meta(model_meta, preprocessing)  # fail here, not at load time
    elif model_meta is not None or preprocessing is not None:
        raise TypeError("pass spec= or model_meta=/preprocessing=, not both")
    else:
        model_meta, preprocessing = spec.model_dict(), spec.preprocessing_dict()
    tensors = {k: v.detach().cpu().contiguous() for k, v in predictor.state_dict().items()}
    meta = {
        "format": FORMAT,
        "apcnn_version": __version__,
        "model": model_meta,
        "schema": schema.to_dict(),
        "preprocessing": preprocessing,
        "config": config,
        **(extra or {}),
    }
    save_checkpoint(path, tensors, meta)


def checkpoint_spec(meta: Mapping[str, Any], path: str | Path = "checkpoint") -> ModelSpec:
    """The :class:`~apcnn.models.spec.ModelSpec` of a predictor checkpoint's ``meta``;
    :class:`~apcnn.checkpoint.CheckpointError` naming ``path`` and the key when it is invalid."""
    from .checkpoint import CheckpointError

    try:
        return ModelSpec.from_meta(meta)
    except ValueError as exc:
        raise CheckpointError(f"{path}: invalid model description: {exc}") from None


def load_predictor(path: str | Path) -> tuple[AttributePredictor, dict[str, Any]]:
    """Rebuild a predictor from a checkpoint written by :func:`save_predictor`; returns it (in
    eval mode) and the checkpoint's meta (``checkpoint_spec(meta)`` reads its spec)."""
    from .checkpoint import CheckpointError, load_checkpoint

    tensors, meta = load_checkpoint(path)
    if meta.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: not an apcnn predictor checkpoint (format {meta.get('format')!r}, "
            f"expected {FORMAT!r}); pass a file from a run's checkpoints/ folder"
        )
    spec = checkpoint_spec(meta, path)
    try:
        predictor = build_predictor(spec, pretrained=False)
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    missing, unexpected = predictor.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not match the architecture it names "
            f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})"
        )
    predictor.eval()
    return predictor, meta


def decisions_from_scores(
    scores: np.ndarray, probabilities: np.ndarray, schema: AttributeSchema
) -> list[dict[str, Any]]:
    """Per sample: attribute -> {score, probability, decision}, multi-class attribute -> label."""
    out = []
    for s_row, p_row in zip(scores, probabilities):
        item: dict[str, Any] = {
            "attributes": {
                name: {
                    "score": float(s),
                    "probability": float(p),
                    "decision": bool(s > 0),
                }
                for name, s, p in zip(schema.names, s_row, p_row)
            }
        }
        if schema.multiclass:
            item["multiclass"] = {
                mc.name: mc.labels[int(np.argmax(s_row[list(mc.members)]))]
                for mc in schema.multiclass
            }
        out.append(item)
    return out
