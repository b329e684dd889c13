"""Batch norm of stacked tails over the global batch: N gloo ranks with slices of a batch give
the outputs, gradients and running statistics of one process with the whole batch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from apcnn import distributed
from apcnn.models import sync_bn, tails
from apcnn.models.tails import StackedBatchNorm2d, StackedTail

M = 3


def _bn_act(c: int) -> nn.Module:
    from timm.layers import BatchNormAct2d

    return BatchNormAct2d(c, act_layer=nn.SiLU)


def _perturb(module: nn.Module, seed: int) -> nn.Module:
    """Different copies: noise on parameters and running statistics."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
        for name, b in module.named_buffers():
            if name.endswith("running_mean"):
                b.add_(0.3 * torch.randn(b.shape, generator=g))
            elif name.endswith("running_var"):
                b.mul_(1 + torch.rand(b.shape, generator=g))
    return module


def _modules() -> dict[str, nn.Module]:
    """A stacked BN, a stacked BatchNormAct2d (momentum=None: cumulative average) and a small
    conv tail (dense shared first conv, BN, ReLU, depthwise conv, BN + SiLU) run in passes of
    2 copies, or of ``chunk_size="auto"`` copies (``_all_steps`` sets a budget under which
    ranks with 3 and 2 samples would choose different passes)."""
    torch.manual_seed(0)
    bn = StackedBatchNorm2d(nn.BatchNorm2d(4), M)
    bn_act = _bn_act(4)
    bn_act.momentum = None
    layers = [
        nn.Conv2d(4, 6, 3, padding=1, bias=False),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Conv2d(6, 6, 3, padding=1, groups=6, bias=False),
        _bn_act(6),
    ]
    return {
        "bn": _perturb(bn, 1),
        "bn_act": _perturb(StackedBatchNorm2d(bn_act, M), 2),
        "tail": _perturb(StackedTail(layers, M, chunk_size=2), 3),
        "tail_auto": _perturb(StackedTail(layers, M, chunk_size="auto"), 4),
    }


