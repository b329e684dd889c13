"""Image transforms (torchvision ``transforms.v2``) from a PIL ``RGB`` image to a float tensor.

- :func:`default_transform`: what a dataset applies when given ``transform=None``: resize to
  ``image_size x image_size`` (bilinear, antialiased), then ``uint8 -> float32`` in ``[0, 1]``.
  Output: ``(3, image_size, image_size)``.
- :func:`build_transform`: the training/evaluation pipelines of a backbone. ``mean``/``std`` are
  arguments because the backbone decides them (ImageNet statistics, or 0.5 for some TF ports).

  * eval: resize to ``resize_size x resize_size``, centre crop ``image_size``, to float in
    ``[0, 1]``, normalise ``(x - mean) / std``.
  * train: resize to ``resize_size x resize_size``, random crop ``image_size``, random horizontal
    flip (``hflip=True``), to float, normalise.

  ``resize_size`` defaults to ``round(image_size / crop_fraction)`` with ``crop_fraction=0.875``
  (the paper's 256 -> 224 AlexNet protocol); ``crop_fraction=1.0`` resizes straight to the input
  size. Images are resized to the input shape, never cropped to a short side: garment photos are
  portrait, and a centre crop of a short-side resize would cut the collar or the hem. The input
  is square unless ``height`` is given (portrait input, e.g. 320 x 480 for Clothing's 2:3
  photos, keeps their aspect ratio).

Geometry uses torchvision v2 on the PIL image (uint8, cheapest); the last step,
:class:`ToNormalizedTensor`, fuses ``ToImage + ToDtype(scale=True) + Normalize`` into one
``x * (1 / (255 std)) - mean / std`` on a contiguous float32 tensor (about 8x faster than the
three v2 steps on a 224x224 image, same values up to float rounding).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torchvision.transforms import v2


class ToNormalizedTensor:
    """PIL RGB image / HWC uint8 array / CHW tensor -> contiguous float32 ``(3, H, W)``.

    ``y = x / 255`` for uint8 input (float tensors are taken as already in ``[0, 1]``), then
    ``(y - mean) / std`` per channel when ``mean``/``std`` are given. Picklable (DataLoader
    workers).
    """

    def __init__(self, mean: Sequence[float] | None = None, std: Sequence[float] | None = None):
        self.mean = None if mean is None else tuple(float(m) for m in mean)
        self.std = None if std is None else tuple(float(v) for v in std)
        m = torch.tensor(self.mean or (0.0, 0.0, 0.0)).view(3, 1, 1)
        sd = torch.tensor(self.std or (1.0, 1.0, 1.0)).view(3, 1, 1)
        self._scale255, self._scale1, self._shift = 1.0 / (255.0 * sd), 1.0 / sd, -m / sd

    def __call__(self, img: Any) -> torch.Tensor:
        if isinstance(img, torch.Tensor):
            x = img.as_subclass(torch.Tensor)
            if x.ndim == 2:
                x = x.unsqueeze(0)
            scale = self._scale255 if x.dtype == torch.uint8 else self._scale1
            x = x.to(torch.float32, copy=True).contiguous()
        else:
            if hasattr(img, "mode") and img.mode != "RGB":
                img = img.convert("RGB")
            arr = np.asarray(img, dtype=np.float32)
            if arr.ndim == 2:
                arr = arr[..., None]
            x = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))
            scale = self._scale255
        if x.shape[0] == 1:
            x = x.expand(3, -1, -1).contiguous()
        return x.mul_(scale).add_(self._shift)

    def __repr__(self) -> str:
        return f"ToNormalizedTensor(mean={self.mean}, std={self.std})"


def _size(image_size: int) -> int:
    if isinstance(image_size, bool) or int(image_size) != image_size or int(image_size) <= 0:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    return int(image_size)


def default_transform(image_size: int) -> v2.Compose:
    """PIL RGB -> float32 tensor ``(3, image_size, image_size)`` in ``[0, 1]``."""
    s = _size(image_size)
    return v2.Compose([v2.Resize((s, s), antialias=True), ToNormalizedTensor()])


def build_transform(
    image_size: int,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    train: bool,
    *,
    crop_fraction: float = 0.875,
    hflip: bool = True,
    height: int | None = None,
) -> v2.Compose:
    """The train (``train=True``) or eval pipeline; output ``(3, height, image_size)`` float32.

    Args:
        image_size: width of the network input (and its height when ``height`` is None).
        mean, std: per-channel normalisation ``(x - mean) / std`` on ``[0, 1]`` values; ``None``
            for both skips normalisation.
        train: random crop + flip when True, centre crop when False.
        crop_fraction: ``image_size / resize_size`` in ``(0, 1]``.
        hflip: random horizontal flip in training (turn off for left/right attributes).
        height: height of the network input; None: square ``image_size``.
    """
    s = _size(image_size)
    h = s if height is None else _size(height)
    if not 0.0 < float(crop_fraction) <= 1.0:
        raise ValueError(f"crop_fraction must be in (0, 1], got {crop_fraction!r}")
    if (mean is None) != (std is None):
        raise ValueError("give both mean and std, or neither (no normalisation)")
    if mean is not None and (len(mean) != 3 or len(std) != 3):  # type: ignore[arg-type]
        raise ValueError(f"mean and std need 3 values (RGB), got {mean!r} and {std!r}")
    if std is not None and any(float(v) <= 0 for v in std):
        raise ValueError(f"std values must be > 0, got {std!r}")
    resize = (max(h, round(h / float(crop_fraction))), max(s, round(s / float(crop_fraction))))
    steps: list[v2.Transform] = [v2.Resize(resize, antialias=True)]
    if train:
        steps.append(v2.RandomCrop((h, s)))
        if hflip:
            steps.append(v2.RandomHorizontalFlip())
    elif resize != (h, s):
        steps.append(v2.CenterCrop((h, s)))
    steps.append(ToNormalizedTensor(mean, std))
    return v2.Compose(steps)
