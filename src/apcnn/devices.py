"""Which device a run uses and which autocast dtype its CNN parts get: the one place for both.

The solvers always work in float32 (or float64); only the CNN parts (trunk, tails) run under
autocast, and only where it pays off.
"""

from __future__ import annotations

import torch


def resolve_device(name: str) -> torch.device:
    """``train.device``: ``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        from .config import ConfigError

        raise ConfigError("train.device is 'cuda' but no CUDA device is available; use 'cpu'")
    return device


def autocast_dtype(
    amp: str | bool | torch.dtype | None, device: torch.device
) -> torch.dtype | None:
    """The autocast dtype for the CNN parts (None = full precision).

    ``amp``: ``"off"``/``False``/``None`` -> None; ``"bf16"``, ``"fp16"`` or a ``torch.dtype`` ->
    that dtype; ``"auto"`` -> mixed precision where it pays off (bf16 on CUDA when supported,
    else fp16; None on the CPU, where bf16 autocast is opt-in); ``True`` -> always on (bf16 on
    the CPU, fp16 on CUDA).
    """
    if amp is None or amp is False or amp == "off":
        return None
    if isinstance(amp, torch.dtype):
        return amp
    if amp is True:
        return torch.bfloat16 if device.type == "cpu" else torch.float16
    if amp == "bf16":
        return torch.bfloat16
    if amp == "fp16":
        return torch.float16
    if amp == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return None
    raise TypeError(f"amp must be auto, off, bf16, fp16, a bool or a torch.dtype, got {amp!r}")
