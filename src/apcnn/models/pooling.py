"""Average pooling over a window of the final feature map (``model.pool_region``).

A garment fills the middle of a street photo; the background, the face and the shoes around it
say little about "striped" or "has collar". ``pool_region = (top, bottom, left, right)``, as
fractions of the feature map's height and width, averages only that window:

    x(i)_c = mean_{r in [top*H', bottom*H'), s in [left*W', right*W')} F(i)_{c,r,s}

for a feature map F(i) of shape (C, H', W'). ``None`` (or (0, 1, 0, 1)) is global average
pooling. Window edges are rounded to whole cells and always keep at least one row and column.
On Clothing (lite0, 320x480 input, fold 0, S-extract) the centre window (0.15, 0.85, 0.25, 0.75)
gives 92.1 % mean accuracy against 91.5 % for global pooling (docs/benchmarks.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

Region = tuple[float, float, float, float]


def check_region(region: Sequence[float] | None) -> Region | None:
    """``region`` as a tuple of 4 floats with 0 <= top < bottom <= 1, 0 <= left < right <= 1
    (ValueError naming the rule otherwise); ``None`` stays ``None``."""
    if region is None:
        return None
    values = tuple(float(v) for v in region)
    if len(values) != 4:
        raise ValueError(
            f"pool_region needs 4 fractions [top, bottom, left, right], got {region!r}"
        )
    top, bottom, left, right = values
    if not (0.0 <= top < bottom <= 1.0 and 0.0 <= left < right <= 1.0):
        raise ValueError(
            f"pool_region {list(values)} must satisfy 0 <= top < bottom <= 1 and "
            "0 <= left < right <= 1 (fractions of the feature map)"
        )
    return values  # type: ignore[return-value]


def _span(lo: float, hi: float, size: int) -> slice:
    start = min(int(lo * size), size - 1)
    return slice(start, max(int(hi * size), start + 1))


def region_mean(features: torch.Tensor, region: Region | None) -> torch.Tensor:
    """(B, C, H', W') -> (B, C): the mean over ``region`` (all cells when ``None``)."""
    if region is None:
        return features.mean((2, 3))
    h, w = features.shape[-2:]
    rows, cols = _span(region[0], region[1], h), _span(region[2], region[3], w)
    return features[:, :, rows, cols].mean((2, 3))


class RegionPool(nn.Module):
    """:func:`region_mean` as a module: (B, C, H', W') -> (B, C)."""

    def __init__(self, region: Sequence[float] | None = None) -> None:
        super().__init__()
        self.region = check_region(region)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return region_mean(features, self.region)

    def extra_repr(self) -> str:
        return f"region={self.region}"
