"""M attribute-specific copies of a CNN tail, run as one batched computation.

A *tail* is a stack of conv / batch-norm / activation layers (for EfficientNets: the last blocks
and ``conv_head`` + ``bn2``) followed by global average pooling. ``StackedTail`` holds M copies
with independent weights and runs them together on **channel-stacked** tensors: a tensor of shape
(B, M*C, H, W) whose channel index is ``m*C + c`` holds channel c of copy m. On that layout

- a convolution with weight (Cout, Cin/g, k, k) and ``groups=g`` becomes one convolution with the
  M weights concatenated, (M*Cout, Cin/g, k, k), and ``groups=M*g``; a depthwise conv (g = C)
  becomes ``groups=M*C``. The first convolution of a tail sees the same input for every copy, so
  when it is dense (g = 1) it runs once on the un-stacked input with ``groups=1`` and M*Cout
  output channels (one GEMM instead of M);
- batch norm is per channel, so BN over M*C channels is exactly M independent BNs, in train mode
  (batch statistics per copy) and in eval mode (running statistics per copy);
- activations, residual additions, squeeze-excite pooling and gating act per channel and need
  no change; the final global average pool gives (B, M*D), viewed as (B, M, D).

Every Conv2d / BatchNorm2d inside the given layers is replaced by ``StackedConv2d`` /
``StackedBatchNorm2d``; the block modules themselves (timm's ``InvertedResidual``,
``DepthwiseSeparableConv``, ``SqueezeExcite``...) are kept, so their own ``forward`` runs on the
stacked layout. Layers with other parameters raise ``NotImplementedError``.
Stochastic depth (``DropPath``), if enabled, drops a sample in all M copies together.

The same stacked parameters can also be run in passes of c < M copies (``chunk_size``): each
pass is the batched computation above on a contiguous slice of copies (parameters are split once
per forward, so the backward gathers every gradient in one operation). On CPUs this keeps the
activations of a pass cache-sized; a single pass over all copies streams activations M times
larger than one copy's, which costs more than the per-operation overhead it saves once the
tail is compute-bound (``benchmarks/bench_tails.py``).
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .pooling import RegionPool, check_region, region_mean
from .sync_bn import agree_min, global_batch_norm, sync_world_size

__all__ = ["StackedBatchNorm2d", "StackedConv2d", "StackedTail", "stack_module", "unstack_module"]


def _is_same_pad_conv(conv: nn.Conv2d) -> bool:
    """timm's TF-style dynamic 'SAME' padding convolutions (pad computed from the input size)."""
    return type(conv).__name__ in {"Conv2dSame", "Conv2dSameExport"}


def _meta_template(module: nn.Module) -> nn.Module:
    """A weightless copy (parameters on the meta device) used to rebuild single copies."""
    return copy.deepcopy(module).to("meta")


def _materialise(template: nn.Module, device: torch.device, dtype: torch.dtype) -> nn.Module:
    mod = copy.deepcopy(template).to_empty(device=device)
    return mod.to(dtype) if dtype.is_floating_point else mod


