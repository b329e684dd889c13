"""Attribute-specific CNNs: a shared trunk and M batched attribute-specific tails.

The paper trains one CNN per attribute; x_m(i) in R^D is the feature of image i from CNN m. Here
the first part of an ImageNet CNN (the *trunk*) is shared by all attributes and the last part (the
*tail*) is copied M times, one copy per attribute, all initialised from the pretrained weights:

    t(i)   = trunk(image_i)                       (B, C, H, W)   shared
    x_m(i) = avgpool(tail_m(t(i)))                (B, D)         per attribute
    forward(images) = [x_1 ... x_M]               (B, M, D)

``tail`` picks the split (EfficientNets from timm):

- ``"head"``: tail = ``conv_head`` + ``bn2`` (+ activation); cheap, the CPU default.
- ``n`` (int >= 1): the last n blocks (counted over all stages) + head.
- ``"all"``: the whole network (M complete CNNs, as in the paper); the trunk is the identity.

The M tails run as one batched computation (``StackedTail``: grouped convolutions on
channel-stacked tensors), never a Python loop over M modules.

Also here, for users of the seed README: ``BaseCNN(config_path=...)`` (one CNN, images to
features) and ``MTL(base_cnn, num_attributes)`` (attribute-specific tails + latent task layer).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from apcnn.models.backbone import DEFAULT_BACKBONE, BackboneInfo, create_backbone
from apcnn.models.tails import StackedTail
from apcnn.regularizers import check_groups

__all__ = ["MTL", "AttributeCNN", "BaseCNN", "split_backbone"]

TailSpec = str | int


def efficientnet_blocks(model: nn.Module, needed_by: str) -> list[nn.Module]:
    """The blocks of a timm EfficientNet-family ``model``, counted over all stages;
    NotImplementedError naming ``needed_by`` (e.g. "attribute-specific tails need") for a model
    without conv_stem, bn1, blocks, conv_head and bn2."""
    needed = ("conv_stem", "bn1", "blocks", "conv_head", "bn2")
    if not all(hasattr(model, a) for a in needed):
        raise NotImplementedError(
            f"{needed_by} a timm EfficientNet-family model (conv_stem, bn1, blocks, conv_head, "
            f"bn2); got {type(model).__name__}"
        )
    return [block for stage in model.blocks for block in stage]


def split_backbone(model: nn.Module, tail: TailSpec) -> tuple[nn.Module, list[nn.Module]]:
    """Split a timm EfficientNet-family model into (trunk, tail layers).

    The trunk is an ``nn.Sequential`` of deep copies (``nn.Identity`` for ``tail="all"``); the
    tail layers are the original modules (``StackedTail`` copies them). Classifier and pooling
    are dropped. Raises ValueError for a bad ``tail``, NotImplementedError for other families.
    """
    blocks = efficientnet_blocks(model, "attribute-specific tails need")
    head = [m for m in (model.conv_head, model.bn2) if not isinstance(m, nn.Identity)]
    stem = [model.conv_stem, model.bn1]
    if tail == "all":
        return nn.Identity(), [*stem, *blocks, *head]
    if tail == "head":
        n = 0
    elif isinstance(tail, int) and not isinstance(tail, bool) and 1 <= tail <= len(blocks):
        n = tail
    else:
        raise ValueError(
            f"tail must be 'head', 'all' or an int in [1, {len(blocks)}] (number of last blocks), "
            f"got {tail!r}"
        )
    if not head and n == 0:
        raise ValueError("this model has no conv_head/bn2; use an int tail or 'all'")
    trunk = nn.Sequential(*[copy.deepcopy(m) for m in (*stem, *blocks[: len(blocks) - n])])
    return trunk, [*blocks[len(blocks) - n :], *head]


class AttributeCNN(nn.Module):
    """Shared trunk + M attribute-specific tails: images (B, 3, H, W) -> features (B, M, D).

    Args:
        backbone: a timm EfficientNet-family model (e.g. from ``create_backbone``); its weights
            initialise the trunk and all M tails (copies; ``backbone`` is not modified).
        num_attributes: M >= 1.
        tail: ``"head"``, an int n (last n blocks + head) or ``"all"`` (see module docstring).
        freeze_trunk: trunk kept in eval mode and run without gradients (its parameters get
            ``requires_grad=False``).
        info: the backbone's ``BackboneInfo`` (normalisation, weights hash), kept for callers.
        chunk_size: attribute copies per batched pass of the tails (``StackedTail``): "auto"
            (cache-sized blocks on the CPU, all at once elsewhere), None (all at once) or an int.
        pool_region: the window of the tails' final feature map that is averaged,
            ``(top, bottom, left, right)`` fractions (:mod:`apcnn.models.pooling`); None: all.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_attributes: int,
        *,
        tail: TailSpec = "head",
        freeze_trunk: bool = True,
        info: BackboneInfo | None = None,
        chunk_size: int | str | None = "auto",
        pool_region: Sequence[float] | None = None,
    ):
        super().__init__()
        if not isinstance(num_attributes, int) or num_attributes < 1:
            raise ValueError(f"num_attributes must be a positive int, got {num_attributes!r}")
        self.num_attributes = num_attributes
        self.tail = tail
        self.freeze_trunk = bool(freeze_trunk)
        self.info = info
        self.trunk, tail_layers = split_backbone(backbone, tail)
        self.tails = StackedTail(
            tail_layers, num_attributes, chunk_size=chunk_size, pool_region=pool_region
        )
        self.feature_dim = self.tails.feature_dim
        if self.freeze_trunk:
            self.trunk.requires_grad_(False)
        self.train()

    @classmethod
    def create(
        cls,
        num_attributes: int,
        *,
        backbone: str = DEFAULT_BACKBONE,
        weights: str | os.PathLike[str] = "imagenet",
        tail: TailSpec = "head",
        freeze_trunk: bool = True,
        drop_path_rate: float = 0.0,
        chunk_size: int | str | None = "auto",
    ) -> AttributeCNN:
        """Build from a timm name and local weights (see ``create_backbone``)."""
        model, info = create_backbone(backbone, weights=weights, drop_path_rate=drop_path_rate)
        return cls(
            model,
            num_attributes,
            tail=tail,
            freeze_trunk=freeze_trunk,
            info=info,
            chunk_size=chunk_size,
        )

    def train(self, mode: bool = True) -> AttributeCNN:
        super().train(mode)
        if self.freeze_trunk:
            self.trunk.eval()
        return self

    def forward_trunk(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised images -> shared trunk features (B, C, H', W')."""
        if self.freeze_trunk:
            with torch.no_grad():
                return self.trunk(images)
        return self.trunk(images)

    def forward_tails(self, features: torch.Tensor) -> torch.Tensor:
        """Trunk features (B, C, H', W') -> attribute-specific features (B, M, D)."""
        return self.tails(features)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, M, D): ``out[:, m]`` is x_m, the feature of attribute m's CNN."""
        return self.forward_tails(self.forward_trunk(images))

    def tail_module(self, m: int) -> nn.Module:
        """An independent, unbatched copy of tail m: trunk features (B, C, H', W') -> (B, D)."""
        return self.tails.unstacked(m)

    def load_tail(self, m: int, module: nn.Module) -> None:
        """Overwrite tail m with an unbatched tail (e.g. one fine-tuned single-attribute CNN)."""
        self.tails.load_copy(m, module)

    def split_description(self) -> str:
        """Describes where the trunk ends (for feature-cache keys)."""
        name = self.info.name if self.info is not None else "unknown"
        return f"{name}:tail={self.tail}"


# ---------------------------------------------------------------- seed-README compatibility


_BASE_DEFAULTS: dict[str, Any] = {
    "backbone": DEFAULT_BACKBONE,
    "weights": "imagenet",
    "tail": "head",
    "freeze_trunk": True,
    "feature_dim": None,
    "drop_rate": 0.0,
    "drop_path_rate": 0.0,
}


def _read_config(config_path: str | os.PathLike[str] | None, config: Mapping[str, Any] | None):
    if (config_path is None) == (config is None):
        raise ValueError("pass exactly one of config_path (a YAML file) or config (a dict)")
    if config_path is not None:
        import yaml

        p = Path(config_path)
        if not p.is_file():
            raise FileNotFoundError(f"config_path {p} does not exist; write the YAML file first")
        with open(p) as f:
            config = yaml.safe_load(f) or {}
    if not isinstance(config, Mapping):
        raise TypeError(f"config must be a mapping, got {type(config).__name__}")
    section = config.get("model", config) if isinstance(config.get("model"), Mapping) else config
    cfg = dict(_BASE_DEFAULTS)
    cfg.update({k: section[k] for k in _BASE_DEFAULTS if k in section})
    return cfg, dict(config)


class BaseCNN(nn.Module):
    """One ImageNet CNN mapping images (B, 3, H, W) to features (B, F) (seed README API).

    Built from a YAML file (``config_path``) or a dict (``config``); keys, at top level or under
    ``model:`` (other keys are ignored): ``backbone`` (timm name, default tf_efficientnet_lite0),
    ``weights`` ("imagenet" | "none" | path), ``tail`` (split used by ``MTL``: "head" | int |
    "all"), ``freeze_trunk`` (bool, for ``MTL``), ``feature_dim`` (optional F: a learned linear
    projection D -> F after pooling; default F = D, no projection), ``drop_rate``,
    ``drop_path_rate``.
    """

    def __init__(
        self,
        config_path: str | os.PathLike[str] | None = None,
        *,
        config: Mapping[str, Any] | None = None,
    ):
        super().__init__()
        cfg, self.config = _read_config(config_path, config)
        self.settings = cfg
        self.backbone, self.info = create_backbone(
            str(cfg["backbone"]),
            weights=cfg["weights"],
            num_classes=0,
            drop_rate=float(cfg["drop_rate"]),
            drop_path_rate=float(cfg["drop_path_rate"]),
        )
        d = self.info.feature_dim
        f = cfg["feature_dim"]
        if f is not None and (not isinstance(f, int) or f < 1):
            raise ValueError(f"feature_dim must be a positive int or null, got {f!r}")
        self.projection: nn.Module = nn.Identity() if f is None or f == d else nn.Linear(d, f)
        self.feature_dim = d if f is None else f
        self.train()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, F) pooled (and projected) features."""
        return self.projection(self.backbone(images))


class _ModuleLikeParameter(nn.Parameter):
    """A Parameter that also answers the seed README's module-style calls:
    ``p.parameters()`` yields ``p`` and ``p.weight`` is ``p``."""

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]:  # noqa: ARG002
        yield self

    @property
    def weight(self) -> nn.Parameter:
        return self


class MTL(nn.Module):
    """Attribute-specific CNNs + latent task layer: images (B, 3, H, W) -> scores (B, M).

    ``f_m(i) = x_m(i)^T L s_m (+ b_m)`` with x = ``AttributeCNN`` features (projected by the
    base CNN's projection if it has one), L (F, K) the latent task matrix, S (K, M) the
    combination matrix (``apcnn.models.latent.LatentTaskLayer``).

    Args:
        base_cnn: a ``BaseCNN`` (its backbone weights initialise every tail; its ``tail`` and
            ``freeze_trunk`` settings pick the split) or an ``AttributeCNN`` with M attributes
            (used as is).
        num_attributes: M.
        rank: K, the number of latent tasks (default M).
        groups: optional attribute groups (disjoint lists of indices), kept for the regulariser.

    ``latent_task_matrix`` is the L parameter and ``task_specific_layers`` the S parameter; both
    also support ``.parameters()`` and ``.weight`` as in the seed README.
    """

    def __init__(
        self,
        base_cnn: BaseCNN | AttributeCNN,
        num_attributes: int,
        rank: int | None = None,
        groups: Sequence[Sequence[int]] | None = None,
    ):
        super().__init__()
        from apcnn.models.latent import LatentTaskLayer

        if not isinstance(num_attributes, int) or num_attributes < 1:
            raise ValueError(f"num_attributes must be a positive int, got {num_attributes!r}")
        if isinstance(base_cnn, AttributeCNN):
            if base_cnn.num_attributes != num_attributes:
                raise ValueError(
                    f"base_cnn has {base_cnn.num_attributes} attributes, num_attributes="
                    f"{num_attributes}"
                )
            self.cnn = base_cnn
            self.projection: nn.Module = nn.Identity()
            feat = base_cnn.feature_dim
        elif isinstance(base_cnn, BaseCNN):
            s = base_cnn.settings
            self.cnn = AttributeCNN(
                base_cnn.backbone,
                num_attributes,
                tail=s["tail"],
                freeze_trunk=bool(s["freeze_trunk"]),
                info=base_cnn.info,
            )
            self.projection = copy.deepcopy(base_cnn.projection)
            feat = base_cnn.feature_dim
        else:
            raise TypeError(f"base_cnn must be a BaseCNN or AttributeCNN, got {type(base_cnn)}")
        self.num_attributes = num_attributes
        self.rank = num_attributes if rank is None else int(rank)
        if self.rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank!r}")
        # a partition of the attributes (the regulariser's groups), checked once
        self.groups = None if groups is None else check_groups(groups, num_attributes)
        self.latent = LatentTaskLayer(feat, num_latent=self.rank, num_attributes=num_attributes)
        for name in ("L", "S"):
            p = getattr(self.latent, name)
            setattr(self.latent, name, _ModuleLikeParameter(p.data, p.requires_grad))

    @property
    def latent_task_matrix(self) -> nn.Parameter:
        """L (F, K), shared by all attributes."""
        return self.latent.L

    @property
    def task_specific_layers(self) -> nn.Parameter:
        """S (K, M), column m combines the latent tasks for attribute m."""
        return self.latent.S

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> attribute-specific features (B, M, F)."""
        return self.projection(self.cnn(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> scores (B, M)."""
        return self.latent(self.features(images))
