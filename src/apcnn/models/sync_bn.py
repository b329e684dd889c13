"""Batch norm over the global batch of a data-parallel step (gloo on CPU, NCCL on CUDA).

Under ``torchrun`` every rank holds a slice of each global batch (``GlobalBatchSampler``). A
train-mode batch norm that normalised with its rank's slice only would make the result depend
on the number of ranks N, and ``torch.nn.SyncBatchNorm`` runs on CUDA only. Here the per-channel
statistics are summed over the ranks with an all-reduce whose backward is again an all-reduce,
so forward, backward and running statistics equal one process with the whole global batch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist

__all__ = ["agree_min", "all_reduce_sum_autograd", "global_batch_norm", "sync_world_size"]


def sync_world_size() -> int:
    """Processes in the default group (1 when torch.distributed is not initialised)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


class _AllReduceSum(torch.autograd.Function):
    """y = Σ_ranks x on every rank. Each rank's loss depends on y, so ∂(Σ_r loss_r)/∂x_q =
    Σ_r ∂loss_r/∂y: the backward is the same all-reduce of the output gradients."""

    @staticmethod
    def forward(ctx: object, tensor: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        out = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return _AllReduceSum.apply(grad)


def all_reduce_sum_autograd(tensor: torch.Tensor) -> torch.Tensor:
    """Σ over the ranks of the default group, differentiable (backward: the same all-reduce).
    (``torch.distributed.nn.functional.all_reduce`` does this too but is deprecated.)"""
    return _AllReduceSum.apply(tensor)


def agree_min(value: int, device: torch.device) -> int:
    """The smallest ``value`` over the ranks (``value`` itself in one process)."""
    if sync_world_size() <= 1:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t)


def global_batch_norm(
    x: torch.Tensor,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    momentum: float,
    eps: float,
    reduce: Callable[[torch.Tensor], torch.Tensor] = all_reduce_sum_autograd,
) -> torch.Tensor:
    """Train-mode ``F.batch_norm`` of ``x`` with the statistics of the union of all ranks' x.

    x: this rank's (B_r, C, *) slice (B_r may be 0); weight, bias, running stats: (C,) or None.
    Per channel, with n_r = B_r·(spatial size) and μ_r, v_r this rank's mean and biased variance
    (two-pass, in x's precision), the float64 triple (n_r, n_r·μ_r, n_r·(v_r + μ_r²)) is summed
    over the ranks by ``reduce`` into (N, S, Q), then

        μ = S / N,   σ² = Q / N − μ²   (biased; float64, so the cancellation costs about
                                        1e-16·μ²/σ², and float32 errors in μ_r enter only
                                        through the spread of the ranks' means)
        y = (x − μ) / sqrt(σ² + eps) · weight + bias                      (B_r, C, *), x.dtype
        running_mean ← (1 − momentum)·running_mean + momentum·μ            (in place, no grad)
        running_var  ← (1 − momentum)·running_var  + momentum·σ²·N/(N − 1)

    as ``torch.nn.BatchNorm2d`` does in one process. Gradients flow through μ and σ² into every
    rank's x (``reduce`` must be differentiable, its backward summing over the ranks too).
    Every rank must call this the same number of times with the same C. Raises ValueError,
    on every rank alike, when N < 2 (no variance to estimate).
    """
    c = x.shape[1]
    dims = [0, *range(2, x.ndim)]
    n_local = x.numel() // c
    xs = x if x.dtype in (torch.float32, torch.float64) else x.float()
    if n_local > 0:
        var_r, mean_r = torch.var_mean(xs, dim=dims, correction=0)
        mean_r, var_r = mean_r.double(), var_r.double()
        local = torch.stack([torch.full_like(mean_r, n_local), n_local * mean_r])
        local = torch.cat([local, (n_local * (var_r + mean_r * mean_r)).unsqueeze(0)])
    else:
        # an empty slice (a last global batch smaller than the world) adds zeros, still tied
        # to x so that this rank's backward joins the backward all-reduce of the others
        local = torch.zeros(3, c, dtype=torch.float64, device=x.device) + xs.sum(dims).double()
    total = reduce(local)
    count = float(total[0, 0].detach())
    if count < 2:
        raise ValueError(
            f"Expected more than 1 value per channel when training, got {int(count)} over all ranks"
        )
    mean = total[1] / count
    var = (total[2] / count - mean * mean).clamp(min=0)
    invstd = torch.rsqrt(var + eps)
    scale = invstd if weight is None else invstd * weight.double()
    shift = -mean * scale if bias is None else bias.double() - mean * scale
    shape = (1, c, *([1] * (x.ndim - 2)))
    y = xs * scale.to(xs.dtype).view(shape) + shift.to(xs.dtype).view(shape)
    with torch.no_grad():
        if running_mean is not None:
            running_mean.mul_(1 - momentum).add_(mean.to(running_mean.dtype), alpha=momentum)
        if running_var is not None:
            unbiased = var * (count / (count - 1))
            running_var.mul_(1 - momentum).add_(unbiased.to(running_var.dtype), alpha=momentum)
    return y.to(x.dtype)