class StackedConv2d(nn.Module):
    """M copies of ``conv`` on channel-stacked input.

    Input (B, M*Cin, H, W) — or (B, Cin, H, W) when ``shared_input`` (only for ``groups == 1``) —
    output (B, M*Cout, H', W'). Weight (M*Cout, Cin/groups, kh, kw), bias (M*Cout,) or None;
    rows ``m*Cout:(m+1)*Cout`` belong to copy m. All copies start equal to ``conv``.
    """

    def __init__(self, conv: nn.Conv2d, num_copies: int, *, shared_input: bool = False):
        super().__init__()
        if conv.padding_mode != "zeros":
            raise NotImplementedError(f"padding_mode={conv.padding_mode!r} is not supported")
        self.num_copies = int(num_copies)
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.kernel_size, self.stride, self.dilation = conv.kernel_size, conv.stride, conv.dilation
        self.padding = conv.padding
        self.groups = conv.groups
        self.same_pad = _is_same_pad_conv(conv)
        self.shared_input = False
        w = conv.weight.detach()
        self.weight = nn.Parameter(w.repeat(self.num_copies, 1, 1, 1))
        self.bias = (
            nn.Parameter(conv.bias.detach().repeat(self.num_copies))
            if conv.bias is not None
            else None
        )
        self._template = [_meta_template(conv)]  # a list: not registered as a submodule
        self._parts: list[tuple[int, torch.Tensor, torch.Tensor | None]] | None = None
        self._cur: tuple[int, torch.Tensor, torch.Tensor | None] | None = None
        self.set_shared_input(shared_input)

    def set_shared_input(self, shared: bool) -> None:
        """Take the un-stacked (B, Cin, H, W) input shared by all copies (dense convs only)."""
        if shared and self.groups != 1:
            raise ValueError("shared_input=True needs a dense convolution (groups=1)")
        self.shared_input = bool(shared)

    def split_copies(self, sizes: Sequence[int]) -> None:
        """Prepare chunked execution: chunk j runs ``sizes[j]`` consecutive copies (one
        autograd split per parameter, so gradients are gathered in one pass)."""
        ws = self.weight.split([n * self.out_channels for n in sizes])
        bs = (
            self.bias.split([n * self.out_channels for n in sizes])
            if self.bias is not None
            else [None] * len(sizes)
        )
        self._parts = list(zip(sizes, ws, bs, strict=True))

    def select_chunk(self, j: int | None) -> None:
        """Run chunk j of the last ``split_copies`` (None: all copies, and drop the split)."""
        if j is None:
            self._parts, self._cur = None, None
        else:
            self._cur = self._parts[j]  # type: ignore[index]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        copies, weight, bias = self._cur or (self.num_copies, self.weight, self.bias)
        if self.same_pad:
            from timm.layers import pad_same

            x = pad_same(x, self.kernel_size, self.stride, self.dilation)
            padding: tuple[int, ...] | str = (0, 0)
        else:
            padding = self.padding
        groups = self.groups if self.shared_input else self.groups * copies
        return F.conv2d(x, weight, bias, self.stride, padding, self.dilation, groups)

    def copy_slice(self, m: int) -> slice:
        return slice(m * self.out_channels, (m + 1) * self.out_channels)

    def unstacked(self, m: int) -> nn.Conv2d:
        """An independent ``nn.Conv2d`` (same class as the original) holding copy m."""
        conv = _materialise(self._template[0], self.weight.device, self.weight.dtype)
        self.export_copy(m, conv)
        return conv  # type: ignore[return-value]

    @torch.no_grad()
    def export_copy(self, m: int, conv: nn.Conv2d) -> None:
        conv.weight.copy_(self.weight[self.copy_slice(m)])
        if self.bias is not None:
            conv.bias.copy_(self.bias[self.copy_slice(m)])

    @torch.no_grad()
    def import_copy(self, m: int, conv: nn.Conv2d) -> None:
        """Overwrite copy m with the weights of an unbatched ``conv``."""
        self.weight[self.copy_slice(m)] = conv.weight.to(self.weight)
        if self.bias is not None:
            self.bias[self.copy_slice(m)] = conv.bias.to(self.bias)

    def extra_repr(self) -> str:
        return (
            f"copies={self.num_copies}, {self.in_channels}->{self.out_channels}, "
            f"kernel_size={self.kernel_size}, stride={self.stride}, groups={self.groups}, "
            f"shared_input={self.shared_input}, same_pad={self.same_pad}"
        )


