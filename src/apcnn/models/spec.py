"""``ModelSpec``: what a trained predictor is, as its checkpoint records it (docs/design.md).

A predictor checkpoint's ``meta.json`` describes the model in two dicts::

    "model":         {"backbone", "weights", "tail", "freeze_trunk", "num_attributes", "rank",
                      "feature_dim", ["pool_region"], ["flip_average"], ["adapt_blocks"]}
    "preprocessing": {"image_size", "mean", "std", ["image_height"], ["crop_fraction"]}

The bracketed keys are written only when not at their defaults (``pool_region`` None,
``flip_average`` False, ``adapt_blocks`` 0, ``image_height`` None, ``crop_fraction`` 0.875), so
checkpoints of runs that do not use them are byte-identical to those of older versions.

:class:`ModelSpec` is the one typed reading of both dicts: the trainer builds it from its config
(:meth:`ModelSpec.from_config`) and writes :meth:`~ModelSpec.model_dict` and
:meth:`~ModelSpec.preprocessing_dict`; every reader (predictor, evaluate/predict, export,
zero-shot, report) parses them back with :meth:`ModelSpec.from_checkpoint_meta` and takes the
evaluation transform from :meth:`~ModelSpec.eval_transform`, so every consumer feeds the network
images of the same shape ``(3, image_height or image_size, image_size)``. Values are kept as
written (an int stays an int), so ``dict -> spec -> dict`` is the identity.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["ModelSpec", "model_fields"]

DEFAULT_CROP_FRACTION = 0.875

#: checkpoint ``model`` keys: required, then optional (their default when absent)
_MODEL_REQUIRED = ("backbone", "weights", "tail", "num_attributes", "rank")
_MODEL_OPTIONAL: dict[str, Any] = {
    "freeze_trunk": True,  # always written; absent only in hand-made checkpoints
    "feature_dim": None,  # always written by the trainer
    "pool_region": None,
    "flip_average": False,
    "adapt_blocks": 0,
}
_PRE_REQUIRED = ("image_size", "mean", "std")
_PRE_OPTIONAL: dict[str, Any] = {"image_height": None, "crop_fraction": DEFAULT_CROP_FRACTION}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _fail(where: str, key: str, rule: str, value: Any) -> None:
    raise ValueError(f"{where}.{key} {rule}, got {value!r}")


def _read(where: str, d: Any, required: Sequence[str], optional: Mapping[str, Any]) -> dict:
    """``d``'s values for the ``required`` and ``optional`` keys (defaults filled in); a missing
    required key or an unknown key is a ValueError naming it."""
    if not isinstance(d, Mapping):
        raise ValueError(f"{where} must be a JSON object, got {type(d).__name__}")
    unknown = sorted(set(d) - set(required) - set(optional))
    if unknown:
        known = ", ".join([*required, *optional])
        raise ValueError(f"{where} has unknown key(s) {unknown}; known: {known}")
    missing = [k for k in required if k not in d]
    if missing:
        raise ValueError(f"{where} lacks the key(s) {missing}")
    return {**optional, **{k: d[k] for k in d}}


def model_fields(model: Mapping[str, Any]) -> dict[str, Any]:
    """A checkpoint's ``model`` dict checked and completed: the architecture fields of
    :class:`ModelSpec` (``backbone`` ... ``adapt_blocks``), defaults filled in, values as written
    (sequences as tuples). ValueError naming the key on unknown, missing or invalid content."""
    f = _read("model", model, _MODEL_REQUIRED, _MODEL_OPTIONAL)
    if not isinstance(f["backbone"], str) or not f["backbone"]:
        _fail("model", "backbone", "must be a timm model name", f["backbone"])
    if f["weights"] is not None and not isinstance(f["weights"], str):
        _fail("model", "weights", "must be 'imagenet', 'none' or a file path", f["weights"])
    tail = f["tail"]
    if not (isinstance(tail, str) and tail) and not (_is_int(tail) and tail >= 0):
        _fail("model", "tail", "must be 'head', 'fc', 'all' or an int >= 0", tail)
    for key in ("num_attributes", "rank"):
        if not _is_int(f[key]) or f[key] < 1:
            _fail("model", key, "must be an int >= 1", f[key])
    if f["feature_dim"] is not None and (not _is_int(f["feature_dim"]) or f["feature_dim"] < 1):
        _fail("model", "feature_dim", "must be an int >= 1", f["feature_dim"])
    for key in ("freeze_trunk", "flip_average"):
        if not isinstance(f[key], bool):
            _fail("model", key, "must be true or false", f[key])
    if not _is_int(f["adapt_blocks"]) or f["adapt_blocks"] < 0:
        _fail("model", "adapt_blocks", "must be an int >= 0", f["adapt_blocks"])
    if f["pool_region"] is not None:
        from .pooling import check_region

        region = f["pool_region"]
        if not isinstance(region, (list, tuple)) or not all(_is_number(v) for v in region):
            _fail("model", "pool_region", "must be 4 numbers [top, bottom, left, right]", region)
        try:
            check_region(region)
        except ValueError as exc:
            raise ValueError(f"model.pool_region: {exc}") from None
        f["pool_region"] = tuple(region)
    return f


def _preprocessing_fields(pre: Mapping[str, Any]) -> dict[str, Any]:
    """The preprocessing fields of :class:`ModelSpec`, checked like :func:`model_fields`."""
    f = _read("preprocessing", pre, _PRE_REQUIRED, _PRE_OPTIONAL)
    if not _is_int(f["image_size"]) or f["image_size"] < 1:
        _fail("preprocessing", "image_size", "must be an int >= 1", f["image_size"])
    height = f["image_height"]
    if height is not None and (not _is_int(height) or height < 1):
        _fail("preprocessing", "image_height", "must be an int >= 1 or null", height)
    crop = f["crop_fraction"]
    if not _is_number(crop) or not 0.0 < crop <= 1.0:
        _fail("preprocessing", "crop_fraction", "must be a number in (0, 1]", crop)
    for key in ("mean", "std"):
        v = f[key]
        if not isinstance(v, (list, tuple)) or len(v) != 3 or not all(_is_number(x) for x in v):
            _fail("preprocessing", key, "must be 3 numbers (R, G, B)", v)
        f[key] = tuple(v)
    if any(v <= 0 for v in f["std"]):
        _fail("preprocessing", "std", "must be > 0", list(f["std"]))
    return f


@dataclass(frozen=True)
class ModelSpec:
    """The architecture and input pipeline of a trained predictor (module docstring).

    Architecture (checkpoint ``model``): a timm ``backbone`` with ``weights`` (``"imagenet"``,
    ``"none"`` or a file), ``num_attributes`` M attribute-specific ``tail`` copies of the top of
    the network (``freeze_trunk``: the trunk below them was frozen in training), each giving a
    ``feature_dim`` D vector, pooled over ``pool_region`` (None: the whole map) and averaged over
    the image and its mirror image when ``flip_average``; the multi-task layer W = L S with
    L (D, K), S (K, M), K = ``rank``. ``adapt_blocks``: how many top trunk blocks were adapted
    (informational; their weights are in the state dict).

    Preprocessing (checkpoint ``preprocessing``): resize to ``(H, W) / crop_fraction``, centre
    crop ``(H, W)`` with ``H = image_height or image_size``, ``W = image_size``, then
    ``(x / 255 - mean) / std`` per channel: images ``(3, H, W)`` float32.
    """

    backbone: str
    weights: str | None
    tail: str | int
    num_attributes: int
    rank: int
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    freeze_trunk: bool = True
    feature_dim: int | None = None  # None only in hand-made checkpoints that do not record it
    pool_region: tuple[float, float, float, float] | None = None
    flip_average: bool = False
    adapt_blocks: int = 0
    image_height: int | None = None
    crop_fraction: float = DEFAULT_CROP_FRACTION

    def __post_init__(self) -> None:
        # sequences as tuples (hashable, immutable), then the same checks as a checkpoint read:
        # a spec is valid however it was made
        for key in ("mean", "std", "pool_region"):
            value = getattr(self, key)
            if isinstance(value, list):
                object.__setattr__(self, key, tuple(value))
        model_fields(self.model_dict())
        _preprocessing_fields(self.preprocessing_dict())

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_checkpoint_meta(
        cls, model: Mapping[str, Any], preprocessing: Mapping[str, Any]
    ) -> ModelSpec:
        """The spec of a checkpoint's ``model`` and ``preprocessing`` dicts (any version: absent
        optional keys take their defaults). ValueError naming the key on unknown, missing or
        invalid content."""
        return cls(**model_fields(model), **_preprocessing_fields(preprocessing))

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> ModelSpec:
        """The spec of a whole checkpoint ``meta`` (or an ONNX sidecar): its ``model`` and
        ``preprocessing`` entries."""
        for key in ("model", "preprocessing"):
            if key not in meta:
                raise ValueError(f"checkpoint meta has no {key!r} entry; not a predictor's meta")
        return cls.from_checkpoint_meta(meta["model"], meta["preprocessing"])

    @classmethod
    def from_config(
        cls, cfg: Any, backbone_info: Any, feature_dim: int, num_attributes: int
    ) -> ModelSpec:
        """The spec a training run of ``cfg`` (a :class:`~apcnn.config.TrainConfig`) produces:
        ``backbone_info`` gives mean/std (:class:`~apcnn.models.backbone.BackboneInfo`),
        ``feature_dim`` is the built tails' D, ``num_attributes`` the dataset schema's M. The
        rank is M (S = I, the S-CNN head); a trainer whose head changes records its rank K with
        ``dataclasses.replace(spec, rank=K)``."""
        m, d = cfg.model, cfg.data
        return cls(
            backbone=m.backbone,
            weights=m.weights,
            tail=m.tail,
            freeze_trunk=m.freeze_trunk,
            num_attributes=num_attributes,
            rank=num_attributes,
            feature_dim=feature_dim,
            pool_region=None if m.pool_region is None else tuple(m.pool_region),
            flip_average=bool(m.flip_average),
            adapt_blocks=cfg.train.adapt_blocks,
            image_size=d.image_size,
            mean=tuple(backbone_info.mean),
            std=tuple(backbone_info.std),
            image_height=d.image_height,
            crop_fraction=d.crop_fraction,
        )

    # ------------------------------------------------------------------ checkpoint dicts
    def model_dict(self) -> dict[str, Any]:
        """The checkpoint's ``model`` dict (optional keys only when not at their defaults)."""
        out: dict[str, Any] = {
            "backbone": self.backbone,
            "weights": self.weights,
            "tail": self.tail,
            "freeze_trunk": self.freeze_trunk,
            "num_attributes": self.num_attributes,
            "rank": self.rank,
        }
        if self.feature_dim is not None:
            out["feature_dim"] = self.feature_dim
        if self.pool_region is not None:
            out["pool_region"] = list(self.pool_region)
        if self.flip_average:
            out["flip_average"] = True
        if self.adapt_blocks:
            out["adapt_blocks"] = self.adapt_blocks
        return out

    def preprocessing_dict(self) -> dict[str, Any]:
        """The checkpoint's ``preprocessing`` dict (optional keys only when not the defaults)."""
        out: dict[str, Any] = {
            "image_size": self.image_size,
            "mean": list(self.mean),
            "std": list(self.std),
        }
        if self.image_height is not None:
            out["image_height"] = self.image_height
        if self.crop_fraction != DEFAULT_CROP_FRACTION:
            out["crop_fraction"] = self.crop_fraction
        return out

    # ------------------------------------------------------------------ input pipeline
    @property
    def input_shape(self) -> tuple[int, int]:
        """(H, W) of the network input: ``(image_height or image_size, image_size)``."""
        return (self.image_height or self.image_size, self.image_size)

    def eval_transform(self) -> Any:
        """PIL RGB image -> float32 ``(3, H, W)``: the evaluation transform of this model (the
        one place a checkpoint's preprocessing becomes a transform)."""
        from ..data.transforms import build_transform

        return build_transform(
            self.image_size,
            self.mean,
            self.std,
            train=False,
            crop_fraction=self.crop_fraction,
            height=self.image_height,
        )
