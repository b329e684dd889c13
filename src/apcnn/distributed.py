"""Data-parallel training with PyTorch's own engine: ``torch.distributed`` + DDP, via ``torchrun``.

One process per device (``torchrun --nproc_per_node=N -m apcnn train ...`` or ``apcnn train
--nproc N``). Each process holds every parameter; the data are split:

* **SGD**: every process draws the same global batch order (a pure function of seed and step)
  and takes its contiguous slice of each global batch (:class:`GlobalBatchSampler`); DDP sums
  the gradients, so the update is the one-process update with the same global batch, whatever N.
* **Feature extraction and evaluation**: contiguous shards of the rows (:func:`shard_range`),
  gathered back in dataset order (:func:`gather_rows`): every sample counted exactly once.
* **Solvers**: each process keeps its rows of X; the smooth part's sums over samples are
  all-reduced (:func:`all_reduce_sum`, passed to ``fit_alternating(sample_reduce=...)``) and
  every process applies the same proximal steps, so L and S stay identical on all ranks.

Backends: gloo on CPU, NCCL on CUDA (chosen from the device). A collective that waits longer
than the timeout raises, so a dead or stuck rank ends the job instead of hanging it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

__all__ = [
    "DistInfo",
    "GlobalBatchSampler",
    "all_reduce_sum",
    "assert_same_on_all_ranks",
    "barrier",
    "cleanup",
    "gather_rows",
    "info",
    "init_distributed",
    "launch",
    "shard_range",
]


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: ``rank`` of ``world_size`` (``local_rank`` on its node)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def info() -> DistInfo:
    """The current process group's facts (one process when none is initialised)."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistInfo()
    return DistInfo(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
        backend=dist.get_backend(),
    )


