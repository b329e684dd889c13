"""The deployable predictor: attribute-specific CNNs, the multi-task layer W = L S, calibration.

A predictor is rebuilt from its checkpoint alone (safetensors + JSON, never unpickled): the JSON
names the backbone architecture, the tail split, the attribute schema and the preprocessing; the
safetensors file holds every weight, the pretrained trunk included.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import __version__
from .data.schema import AttributeSchema

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


def build_predictor(model_meta: dict[str, Any], *, pretrained: bool) -> AttributePredictor:
    """Build the architecture described by ``model_meta`` (weights from ImageNet or none)."""
    from .models.backbone import create_backbone
    from .models.fc_tail import build_attribute_cnn
    from .models.latent import LatentTaskLayer

    backbone, _ = create_backbone(
        model_meta["backbone"], weights=model_meta["weights"] if pretrained else "none"
    )
    cnn = build_attribute_cnn(
        backbone,
        num_attributes=model_meta["num_attributes"],
        tail=model_meta["tail"],
        freeze_trunk=model_meta.get("freeze_trunk", True),
        pool_region=model_meta.get("pool_region"),
        flip_average=model_meta.get("flip_average", False),
    )
    head = LatentTaskLayer(
        cnn.feature_dim, num_latent=model_meta["rank"], num_attributes=model_meta["num_attributes"]
    )
    return AttributePredictor(cnn, head, model_meta["num_attributes"])


def save_predictor(
    path: str | Path,
    predictor: AttributePredictor,
    *,
    model_meta: dict[str, Any],
    schema: AttributeSchema,
    preprocessing: dict[str, Any],
    config: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> None:
    from .checkpoint import save_checkpoint

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


def load_predictor(path: str | Path) -> tuple[AttributePredictor, dict[str, Any]]:
    """Rebuild a predictor from a checkpoint written by :func:`save_predictor`."""
    from .checkpoint import CheckpointError, load_checkpoint

    tensors, meta = load_checkpoint(path)
    if meta.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: not an apcnn predictor checkpoint (format {meta.get('format')!r}, "
            f"expected {FORMAT!r}); pass a file from a run's checkpoints/ folder"
        )
    predictor = build_predictor(meta["model"], pretrained=False)
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
