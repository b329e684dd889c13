"""The pooling window ``model.pool_region`` as data, without torch.

``(top, bottom, left, right)`` are fractions of the final feature map's height and width; the
pooling itself is :mod:`apcnn.models.pooling`. This check lives here, free of torch, because the
configuration validates ``model.pool_region`` when it is read (``apcnn config show``, the checks
``apcnn train`` makes before it imports torch).
"""

from __future__ import annotations

from collections.abc import Sequence

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


__all__ = ["Region", "check_region"]