class StackedBatchNorm2d(nn.Module):
    """M copies of a BatchNorm2d (or timm ``BatchNormAct2d``: BN, then dropout and activation).

    Parameters and running statistics have M*C entries, copy m at ``m*C:(m+1)*C``; in train mode
    each channel is normalised by its own batch statistics, so copies never mix. Training under
    an initialised process group of N > 1 ranks, those are the statistics of the global batch
    (the ranks' slices together: :func:`apcnn.models.sync_bn.global_batch_norm`, gloo or NCCL),
    so the step equals one process's with the whole batch; otherwise ``F.batch_norm`` as
    ``BatchNorm2d`` runs it.
    """

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm, num_copies: int):
        super().__init__()
        self.num_copies = int(num_copies)
        self.num_features = bn.num_features
        self.eps, self.momentum = bn.eps, bn.momentum
        self.affine, self.track_running_stats = bn.affine, bn.track_running_stats
        M = self.num_copies

        def rep(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.detach().repeat(M)

        self.weight = nn.Parameter(rep(bn.weight)) if bn.weight is not None else None
        self.bias = nn.Parameter(rep(bn.bias)) if bn.bias is not None else None
        self.register_buffer("running_mean", rep(bn.running_mean))
        self.register_buffer("running_var", rep(bn.running_var))
        nbt = bn.num_batches_tracked
        self.register_buffer("num_batches_tracked", None if nbt is None else nbt.detach().clone())
        self.drop = copy.deepcopy(getattr(bn, "drop", nn.Identity()))
        self.act = copy.deepcopy(getattr(bn, "act", nn.Identity()))
        self._template = [_meta_template(bn)]
        self._parts: list[tuple[Any, ...]] | None = None
        self._cur: tuple[Any, ...] | None = None

    def split_copies(self, sizes: Sequence[int]) -> None:
        """Prepare chunked execution (see ``StackedConv2d.split_copies``); running statistics
        are split into views, so chunk updates land in the full buffers."""
        n = [k * self.num_features for k in sizes]

        def split(t: torch.Tensor | None) -> Sequence[torch.Tensor | None]:
            return [None] * len(sizes) if t is None else t.split(n)

        tensors = [split(t) for t in (self.weight, self.bias, self.running_mean, self.running_var)]
        self._parts = [(j == 0, *parts) for j, parts in enumerate(zip(*tensors, strict=True))]

    def select_chunk(self, j: int | None) -> None:
        """Run chunk j of the last ``split_copies`` (None: all copies, and drop the split)."""
        if j is None:
            self._parts, self._cur = None, None
        else:
            self._cur = self._parts[j]  # type: ignore[index]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first, weight, bias, running_mean, running_var = self._cur or (
            True,
            self.weight,
            self.bias,
            self.running_mean,
            self.running_var,
        )
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            if first:  # once per forward, also when the copies run in chunks
                self.num_batches_tracked.add_(1)
            factor = (
                1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
            )
        bn_training = self.training or (running_mean is None and running_var is None)
        use_buffers = not self.training or self.track_running_stats
        if self.training and sync_world_size() > 1:  # statistics of the global batch
            x = global_batch_norm(
                x,
                running_mean if use_buffers else None,
                running_var if use_buffers else None,
                weight,
                bias,
                factor,
                self.eps,
            )
            return self.act(self.drop(x))
        x = F.batch_norm(
            x,
            running_mean if use_buffers else None,
            running_var if use_buffers else None,
            weight,
            bias,
            bn_training,
            factor,
            self.eps,
        )
        return self.act(self.drop(x))

    def copy_slice(self, m: int) -> slice:
        return slice(m * self.num_features, (m + 1) * self.num_features)

    def unstacked(self, m: int) -> nn.Module:
        """An independent BN module (same class as the original) holding copy m."""
        ref = self.weight if self.weight is not None else self.running_mean
        device = ref.device if ref is not None else torch.device("cpu")
        dtype = ref.dtype if ref is not None else torch.float32
        bn = _materialise(self._template[0], device, dtype)
        self.export_copy(m, bn)
        return bn

    @torch.no_grad()
    def export_copy(self, m: int, bn: nn.Module) -> None:
        s = self.copy_slice(m)
        for name in ("weight", "bias", "running_mean", "running_var"):
            src = getattr(self, name)
            if src is not None:
                getattr(bn, name).copy_(src[s])
        if self.num_batches_tracked is not None:
            bn.num_batches_tracked.copy_(self.num_batches_tracked)

    @torch.no_grad()
    def import_copy(self, m: int, bn: nn.Module) -> None:
        """Overwrite copy m with the parameters and statistics of an unbatched BN."""
        s = self.copy_slice(m)
        for name in ("weight", "bias", "running_mean", "running_var"):
            dst = getattr(self, name)
            if dst is not None:
                dst[s] = getattr(bn, name).to(dst)

    def extra_repr(self) -> str:
        return f"copies={self.num_copies}, {self.num_features}, eps={self.eps}"


_STACKED = (StackedConv2d, StackedBatchNorm2d)


def _has_own_state(module: nn.Module) -> bool:
    return any(v is not None for v in module._parameters.values()) or any(
        v is not None for v in module._buffers.values()
    )


