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

#: decision threshold on the calibrated probability when a checkpoint stores none
DEFAULT_THRESHOLD = 0.5


class AttributePredictor(nn.Module):
    """images (B, 3, H, W) -> scores (B, M) = [x_m(i)^T L s_m + b_m]_m.

    ``cnn`` maps images to attribute-specific features (B, M, D); ``head`` is a
    :class:`~apcnn.models.latent.LatentTaskLayer`; ``calibration`` (2, M) holds the Platt slopes
    and offsets turning scores into probabilities; ``threshold`` (M,) the decision rule on them:
    attribute m is present iff p_m >= threshold_m (:meth:`decisions`; default 0.5). Checkpoints
    written before the threshold existed load with 0.5.
    """

    def __init__(self, cnn: nn.Module, head: nn.Module, num_attributes: int) -> None:
        super().__init__()
        self.cnn = cnn
        self.head = head
        calibration = torch.zeros(2, num_attributes)
        calibration[0] = 1.0
        self.register_buffer("calibration", calibration)
        self.register_buffer("threshold", torch.full((num_attributes,), DEFAULT_THRESHOLD))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001
        # checkpoints and training states written before the threshold existed: keep 0.5
        state_dict.setdefault(prefix + "threshold", self.threshold.detach().clone())
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self._to_head(self.cnn(images)))

    def forward_from_trunk(self, trunk_features: torch.Tensor) -> torch.Tensor:
        return self.head(self._to_head(self.cnn.forward_tails(trunk_features)))

    def _to_head(self, features: torch.Tensor) -> torch.Tensor:
        # features may come out of bf16/fp16 autocast; the head works in its own precision
        return features.to(self.head.L.dtype)

    def probabilities(self, scores: torch.Tensor) -> torch.Tensor:
        """scores (B, M) -> calibrated probabilities sigmoid(a_m * score + c_m) (B, M)."""
        return torch.sigmoid(scores * self.calibration[0] + self.calibration[1])

    def decisions(self, probabilities: torch.Tensor) -> torch.Tensor:
        """probabilities (B, M) -> bool (B, M): p_m >= threshold_m, the one decision rule."""
        return probabilities >= self.threshold.to(probabilities.dtype)


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
        names = AttributeSchema.from_dict(meta["schema"]).names
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: invalid attribute schema ({exc})") from None
    if len(names) != spec.num_attributes:
        raise CheckpointError(
            f"{path}: its schema names {len(names)} attributes but the model has "
            f"{spec.num_attributes} outputs; the checkpoint's meta.json was edited or is damaged"
        )
    try:
        predictor = build_predictor(spec, pretrained=False)
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    try:
        missing, unexpected = predictor.load_state_dict(tensors, strict=False)
    except RuntimeError as exc:  # "size mismatch for head.L: copying a param with shape ..."
        lines = [x.strip() for x in str(exc).splitlines() if "size mismatch" in x]
        first = lines[0] if lines else str(exc).splitlines()[0]
        raise CheckpointError(
            f"{path}: tensor shapes disagree with the model its meta.json describes ({first})"
        ) from None
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not match the architecture it names "
            f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})"
        )
    predictor.eval()
    return predictor, meta


def resolve_thresholds(
    stored: Any, num_attributes: int, override: float | None = None
) -> tuple[np.ndarray, str]:
    """The (M,) float32 decision thresholds and where they come from.

    ``override`` (``apcnn predict --threshold T``) replaces every attribute's threshold with T
    (``"--threshold"``); else ``stored`` (a checkpoint's ``threshold`` buffer or an ONNX
    sidecar's ``thresholds``) is used (``"checkpoint"``); None: :data:`DEFAULT_THRESHOLD`
    (``"default"``).
    """
    if override is not None:
        t = float(override)
        if not 0.0 <= t <= 1.0:
            raise ValueError(f"threshold must lie in [0, 1] (a probability), got {t}")
        return np.full(num_attributes, t, dtype=np.float32), "--threshold"
    if stored is None:
        return np.full(num_attributes, DEFAULT_THRESHOLD, dtype=np.float32), "default"
    if hasattr(stored, "detach"):
        stored = stored.detach().cpu().numpy()
    arr = np.asarray(stored, dtype=np.float32).reshape(-1)
    if arr.shape != (num_attributes,):
        raise ValueError(f"{arr.size} thresholds stored for {num_attributes} attributes")
    return arr, "checkpoint"


def describe_thresholds(thresholds: np.ndarray, source: str) -> str:
    """One line for ``apcnn predict``: ``decision: p >= 0.5 (default)`` or per-attribute."""
    t = np.asarray(thresholds, dtype=np.float64)
    value = f"{t[0]:g}" if t.size and np.all(t == t[0]) else "each attribute's threshold"
    return f"decision: p >= {value} ({source})"


def decisions_from_scores(
    scores: np.ndarray,
    probabilities: np.ndarray,
    schema: AttributeSchema,
    thresholds: np.ndarray | None = None,
) -> list[dict[str, Any]]:
    """Per sample: attribute -> {score, probability, threshold, decision}, multi-class
    attribute -> label.

    The decision is ``probability >= threshold`` (float32, as the ONNX graph compares);
    ``thresholds`` (M,), default :data:`DEFAULT_THRESHOLD` everywhere.
    """
    p32 = np.asarray(probabilities, dtype=np.float32)
    t32, _ = resolve_thresholds(thresholds, p32.shape[1])
    decided = p32 >= t32
    out = []
    for s_row, p_row, d_row in zip(scores, probabilities, decided):
        item: dict[str, Any] = {
            "attributes": {
                name: {
                    "score": float(s),
                    "probability": float(p),
                    "threshold": float(t),
                    "decision": bool(d),
                }
                for name, s, p, t, d in zip(schema.names, s_row, p_row, t32, d_row)
            }
        }
        if schema.multiclass:
            item["multiclass"] = {
                mc.name: mc.labels[int(np.argmax(s_row[list(mc.members)]))]
                for mc in schema.multiclass
            }
        out.append(item)
    return out