def _batch(name: str, b: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Input (B, C, H, W) with a channel offset (mean far from 0) and an upstream gradient."""
    g = torch.Generator().manual_seed(b)
    is_tail = name.startswith("tail")
    channels = 4 if is_tail else 4 * M
    x = 3.0 + 2.0 * torch.randn(b, channels, 5, 5, generator=g)
    out_shape = (b, M, 6) if is_tail else (b, channels, 5, 5)
    return x, torch.randn(out_shape, generator=g)


def _step(module: nn.Module, x: torch.Tensor, up: torch.Tensor, ddp: bool) -> dict:
    """Forward + backward of sum(y · up) in train mode, then an eval forward. Under DDP the
    loss is scaled by the world size (DDP averages the ranks' gradients), as ``sgd_epoch``
    does; without DDP the ranks' parameter gradients are summed here."""
    world = distributed.info().world_size
    module.train()
    run = module
    if ddp and world > 1:
        from torch.nn.parallel import DistributedDataParallel

        run = DistributedDataParallel(module)
    x = x.clone().requires_grad_(True)
    y = run(x)
    loss = (y * up).sum() * (world if ddp else 1)
    loss.backward()
    grads = {
        n: p.grad if ddp else distributed.all_reduce_sum(p.grad)
        for n, p in module.named_parameters()
    }
    module.eval()
    with torch.no_grad():
        y_eval = module(x.detach())
    return {
        "y": y.detach(),
        "x_grad": x.grad / world if ddp else x.grad,  # DDP averages parameters' only
        "grads": grads,
        "buffers": {n: b.clone() for n, b in module.named_buffers()},
        "y_eval": y_eval,
    }


def _all_steps(batch: int) -> dict:
    """Each module's step on this rank's slice (``shard_range``) of the global batch."""
    d = distributed.info()
    out = {}
    budget = tails.AUTO_CHUNK_BYTES
    tails.AUTO_CHUNK_BYTES = 2 * 25 * 6 * 4  # 2 samples of 5x5x6 float32: 2 copies, 3: 1
    try:
        for name, module in _modules().items():
            x, up = _batch(name, batch)
            start, stop = distributed.shard_range(batch, d.rank, d.world_size)
            ddp = name.startswith("tail")
            out[name] = _step(module, x[start:stop], up[start:stop], ddp=ddp)
    finally:
        tails.AUTO_CHUNK_BYTES = budget
    return out


def _worker(rank: int, world: int, init_file: str, batch: int, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.save(_all_steps(batch), Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0


@pytest.mark.distributed
@pytest.mark.parametrize(
    ("world", "batch"),
    [(1, 5), (2, 6), (2, 5), (2, 1), (3, 7)],
    ids=["one-rank", "even", "uneven", "empty-rank", "three"],
)
def test_ranks_normalise_with_the_global_batch(tmp_path, world, batch):
    """Outputs, input gradients, parameter gradients and running statistics of N gloo ranks
    with slices of the batch (uneven, or one rank empty) equal one process with the whole
    batch (float32: measured < 1e-6 relative); one rank in a process group is bitwise the
    one-process result (no all-reduce)."""
    import torch.multiprocessing as mp

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the workers: the same conv reductions, bit for bit
    try:
        reference = _all_steps(batch)  # no process group: today's F.batch_norm path
    finally:
        torch.set_num_threads(threads)
    mp.spawn(_worker, args=(world, str(tmp_path / "init"), batch, str(tmp_path)), nprocs=world)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]
    for name, ref in reference.items():
        for r, got in enumerate(ranks):
            start, stop = distributed.shard_range(batch, r, world)
            pairs = [
                ("y", ref["y"][start:stop], got[name]["y"]),
                ("x_grad", ref["x_grad"][start:stop], got[name]["x_grad"]),
                ("y_eval", ref["y_eval"][start:stop], got[name]["y_eval"]),
            ]
            pairs += [(k, v, got[name]["grads"][k]) for k, v in ref["grads"].items()]
            pairs += [(k, v, got[name]["buffers"][k]) for k, v in ref["buffers"].items()]
            for what, want, have in pairs:
                assert have.shape == want.shape, (name, what)
                if world == 1:
                    assert torch.equal(have, want), (name, what)
                else:
                    scale = max(1.0, float(want.double().abs().max())) if want.numel() else 1.0
                    assert _max_diff(want, have) <= 2e-6 * scale, (name, what, r)


def test_one_process_does_not_reduce(monkeypatch):
    """Without a process group the train and eval forwards never reach the global path and are
    bit for bit what they were before it existed: ``F.batch_norm`` on the stacked channels."""

    def fail(*args, **kwargs):
        raise AssertionError("global path taken in one process")

    monkeypatch.setattr("apcnn.models.tails.global_batch_norm", fail)
    monkeypatch.setattr("apcnn.models.tails.agree_min", fail)
    stacked = StackedBatchNorm2d(_perturb(nn.BatchNorm2d(4), 5), M)
    x, _ = _batch("bn", 6)
    for train in (True, False):
        stacked.train(train)
        rm, rv = stacked.running_mean.clone(), stacked.running_var.clone()
        want = F.batch_norm(x, rm, rv, stacked.weight, stacked.bias, train, 0.1, stacked.eps)
        assert torch.equal(stacked(x), want)
        assert torch.equal(stacked.running_mean, rm) and torch.equal(stacked.running_var, rv)
    modules = _modules()
    modules["tail_auto"](_batch("tail", 4)[0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_global_formula_with_one_rank_equals_batch_norm(dtype):
    """The formula itself (``reduce`` = identity: one rank) against ``F.batch_norm``: outputs,
    gradients of x, weight, bias and running statistics, with a mean far from 0."""
    g = torch.Generator().manual_seed(0)
    x = (50.0 + torch.randn(7, 5, 3, 4, generator=g)).to(dtype)
    up = torch.randn(x.shape, generator=g).to(dtype)
    w = (1 + 0.3 * torch.randn(5, generator=g)).to(dtype)
    b = (0.3 * torch.randn(5, generator=g)).to(dtype)
    results = []
    for fn in ("torch", "global"):
        xi, wi, bi = (t.clone().requires_grad_(True) for t in (x, w, b))
        rm, rv = torch.zeros(5, dtype=dtype), torch.ones(5, dtype=dtype)
        if fn == "torch":
            y = F.batch_norm(xi, rm, rv, wi, bi, True, 0.1, 1e-5)
        else:
            y = sync_bn.global_batch_norm(xi, rm, rv, wi, bi, 0.1, 1e-5, reduce=lambda t: t)
        (y * up).sum().backward()
        results.append([y, xi.grad, wi.grad, bi.grad, rm, rv])
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    for want, have in zip(*results, strict=True):
        torch.testing.assert_close(have, want, rtol=tol, atol=tol)
    with pytest.raises(ValueError, match="more than 1 value"):
        sync_bn.global_batch_norm(x[:1, :, :1, :1], None, None, None, None, 0.1, 1e-5, lambda t: t)