def init_distributed(device_type: str, timeout_s: float) -> DistInfo:
    """Join the process group ``torchrun`` set up (env ``WORLD_SIZE`` > 1); no-op otherwise.

    The backend is NCCL when the device is CUDA and gloo otherwise; on CUDA each process uses
    the GPU of its ``LOCAL_RANK``. Collectives time out after ``timeout_s`` seconds.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or dist.is_initialized():
        return info()
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    return info()


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if info().distributed:
        dist.barrier()


def _comm_device() -> torch.device:
    """NCCL moves CUDA tensors only; gloo works on CPU tensors."""
    if info().backend == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """``Σ_ranks tensor`` (a new tensor on the input's device; the input is unchanged)."""
    if not info().distributed:
        return tensor.clone()
    buf = tensor.detach().to(_comm_device(), copy=True)
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    return buf.to(tensor.device)


def shard_range(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """Contiguous, balanced ``[start, stop)`` of ``n`` rows for ``rank``: shards differ in size by
    at most one, cover every row exactly once and follow rank order (no padding)."""
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def gather_rows(local: torch.Tensor, n_total: int) -> torch.Tensor:
    """The ranks' contiguous shards (:func:`shard_range` of ``n_total``) concatenated in rank
    order, on every rank. ``all_gather`` needs equal shapes, so shards are padded to the largest
    one and the padding is cut off again: every row appears exactly once."""
    d = info()
    if not d.distributed:
        return local
    sizes = [shard_range(n_total, r, d.world_size) for r in range(d.world_size)]
    longest = max(stop - start for start, stop in sizes)
    if local.shape[0] != sizes[d.rank][1] - sizes[d.rank][0]:
        raise ValueError(
            f"rank {d.rank} holds {local.shape[0]} rows; its shard of {n_total} has "
            f"{sizes[d.rank][1] - sizes[d.rank][0]}"
        )
    device = _comm_device()
    padded = torch.zeros((longest, *local.shape[1:]), dtype=local.dtype, device=device)
    padded[: local.shape[0]] = local.to(device)
    parts = [torch.empty_like(padded) for _ in range(d.world_size)]
    dist.all_gather(parts, padded)
    rows = [p[: stop - start] for p, (start, stop) in zip(parts, sizes, strict=True)]
    return torch.cat(rows).to(local.device)


def assert_same_on_all_ranks(tensor: torch.Tensor, name: str) -> None:
    """Debug check that ``tensor`` is bitwise identical on every rank (raises naming the rank)."""
    d = info()
    if not d.distributed:
        return
    ref = tensor.detach().to(_comm_device(), copy=True)
    dist.broadcast(ref, src=0)
    same = torch.tensor(
        [float(torch.equal(ref, tensor.detach().to(ref.device)))], device=ref.device
    )
    flags = [torch.empty_like(same) for _ in range(d.world_size)]
    dist.all_gather(flags, same)
    bad = [r for r, f in enumerate(flags) if float(f) == 0.0]
    if bad:
        raise RuntimeError(f"{name} differs between rank 0 and rank(s) {bad}")


class GlobalBatchSampler(torch.utils.data.Sampler[list[int]]):
    """This rank's part of each global batch of a seeded shuffle, like ``DistributedSampler``
    with ``set_epoch``, but without its padding duplicates.

    Every rank draws the same permutation of ``range(n)`` (seed ``seed + epoch``), cuts it into
    global batches of ``batch_size`` and keeps the contiguous slice ``shard_range`` of each one.
    The union over ranks of step k's slices is exactly the one-process batch k, whatever the
    number of ranks (a rank's slice may be empty for a last batch smaller than the world).
    """

    def __init__(self, n: int, batch_size: int, *, seed: int, rank: int = 0, world_size: int = 1):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def global_batches(self) -> list[torch.Tensor]:
        gen = torch.Generator().manual_seed(self.seed + self.epoch)
        return list(torch.randperm(self.n, generator=gen).split(self.batch_size))

    def local(self, batch: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous slice of a global batch."""
        start, stop = shard_range(len(batch), self.rank, self.world_size)
        return batch[start:stop]

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.global_batches():
            yield self.local(batch).tolist()

    def __len__(self) -> int:
        return -(-self.n // self.batch_size)


# ------------------------------------------------------------------------------ launching
_ROOT_CAUSE = re.compile(r"rank\s*:\s*(\d+)")


def torchrun_command(
    nproc: int,
    argv: Sequence[str],
    *,
    nnodes: str = "1",
    rdzv_endpoint: str | None = None,
    rdzv_id: str | None = None,
) -> list[str]:
    """``python -m torch.distributed.run ... -m apcnn <argv>``: standalone rendezvous on one
    node, c10d rendezvous at ``rdzv_endpoint`` across nodes."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}"]
    if nnodes == "1" and rdzv_endpoint is None:
        cmd.append("--standalone")
    else:
        if rdzv_endpoint is None:
            raise ValueError("multi-node runs need --rdzv-endpoint HOST:PORT (the first node)")
        cmd += [f"--nnodes={nnodes}", "--rdzv_backend=c10d", f"--rdzv_endpoint={rdzv_endpoint}"]
        if rdzv_id:
            cmd.append(f"--rdzv_id={rdzv_id}")
    return [*cmd, "-m", "apcnn", *argv]


def launch(nproc: int, argv: Sequence[str], **rendezvous: str | None) -> int:
    """Run ``apcnn <argv>`` in ``nproc`` processes under torchrun; returns its exit status.

    torchrun's output is passed through; when a rank fails, torchrun stops the others and this
    prints one line naming the failed rank and how to continue (``--resume``).
    """
    cmd = torchrun_command(nproc, argv, **rendezvous)
    env = dict(os.environ)
    # torchrun would set 1 thread per process and warn; we split the cores explicitly instead
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True, bufsize=1)
    tail: list[str] = []
    assert proc.stderr is not None
    for line in proc.stderr:
        sys.stderr.write(line)
        tail = [*tail[-200:], line]
    code = proc.wait()
    if code != 0:
        text = "".join(tail)
        cause = text.split("Root Cause", 1)[-1] if "Root Cause" in text else ""
        match = _ROOT_CAUSE.search(cause)
        who = f"rank {match.group(1)} failed first" if match else "a rank failed"
        print(
            f"apcnn: distributed run stopped ({who}; torchrun exit status {code}). The run "
            "folder keeps the last completed step: rerun the same command with --resume.",
            file=sys.stderr,
        )
    return code