def _convert(module: nn.Module, num_copies: int) -> nn.Module:
    if isinstance(module, nn.Conv2d):
        return StackedConv2d(module, num_copies)
    if isinstance(module, nn.BatchNorm2d):
        return StackedBatchNorm2d(module, num_copies)
    if _has_own_state(module):
        raise NotImplementedError(
            f"cannot stack layer type {type(module).__name__}: batched tails support Conv2d, "
            "BatchNorm2d and parameter-free layers; choose a tail without it (e.g. tail='head')"
        )
    new = copy.copy(module)
    new.__dict__ = module.__dict__.copy()
    new._modules = OrderedDict(
        (name, None if child is None else _convert(child, num_copies))
        for name, child in module._modules.items()
    )
    return new


def stack_module(module: nn.Module, num_copies: int) -> nn.Module:
    """Copy of ``module`` for channel-stacked input: every Conv2d / BatchNorm2d becomes its
    M-copy version (all copies equal to the original); containers and parameter-free layers are
    copied and keep their ``forward``. ``module`` itself is not modified."""
    if num_copies < 1:
        raise ValueError(f"num_copies must be >= 1, got {num_copies}")
    return _convert(module, num_copies)


def unstack_module(module: nn.Module, m: int) -> nn.Module:
    """Inverse of :func:`stack_module` for copy ``m``: an ordinary module with copy m's weights
    (parameters are fresh tensors, independent of the stacked module)."""
    if isinstance(module, _STACKED):
        return module.unstacked(m)
    new = copy.copy(module)
    new.__dict__ = module.__dict__.copy()
    new._modules = OrderedDict(
        (name, None if child is None else unstack_module(child, m))
        for name, child in module._modules.items()
    )
    return new


def _leading_dense_conv(layer: nn.Module) -> StackedConv2d | None:
    """The stacked conv that first sees the tail's input, if it is dense and the input is not
    also used elsewhere (a residual block's shortcut); otherwise None."""
    if isinstance(layer, StackedConv2d):
        return layer if layer.groups == 1 else None
    if getattr(layer, "has_skip", True):  # unknown containers might reuse their input
        return None
    if getattr(layer, "conv_s2d", None) is not None:
        return None
    for child in layer.modules():
        if isinstance(child, _STACKED):
            return child if isinstance(child, StackedConv2d) and child.groups == 1 else None
    return None


AUTO_CHUNK_BYTES = 32 * 2**20
"""``chunk_size="auto"`` on the CPU: copies per pass so that one pass's widest activation stays
within this size (about a last-level cache; see ``StackedTail``)."""


