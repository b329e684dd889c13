"""Attribute-specific fully connected tails on the pooled features of a frozen CNN.

``tail="fc"`` makes the *whole* pretrained network the shared trunk (its pooled output
f(i) in R^D) and gives every attribute m its own fully connected layer, the analogue of the
attribute-specific fc7 of the paper's per-attribute AlexNets:

    x_m(i) = relu(A_m f(i) + c_m),      A_m (D, D), c_m (D,)

A_m starts as the identity and c_m at zero, so since f >= 0 (the backbone ends in a ReLU-type
activation and average pooling) every x_m equals the ImageNet feature at the start, exactly as if
each attribute had its own copy of the pretrained network, and fine-tuning moves each attribute
away from it. All M layers run as one matrix product f @ [A_1; ...; A_M]^T (never a loop over M).
This is the CPU-friendly tail: the trunk's output is a D-vector per image, cached once.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .attribute_cnn import AttributeCNN
from .pooling import check_region, region_mean


class StackedLinearTail(nn.Module):
    """M fully connected layers on shared features: (B, D) or (B, D, 1, 1) -> (B, M, D)."""

    def __init__(self, feature_dim: int, num_attributes: int) -> None:
        super().__init__()
        if feature_dim < 1 or num_attributes < 1:
            raise ValueError("feature_dim and num_attributes must be positive")
        self.feature_dim = feature_dim
        self.num_attributes = num_attributes
        eye = torch.eye(feature_dim).expand(num_attributes, feature_dim, feature_dim)
        self.weight = nn.Parameter(eye.clone())  # (M, D_out, D_in)
        self.bias = nn.Parameter(torch.zeros(num_attributes, feature_dim))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        f = features.flatten(1)  # (B, D)
        if f.shape[1] != self.feature_dim:
            raise ValueError(
                f"fc tail expects pooled features of dimension {self.feature_dim}, got {f.shape[1]}"
            )
        m, d = self.num_attributes, self.feature_dim
        out = f @ self.weight.reshape(m * d, d).t()  # (B, M*D): one matmul for all attributes
        return torch.relu(out.view(-1, m, d) + self.bias)

    def tail_module(self, index: int) -> nn.Module:
        """An unbatched copy of attribute ``index``'s layer (Linear + ReLU), for checks."""
        linear = nn.Linear(self.feature_dim, self.feature_dim)
        with torch.no_grad():
            linear.weight.copy_(self.weight[index])
            linear.bias.copy_(self.bias[index])
        return nn.Sequential(nn.Flatten(1), linear, nn.ReLU())


class PooledTrunk(nn.Module):
    """The complete pretrained network up to its pooled features: images -> (B, D).

    ``pool_region`` (see :mod:`apcnn.models.pooling`) averages a window of the final feature map
    instead of the backbone's own global pooling. ``flip_average``: the features are
    ``(f(x) + f(mirror(x))) / 2``, the same for an image and its left-right mirror image.
    """

    def __init__(
        self,
        backbone: nn.Module,
        pool_region: Sequence[float] | None = None,
        *,
        flip_average: bool = False,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.pool_region = check_region(pool_region)
        self.flip_average = bool(flip_average)
        # the ImageNet classifier stays in the state dict but takes no part in the pooled
        # features: never trained (DDP refuses parameters without gradients)
        backbone.get_classifier().requires_grad_(False)

    def _pooled(self, images: torch.Tensor) -> torch.Tensor:
        features = self.backbone.forward_features(images)
        if self.pool_region is not None:
            return region_mean(features, self.pool_region)
        return self.backbone.forward_head(features, pre_logits=True)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.flip_average:
            return (self._pooled(images) + self._pooled(images.flip(-1))) / 2
        return self._pooled(images)


class FCAttributeCNN(AttributeCNN):
    """``tail="fc"``: frozen pooled backbone (trunk) + :class:`StackedLinearTail`.

    The interface (``forward_trunk``: images -> (B, D), ``forward_tails``: (B, D) -> (B, M, D),
    ``forward``, ``train``, ``feature_dim``) is :class:`AttributeCNN`'s; only the split differs.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_attributes: int,
        *,
        freeze_trunk: bool = True,
        pool_region: Sequence[float] | None = None,
        flip_average: bool = False,
    ):
        nn.Module.__init__(self)  # AttributeCNN.__init__ splits conv blocks; this split is fixed
        self.num_attributes = num_attributes
        self.tail = "fc"
        self.freeze_trunk = bool(freeze_trunk)
        self.info = None
        self.trunk = PooledTrunk(backbone, pool_region, flip_average=flip_average)
        self.feature_dim = int(backbone.num_features)
        self.tails = StackedLinearTail(self.feature_dim, num_attributes)
        if self.freeze_trunk:
            self.trunk.requires_grad_(False)
        self.train()

    def tail_module(self, m: int) -> nn.Module:
        return self.tails.tail_module(m)

    def load_tail(self, m: int, module: nn.Module) -> None:
        raise NotImplementedError("fc tails are loaded through the state dict")


def build_attribute_cnn(
    backbone: nn.Module,
    num_attributes: int,
    *,
    tail: str | int,
    freeze_trunk: bool,
    pool_region: Sequence[float] | None = None,
    flip_average: bool = False,
) -> nn.Module:
    """``AttributeCNN`` for conv tails (``"head"``, an int, ``"all"``), ``FCAttributeCNN`` for
    ``"fc"``; both pool the final feature map over ``pool_region`` (None: all of it).
    ``flip_average`` (``"fc"`` only): features averaged over the image and its mirror image."""
    if tail == "fc":
        return FCAttributeCNN(
            backbone,
            num_attributes,
            freeze_trunk=freeze_trunk,
            pool_region=pool_region,
            flip_average=flip_average,
        )
    if flip_average:
        raise ValueError("flip_average needs tail='fc'")
    return AttributeCNN(
        backbone, num_attributes, tail=tail, freeze_trunk=freeze_trunk, pool_region=pool_region
    )
