"""Data parallelism: shards, global batches, all-reduced solvers, torchrun runs on CPU (gloo)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from apcnn import distributed
from apcnn.checkpoint import load_checkpoint
from apcnn.solvers import fit_alternating

REPO = Path(__file__).resolve().parents[1]

# the demo configuration (configs/demo.yaml), on fewer and smaller images with a shorter schedule
SMALL_DEMO = [
    "data.options={num_images: 160}",
    "data.image_size=64",
    "train.epochs_single=2",
    "train.epochs_joint=1",
    "train.rounds=1",
]


# ----------------------------------------------------------------------------- pure helpers
@pytest.mark.parametrize("n", [0, 1, 7, 64, 101])
@pytest.mark.parametrize("world", [1, 2, 3, 8])
def test_shards_cover_every_row_once_in_order(n, world):
    ranges = [distributed.shard_range(n, r, world) for r in range(world)]
    rows = [i for start, stop in ranges for i in range(start, stop)]
    assert rows == list(range(n))
    sizes = [stop - start for start, stop in ranges]
    assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("world", [1, 2, 3, 5])
def test_global_batches_do_not_depend_on_the_number_of_ranks(world):
    n, batch = 103, 16
    one = distributed.GlobalBatchSampler(n, batch, seed=7)
    ranks = [
        distributed.GlobalBatchSampler(n, batch, seed=7, rank=r, world_size=world)
        for r in range(world)
    ]
    for epoch in (0, 3):
        for s in (one, *ranks):
            s.set_epoch(epoch)
        per_rank = [list(s) for s in ranks]
        for step, batch_idx in enumerate(one):
            union = [i for r in range(world) for i in per_rank[r][step]]
            assert union == batch_idx  # same samples, same order, no padding duplicates
        assert len(one) == len(per_rank[0]) == -(-n // batch)
    one.set_epoch(0)
    first = list(one)
    one.set_epoch(1)
    assert list(one) != first  # set_epoch reshuffles


def test_torchrun_command_standalone_and_multinode():
    cmd = distributed.torchrun_command(2, ["train", "-c", "x.yaml"])
    assert cmd[1:4] == ["-m", "torch.distributed.run", "--nproc_per_node=2"]
    assert "--standalone" in cmd and cmd[-5:] == ["-m", "apcnn", "train", "-c", "x.yaml"]
    multi = distributed.torchrun_command(
        4, ["train"], nnodes="2", rdzv_endpoint="node1:29500", rdzv_id="job7"
    )
    assert "--standalone" not in multi
    assert {"--nnodes=2", "--rdzv_endpoint=node1:29500", "--rdzv_id=job7"} <= set(multi)
    with pytest.raises(ValueError, match="rdzv-endpoint"):
        distributed.torchrun_command(4, ["train"], nnodes="2")


def test_one_process_helpers_are_identities():
    t = torch.arange(6.0).reshape(3, 2)
    assert torch.equal(distributed.all_reduce_sum(t), t)
    assert distributed.gather_rows(t, 3) is t
    distributed.assert_same_on_all_ranks(t, "t")
    assert not distributed.info().distributed


def _sharded_fit(X, Y, mask, world, shard=None, **kw):
    """fit_alternating on ``world`` row shards in threads, summing through a barrier: the
    algorithm of a data-parallel solve without processes. ``shard(X, rows)``: a rank's input
    (default ``X[rows]``)."""
    barrier = threading.Barrier(world)
    slots: list = [None] * world
    results: list = [None] * world

    def reduce_for(rank):
        def reduce(t):
            slots[rank] = t.clone()
            barrier.wait()
            total = sum(slots)  # the same order on every "rank"
            barrier.wait()
            return total

        return reduce

    def work(rank):
        start, stop = distributed.shard_range(X.shape[0], rank, world)
        rows = slice(start, stop)
        x = X[rows] if shard is None else shard(X, rows)
        results[rank] = fit_alternating(
            x, Y[rows], mask=mask[rows], sample_reduce=reduce_for(rank), **kw
        )

    threads = [threading.Thread(target=work, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


#: the sharded-solver tests' problem: two groups, tight tolerances (float64)
SHARD_SOLVE = dict(
    groups=[[0, 1, 2], [3, 4, 5]],
    mu=2.0,
    gamma=0.1,
    lam=0.5,
    K=4,
    bias=True,
    max_outer=10,
    tol=1e-10,
    inner_tol=1e-10,
    max_iter=500,
)


def _assert_shards_equal_one_process(shards, full) -> None:
    """L, S, bias identical on every shard and within 1e-9 relative of the one-process fit."""
    for name in ("L", "S", "bias"):
        ref = getattr(full, name)
        for res in shards:
            assert np.array_equal(getattr(res, name), getattr(shards[0], name))
        rel = np.linalg.norm(getattr(shards[0], name) - ref) / np.linalg.norm(ref)
        assert rel < 1e-9, name


def test_sharded_solver_equals_one_process_solver():
    """All-reduced sums of the smooth part + the same proximal steps on every shard: the same L
    and S as one process with all rows (float64: up to rounding), identical on all shards."""
    rng = np.random.default_rng(0)
    N, M, D = 90, 6, 10
    X = rng.normal(size=(N, M, D))
    Y = np.sign(np.einsum("nmd,dm->nm", X, rng.normal(size=(D, M))) + 0.3 * rng.normal(size=(N, M)))
    mask = rng.random((N, M)) > 0.2
    mask[:45, 5] = False  # attribute 5 labelled on the last shard only
    full = fit_alternating(X, Y, mask=mask, **SHARD_SOLVE)
    shards = _sharded_fit(X, Y, mask, 3, **SHARD_SOLVE)
    _assert_shards_equal_one_process(shards, full)
    assert shards[0].history[-1] == pytest.approx(full.history[-1], rel=1e-12)


def test_sharded_factored_features_equal_one_process():
    """mtl.features=factored under torchrun: each rank builds a FactoredFeatures of its rows of
    h with the same (replicated) tails, so its ReLU correction holds only its rows' negative
    pre-activations. The all-reduced solve on 3 such shards gives the L, S, bias and objective
    of one FactoredFeatures of all rows (float64, 1e-9), the same on every shard."""
    from apcnn.features_store import FactoredFeatures

    rng = np.random.default_rng(3)
    N, M, D, Dh = 90, 6, 8, 7
    h = np.abs(rng.normal(size=(N, Dh)))  # pooled trunk features are >= 0
    A = 0.6 * rng.normal(size=(M, D, Dh)) + np.eye(D, Dh)  # trained-like tails: many u < 0
    c = 0.3 * rng.normal(size=(M, D))
    full_x = FactoredFeatures(h, A, c)
    X = full_x.dense().numpy()
    Y = np.sign(np.einsum("nmd,dm->nm", X, rng.normal(size=(D, M))) + 0.3 * rng.normal(size=(N, M)))
    mask = rng.random((N, M)) > 0.2
    mask[:45, 5] = False
    world = 3

    def shard(_, rows):
        return FactoredFeatures(h[rows], A, c)

    for r in range(world):  # every shard carries a non-empty ReLU correction of its own rows
        start, stop = distributed.shard_range(N, r, world)
        part = shard(None, slice(start, stop))
        assert 0 < part.nnz < full_x.nnz
        # a matmul over fewer rows may block differently: equal up to the last bit or two
        np.testing.assert_allclose(part.dense().numpy(), X[start:stop], rtol=1e-13, atol=1e-15)
    full = fit_alternating(full_x, Y, mask=mask, **SHARD_SOLVE)
    shards = _sharded_fit(X, Y, mask, world, shard=shard, **SHARD_SOLVE)
    _assert_shards_equal_one_process(shards, full)
    assert shards[0].history[-1] == pytest.approx(full.history[-1], rel=1e-9)


# ----------------------------------------------------------------------------- gloo processes
def _collectives_worker(rank: int, world: int, init_file: str, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        n = 7
        start, stop = distributed.shard_range(n, rank, world)
        local = torch.arange(start, stop, dtype=torch.float32).unsqueeze(1).repeat(1, 3)
        gathered = distributed.gather_rows(local, n)
        total = distributed.all_reduce_sum(torch.tensor([float(rank + 1)]))
        distributed.assert_same_on_all_ranks(gathered, "gathered")
        error = ""
        try:
            distributed.assert_same_on_all_ranks(torch.tensor([float(rank)]), "rank id")
        except RuntimeError as exc:
            error = str(exc)
        if rank == 0:
            Path(out).write_text(
                json.dumps(
                    {"gathered": gathered[:, 0].tolist(), "total": float(total), "error": error}
                )
            )
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_gloo_collectives_gather_in_order_and_detect_divergence(tmp_path):
    import torch.multiprocessing as mp

    out = tmp_path / "out.json"
    mp.spawn(_collectives_worker, args=(2, str(tmp_path / "init"), str(out)), nprocs=2)
    result = json.loads(out.read_text())
    assert result["gathered"] == [float(i) for i in range(7)]
    assert result["total"] == 3.0
    assert "rank(s) [1]" in result["error"]


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["APCNN_CACHE"] = str(tmp_path / "cache")
    env["OMP_NUM_THREADS"] = "1"  # the same per-process threads in both runs
    env["PYTHONPATH"] = str(REPO / "src")
    return env


def _train(tmp_path: Path, out: Path, *extra: str, nproc: int | None = None, **popen):
    cmd = [sys.executable, "-m", "apcnn", "train", "-c", str(REPO / "configs" / "demo.yaml")]
    for item in [*SMALL_DEMO, *extra]:
        cmd += ["--set", item]
    cmd += ["--out", str(out)]
    if nproc is not None:
        cmd += ["--nproc", str(nproc)]
    return cmd, _env(tmp_path)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / a.norm().clamp(min=1e-30))


@pytest.mark.distributed
@pytest.mark.timeout(900)
@pytest.mark.parametrize("features", ["dense", "factored"])
def test_two_processes_train_like_one(tmp_path, features):
    """The demo configuration (fc tails) with 1 process and with 2 (torchrun, gloo): final L, S,
    bias and metrics agree within 1e-5 relative (measured 3e-13; factored 5e-14), with the
    solvers' features as the dense (n, M, D) array of each rank's rows or as
    ``mtl.features=factored`` (each rank a FactoredFeatures of its rows of h, with its own
    rows' ReLU correction).

    In double precision (``train.precision=float64``): in float32 the SGD part still agrees to
    rounding (1.5e-7), but the alternating L/S solver amplifies rounding-level differences of
    the all-reduced sums through its discrete backtracking, restart and stopping tests, to about
    2e-3 on W (docs/distributed.md).
    """
    runs = {}
    for nproc in (None, 2):
        out = tmp_path / f"run{nproc or 1}"
        # factored: each solver iteration reads the M (D, Dh) tail matrices (1280 x 1280 here),
        # which dominates at 84 rows; fewer iterations keep the test near the dense one's time
        extra = ["mtl.max_iter=40"] if features == "factored" else []
        cmd, env = _train(
            tmp_path,
            out,
            "train.precision=float64",
            f"mtl.features={features}",
            *extra,
            nproc=nproc,
        )
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=800)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[nproc or 1] = out
    one, two = runs[1], runs[2]
    m1 = json.loads((one / "metrics.json").read_text())["methods"]
    m2 = json.loads((two / "metrics.json").read_text())["methods"]
    for method in ("S-CNN", "MG-CNN"):
        assert m2[method]["total"] == pytest.approx(m1[method]["total"], rel=1e-5)
        for name, value in m1[method]["per_attribute"].items():
            assert m2[method]["per_attribute"][name] == pytest.approx(value, rel=1e-5)
        t1, _ = load_checkpoint(one / "checkpoints" / method)
        t2, _ = load_checkpoint(two / "checkpoints" / method)
        for key in ("head.L", "head.S", "head.bias", "calibration"):
            assert _rel(t1[key], t2[key]) < 1e-5, (method, key)
        tails = [k for k in t1 if k.startswith("cnn.") and t1[k].is_floating_point()]
        assert tails and max(_rel(t1[k], t2[k]) for k in tails) < 1e-5
    env = json.loads((two / "environment.json").read_text())
    assert env["world_size"] == 2
    log = (two / "train.log").read_text()
    assert "Traceback" not in log
    assert ("factored features:" in log) == (features == "factored")


def _rank_pids(parent: int, rank: int) -> list[int]:
    """PIDs of torchrun workers with ``RANK=<rank>`` that descend from process ``parent``."""

    def ppid(pid: int) -> int:
        status = (Path("/proc") / str(pid) / "status").read_text()
        return int(next(ln.split()[1] for ln in status.splitlines() if ln.startswith("PPid")))

    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            if f"RANK={rank}".encode() not in environ:
                continue
            if not any(e.startswith(b"TORCHELASTIC_RUN_ID=") for e in environ):
                continue
            pid = int(entry.name)
            while pid > 1 and pid != parent:
                pid = ppid(pid)
        except (OSError, StopIteration):
            continue
        if pid == parent:
            found.append(int(entry.name))
    return found


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_killed_rank_ends_the_job_and_resume_completes_it(tmp_path):
    out = tmp_path / "run"
    cmd, env = _train(tmp_path, out, "train.epochs_single=12", nproc=2)
    launcher = subprocess.Popen(
        cmd, env=env, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    state = out / "checkpoints" / "state" / "meta.json"
    deadline = time.time() + 600
    while time.time() < deadline and launcher.poll() is None:
        if state.exists() and json.loads(state.read_text())["completed"] >= 2:
            break
        time.sleep(0.2)
    assert launcher.poll() is None, launcher.communicate()[1][-3000:]
    victims = _rank_pids(launcher.pid, 1)
    assert victims, "rank 1 process not found"
    killed_at = time.time()
    os.kill(victims[0], signal.SIGKILL)
    try:
        _, stderr = launcher.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        launcher.kill()
        pytest.fail("the job did not end within 60 s after a rank was killed")
    assert time.time() - killed_at < 60
    assert launcher.returncode != 0
    assert "rank 1 failed first" in stderr, stderr[-3000:]
    assert "--resume" in stderr
    done = json.loads(state.read_text())["completed"]

    resume = subprocess.run(
        [*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=800
    )
    assert resume.returncode == 0, resume.stderr[-3000:]
    assert f"resumed after step {done}" in (out / "train.log").read_text()
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["methods"]) == {"S-CNN", "MG-CNN"}


@pytest.mark.distributed
@pytest.mark.timeout(900)
def test_two_processes_fine_tune_a_trainable_trunk(tmp_path):
    """model.freeze_trunk=false under torchrun: augmented images through DDP-wrapped trunk + tails
    on both ranks; the job ends cleanly and its saved trunk has moved off the pretrained one."""
    from apcnn.predictor import build_predictor

    out = tmp_path / "run"
    cmd, env = _train(
        tmp_path,
        out,
        "model.freeze_trunk=false",
        "train.methods=[S-CNN, MG-CNN]",
        "train.trunk_lr_scale=1",
        nproc=2,
    )
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())["methods"]
    assert set(metrics) == {"S-CNN", "MG-CNN"}
    tensors, meta = load_checkpoint(out / "checkpoints" / "MG-CNN")
    pretrained = build_predictor(meta["model"], pretrained=True).state_dict()
    trunk = [k for k in tensors if k.startswith("cnn.trunk.") and tensors[k].is_floating_point()]
    assert trunk and any(not torch.equal(tensors[k], pretrained[k]) for k in trunk)
    assert "Traceback" not in (out / "train.log").read_text()