class StackedTail(nn.Module):
    """M attribute-specific copies of ``layers`` + global average pooling, batched.

    ``forward(x)``: x (B, C, H, W), the features shared by all copies (trunk output) ->
    (B, M, D), where ``out[:, m]`` = avgpool(layers_m(x)) and D is the last layer's channels.
    ``unstacked(m)`` returns copy m as an ordinary ``nn.Sequential`` mapping (B, C, H, W) to (B, D).

    Args:
        layers: the tail, in execution order (e.g. ``[*blocks[-n:], conv_head, bn2]``); copied,
            not modified.
        num_copies: M >= 1.
        chunk_size: copies computed per pass. ``None``: all M in one pass (one grouped
            convolution per layer). An int c: ceil(M / c) passes of c copies over the same
            stacked parameters (the parameters are split once per forward, so the backward
            gathers each gradient in one operation). ``"auto"`` (default): all M on accelerators;
            on the CPU, c = AUTO_CHUNK_BYTES // (bytes of one copy's widest activation), at
            least 1 — a pass over all copies at once streams activations M times larger than
            the caches, which on CPUs costs more than the per-pass overhead it saves
            (``benchmarks/bench_tails.py``). Results do not depend on ``chunk_size``.
        pool_region: average only this window of the last feature map,
            ``(top, bottom, left, right)`` fractions (:mod:`apcnn.models.pooling`); None: all.
    """

    def __init__(
        self,
        layers: Sequence[nn.Module],
        num_copies: int,
        *,
        chunk_size: int | str | None = "auto",
        pool_region: Sequence[float] | None = None,
    ):
        super().__init__()
        self.pool_region = check_region(pool_region)
        if num_copies < 1:
            raise ValueError(f"num_copies must be >= 1, got {num_copies}")
        if len(layers) == 0:
            raise ValueError("a tail needs at least one layer")
        self.num_copies = int(num_copies)
        self.chunk_size = chunk_size
        self.layers = nn.Sequential(*[stack_module(layer, num_copies) for layer in layers])
        stacked = [mod for mod in self.layers.modules() if isinstance(mod, _STACKED)]
        if not stacked:
            raise ValueError("the tail has no Conv2d/BatchNorm2d layer to make attribute-specific")
        last = stacked[-1]
        self.feature_dim = (
            last.out_channels if isinstance(last, StackedConv2d) else last.num_features
        )
        self._widest = max(
            m.out_channels if isinstance(m, StackedConv2d) else m.num_features for m in stacked
        )
        lead = _leading_dense_conv(self.layers[0])
        if lead is not None:
            lead.set_shared_input(True)
        self.expand_input = lead is None

    @property
    def chunk_size(self) -> int | str | None:
        return self._chunk_size

    @chunk_size.setter
    def chunk_size(self, value: int | str | None) -> None:
        ok = value is None or value == "auto"
        ok = ok or (isinstance(value, int) and not isinstance(value, bool) and value >= 1)
        if not ok:
            raise ValueError(f"chunk_size must be None, 'auto' or an int >= 1, got {value!r}")
        self._chunk_size = value

    def copies_per_pass(self, x: torch.Tensor) -> int:
        """How many copies one pass computes for input ``x`` (see ``chunk_size``)."""
        c = self.chunk_size
        if c is None:
            return self.num_copies
        if c == "auto":
            if x.device.type != "cpu":
                return self.num_copies
            b, _, h, w = x.shape
            per_copy = max(1, b * h * w * self._widest * x.element_size())
            return max(1, min(self.num_copies, AUTO_CHUNK_BYTES // per_copy))
        return min(int(c), self.num_copies)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) shared features -> (B, M, D) attribute-specific pooled features."""
        if x.ndim != 4:
            raise ValueError(f"tail input must be (B, C, H, W), got shape {tuple(x.shape)}")
        M, c = self.num_copies, self.copies_per_pass(x)
        if self._syncs_batch_norm() and self.chunk_size == "auto" and x.device.type == "cpu":
            # "auto" follows this rank's batch slice; the global batch norm needs the same
            # passes (one all-reduce of the same size each) on every rank
            c = agree_min(c, x.device)
        if c >= M:
            y = self.layers(x.repeat(1, M, 1, 1) if self.expand_input else x)
            return region_mean(y, self.pool_region).view(y.shape[0], M, self.feature_dim)
        sizes = [min(c, M - start) for start in range(0, M, c)]
        stacked = [mod for mod in self.layers.modules() if isinstance(mod, _STACKED)]
        for mod in stacked:
            mod.split_copies(sizes)
        outs = []
        try:
            for j, n in enumerate(sizes):
                for mod in stacked:
                    mod.select_chunk(j)
                y = self.layers(x.repeat(1, n, 1, 1) if self.expand_input else x)
                outs.append(region_mean(y, self.pool_region))  # channel layout (n, D)
        finally:
            for mod in stacked:
                mod.select_chunk(None)
        return torch.cat(outs, 1).view(x.shape[0], M, self.feature_dim)

    def _syncs_batch_norm(self) -> bool:
        """Whether a forward now all-reduces batch-norm statistics over the ranks."""
        if sync_world_size() <= 1:
            return False
        return any(m.training for m in self.layers.modules() if isinstance(m, StackedBatchNorm2d))

    def unstacked(self, m: int) -> nn.Sequential:
        """Copy m as an independent module: (B, C, H, W) -> (B, D)."""
        self._check_index(m)
        mods = [unstack_module(layer, m) for layer in self.layers]
        seq = nn.Sequential(*mods, RegionPool(self.pool_region))
        return seq.train(self.training)

    @torch.no_grad()
    def load_copy(self, m: int, module: nn.Module) -> None:
        """Overwrite copy m with the weights of an unbatched tail (as from ``unstacked``)."""
        self._check_index(m)
        src = dict(module.named_modules())
        for name, mod in self.layers.named_modules():
            if isinstance(mod, _STACKED):
                if name not in src:
                    raise ValueError(f"module has no layer {name!r}; pass a tail from unstacked()")
                mod.import_copy(m, src[name])

    def _check_index(self, m: int) -> None:
        if not 0 <= m < self.num_copies:
            raise IndexError(f"copy index {m} out of range for {self.num_copies} copies")
