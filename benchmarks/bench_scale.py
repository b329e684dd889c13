"""MG-CNN solve cost as the data grows: dense (N, M, D) features vs factored fc tails.

Synthetic problem per case (no images): trunk features h (N, Dh = 1280) >= 0 (a ReLU of a
Gaussian), fc tails ``x_m = relu(A_m h + c_m)`` with ``A_m = I + E_m`` (E_m >= 0, 16 nonzeros
per row, scale 0.02) and ``c_m >= 0`` so every attribute has its own features; labels from a
planted linear model plus noise, 10% missing; groups of 8 consecutive attributes; K = 64.
Each case runs in its own subprocess (``--case``), which builds the features -- dense: the
(N, M, D) float32 array as training hands it to the solvers; factored:
:class:`apcnn.features_store.FactoredFeatures` -- and runs ``fit_alternating`` with the
presets' penalties (mu 0.002, gamma 1e-5, lam 1e-4 per sample, scaled by N) and a fixed amount
of work (``--outer`` alternations of at most ``--iters`` proximal-gradient iterations each, no
early stop), so that the wall time measures the cost per iteration. Peak RSS is the child's
``resource.getrusage(RUSAGE_SELF).ru_maxrss`` (set-up included).

Reported: wall time of the solve and per outer iteration, peak RSS, their ratios against the
dense path of the same (N, M) measured in the same run (where the dense array fits in
``--dense-limit-gb``), and the growth exponents (least-squares slope of log time and log RSS
against log N, per path and M).

Run from the repository root: ``python benchmarks/bench_scale.py [--quick]`` (``--quick``: N in
{2000, 4000}, M in {23, 40}). ``--celeba``: also the CelebA-size case (N = 162,770, M = 40,
factored) with the celeba preset's solver settings and time budget (about 15 minutes).
Prints a Markdown section; ``--write-docs`` replaces the "scale" section of
docs/benchmarks.md with it.

``--presets awa2,celeba,cub`` measures instead whole training runs of those presets
(``apcnn train -c configs/NAME.yaml``, S-CNN and MG-CNN) on generated replicas of the datasets'
published layouts (``tests/test_presets_replica.py``: every attribute of the real dataset, small
JPEGs), at the replica sizes of ``--replica-sizes``, with only the size shrunk
(:data:`PRESET_SMALL`: 64-pixel images, one epoch per stage, one round, ``--preset-iters``
solver iterations per call). Reported per run: N (training images), wall time, the child
process's peak RSS, the SGD time per epoch and per image, the solver time per call and per
iteration; and a linear fit of each in N (least squares over the sizes measured) evaluated at
N = 10,000: a linear extrapolation from the measured points, not a measurement.
``--write-docs`` then writes the "scale-presets" section.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

D = 1280
K = 64
PENALTIES = dict(mu=0.002, gamma=1e-5, lam=1e-4)  # per sample, as in the presets


def build(N: int, M: int, seed: int = 0, c_shift: float = 0.0):
    """h (N, D) float32, tail weights A (M, D, D), offsets c (M, D), labels, mask, groups.

    ``c_shift`` > 0 lowers the offsets (c in [-c_shift, 0.05 - c_shift]) so that part of the
    pre-activations are negative, as after SGD has moved the tails: the factored path then
    stores its ReLU correction (the case's ``nnz``)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    h = torch.relu(torch.randn(N, D, generator=gen))
    A = torch.eye(D).repeat(M, 1, 1)
    cols = torch.randint(0, D, (M, D, 16), generator=gen)
    A.scatter_add_(2, cols, 0.02 * torch.rand(M, D, 16, generator=gen))
    c = 0.05 * torch.rand(M, D, generator=gen) - c_shift
    # planted labels through the tails' scores h A_mᵀ v_m (v_m random), 10% missing
    V = torch.randn(D, M, generator=gen) / math.sqrt(D)
    AV = torch.bmm(V.T.unsqueeze(1), A).squeeze(1)  # (M, D): row m is (A_mᵀ v_m)ᵀ
    z = h @ AV.T
    z = z - z.median(0).values + 0.3 * z.std(0) * torch.randn(N, M, generator=gen)
    Y = torch.where(z > 0, 1.0, -1.0).numpy()
    mask = (torch.rand(N, M, generator=gen) > 0.1).numpy()
    groups = [list(range(s, min(s + 8, M))) for s in range(0, M, 8)]
    return h, A, c, Y, mask, groups


def run_case(
    N: int, M: int, path: str, outer: int, iters: int, budget: float | None, c_shift: float = 0.0
) -> dict:
    import torch

    from apcnn.features_store import FactoredFeatures
    from apcnn.solvers import fit_alternating

    torch.set_num_threads(os.cpu_count() or 1)
    if path == "dense-copy":  # the solvers before the chunked path: an attribute-major copy
        import apcnn.solvers

        apcnn.solvers.COPY_LIMIT = 2**62
    t0 = time.perf_counter()
    h, A, c, Y, mask, groups = build(N, M, c_shift=c_shift)
    if path.startswith("dense"):
        X = np.empty((N, M, D), dtype=np.float32)
        step = max(1, 2**26 // (M * D))
        for s in range(0, N, step):
            part = FactoredFeatures(h[s : s + step].numpy(), A.numpy(), c.numpy())
            X[s : s + step] = part.dense().numpy()
        features = X
    else:
        features = FactoredFeatures(h.numpy(), A.numpy(), c.numpy())
    del h, A, c
    setup = time.perf_counter() - t0
    n = float(mask.sum(0).mean())  # per-sample penalties -> eq. 2 (selection.solver_penalties)
    pen = {k: v * n for k, v in PENALTIES.items()}
    W0 = np.random.default_rng(0).standard_normal((D, M)).astype(np.float32) * 0.01
    lines: list[str] = []
    kw = dict(max_outer=outer, tol=1e-12, max_iter=iters, inner_tol=1e-12)
    if budget is not None:  # the preset's settings (celeba), its time budget
        kw = dict(max_outer=20, tol=1e-5, max_iter=500, inner_tol=1e-6, time_budget_s=budget)
    t1 = time.perf_counter()
    res = fit_alternating(
        features, Y, groups, **pen, K=K, mask=mask, W0=W0, bias=True,
        report=lambda p: lines.append(f"{time.perf_counter() - t1:7.1f} s  {p.line()}"),
        progress_every_s=10.0, **kw,
    )  # fmt: skip
    solve = time.perf_counter() - t1
    gaps = [i.gap for i in res.infos]
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    return {
        "N": N,
        "M": M,
        "path": path,
        "setup_s": setup,
        "solve_s": solve,
        "outer": res.n_iter,
        "inner": sum(i.n_iter for i in res.infos),
        "per_outer_s": solve / max(res.n_iter, 1),
        "rss_gb": rss,
        "objective": res.history[-1],
        "objective_0": res.history[0],
        "stop": res.stop,
        "nnz": int(getattr(features, "nnz", 0)),
        "negative_fraction": int(getattr(features, "nnz", 0)) / (N * M * D),
        "c_shift": c_shift,
        "max_gap": max(gaps) if gaps else None,
        "log": lines,
    }


def spawn(N: int, M: int, path: str, args: argparse.Namespace, budget: float | None = None):
    cmd = [sys.executable, __file__, "--case", str(N), str(M), path, "--outer", str(args.outer)]
    cmd += ["--iters", str(args.iters)] + (["--budget", str(budget)] if budget else [])
    cmd += ["--c-shift", str(args.c_shift)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        print(out.stderr[-3000:], file=sys.stderr)
        return None
    row = json.loads(out.stdout.strip().splitlines()[-1])
    print(
        f"N={N} M={M} {path}: solve {row['solve_s']:.1f} s ({row['per_outer_s']:.2f} s/outer), "
        f"setup {row['setup_s']:.1f} s, peak RSS {row['rss_gb']:.2f} GB",
        file=sys.stderr,
        flush=True,
    )
    return row


def slope(rows: list[dict], key: str) -> float | None:
    pts = [(math.log(r["N"]), math.log(r[key])) for r in rows]
    if len(pts) < 2:
        return None
    x, y = np.array(pts).T
    return float(np.polyfit(x, y, 1)[0])


def markdown(rows: list[dict], args: argparse.Namespace, celeba: dict | None) -> str:
    dense = {(r["N"], r["M"]): r for r in rows if r["path"] == "dense"}
    # the baseline: today's dense path with its attribute-major copy where it was run
    dense.update({(r["N"], r["M"]): r for r in rows if r["path"] == "dense-copy"})
    out = [
        "## Scale: MG-CNN solve, dense vs factored fc-tail features (`benchmarks/bench_scale.py`)",
        "",
        f"Synthetic trunk features, D = {D}, K = {K}, fc tails (`A_m = I + E_m`), groups of 8; "
        f"{args.outer} alternations of at most {args.iters} iterations per sub-problem (fixed "
        "work, no early stop). dense: the (N, M, D) float32 array (run where it is at most "
        f"{args.dense_limit_gb:g} GB), read in chunks of rows; dense-copy: the same with the "
        "attribute-major copy the solvers made before (the baseline where run); factored: "
        "`apcnn.features_store.FactoredFeatures`. Peak RSS: the case's subprocess, set-up "
        "included. Ratios: against dense-copy at the same (N, M) where run, else dense.",
        "",
        "| N | M | path | solve s | s / outer | peak RSS GB | time ratio | RSS ratio | "
        "objective rel. diff |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    order = {"dense-copy": 0, "dense": 1, "factored": 2}
    rows = sorted(rows, key=lambda r: (r["M"] != 40, r["M"], r["N"], order[r["path"]]))
    for r in rows:
        base = dense.get((r["N"], r["M"]))
        tr = rr = diff = "—"
        if base is not None and r is not base:
            tr = f"{r['solve_s'] / base['solve_s']:.3f}"
            rr = f"{r['rss_gb'] / base['rss_gb']:.3f}"
            diff = f"{abs(r['objective'] - base['objective']) / abs(base['objective']):.1e}"
        out.append(
            f"| {r['N']} | {r['M']} | {r['path']} | {r['solve_s']:.1f} | {r['per_outer_s']:.2f} | "
            f"{r['rss_gb']:.2f} | {tr} | {rr} | {diff} |"
        )
    out += ["", "Growth exponents in N (slope of log-log least squares):", ""]
    for path in ("dense-copy", "dense", "factored"):
        for M in sorted({r["M"] for r in rows}):
            sel = [r for r in rows if r["path"] == path and r["M"] == M]
            t, m = slope(sel, "solve_s"), slope(sel, "rss_gb")
            if t is not None:
                out.append(f"- {path}, M = {M}: time ∝ N^{t:.2f}, peak RSS ∝ N^{m:.2f}")
    if celeba is not None:
        out += [
            "",
            f"CelebA size, factored (N = {celeba['N']}, M = {celeba['M']}, celeba preset's "
            "solver settings and time budget): solve "
            f"{celeba['solve_s']:.0f} s ({celeba['outer']} outer iterations, {celeba['inner']} "
            f"inner, stop: {celeba['stop']}), set-up {celeba['setup_s']:.0f} s, peak RSS "
            f"{celeba['rss_gb']:.2f} GB; objective {celeba['objective_0']:.6g} → "
            f"{celeba['objective']:.6g}.",
        ]
    return "\n".join(out)


# ------------------------------------------------------------------------- whole preset runs
#: what shrinks a preset's run on a replica; everything else is the preset's own setting
PRESET_SMALL = [
    "data.image_size=64",
    "data.num_workers=0",
    "train.epochs_single=1",
    "train.epochs_joint=1",
    "train.rounds=1",
]


def _replica_writers():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "replicas", ROOT / "tests" / "test_presets_replica.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.REPLICAS


def run_preset(preset: str, size: int, iters: int, work: Path) -> dict:
    """One ``apcnn train`` of ``preset`` on a replica of ``size`` images (AwA: per class), in a
    child process; its wall time, peak RSS (``wait4``) and the step timings of metrics.jsonl."""
    import shutil

    write = _replica_writers()[preset][0]
    case = work / f"{preset}-{size}"
    shutil.rmtree(case, ignore_errors=True)
    root = write(case / "data", **({"images_per_class": size} if "awa" in preset else {"n": size}))
    out = case / "run"
    cmd = [sys.executable, "-m", "apcnn", "train", "-c", str(ROOT / "configs" / f"{preset}.yaml")]
    cmd += ["--out", str(out)]
    for item in [f"data.root={root}", *PRESET_SMALL, f"mtl.iter_budget={iters}"]:
        cmd += ["--set", item]
    env = dict(os.environ, APCNN_CACHE=str(case / "cache"))
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{preset} at {size}: apcnn train failed:\n{err[-3000:]}")
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    sgd = [r["seconds"] for r in steps if r.get("phase") == "sgd"]
    log = (out / "train.log").read_text()
    shape = re.search(r"factored tail features (\d+)x(\d+)x(\d+)", log)
    calls = re.findall(r"solve \(mu=[^)]*\): (.*) after \d+ outer iterations, ([\d.]+) s", log)
    budget = [float(t) for how, t in calls if f"iter_budget={iters}" in how]
    methods = json.loads((out / "metrics.json").read_text())["methods"]
    return {
        "preset": preset,
        "size": size,
        "N": int(shape.group(1)),
        "M": int(shape.group(2)),
        "wall_s": wall,
        "rss_gb": usage.ru_maxrss / 2**20,  # KiB -> GiB
        "sgd_epoch_s": float(np.mean(sgd)),
        "solve_calls": len(calls),
        "solve_s": float(np.mean([float(t) for _, t in calls])),
        # seconds per iteration, from the calls the iteration budget stopped
        "iter_s": float(np.mean(budget)) / iters if budget else math.nan,
        "total": {m: methods[m]["total"] for m in ("S-CNN", "MG-CNN")},
    }


def _at(rows: list[dict], key: str, n: float) -> float:
    """The least-squares line of ``key`` against N through ``rows``, evaluated at ``n``."""
    x = np.array([r["N"] for r in rows], dtype=float)
    y = np.array([r[key] for r in rows], dtype=float)
    if len(set(x)) < 2 or not np.isfinite(y).all():
        return math.nan
    slope, icept = np.polyfit(x, y, 1)
    return float(slope * n + icept)


def preset_markdown(rows: list[dict], iters: int) -> str:
    out = [
        "### Presets end to end on generated replicas (`bench_scale.py --presets`)",
        "",
        "`apcnn train -c configs/NAME.yaml` (S-CNN, then MG-CNN: solve, one SGD epoch, solve) on "
        "replicas of the published layouts with every attribute of the real dataset "
        "(tests/test_presets_replica.py), the preset's settings except "
        f"`{' '.join(PRESET_SMALL)} mtl.iter_budget={iters}`. N: training rows the solver "
        "sees (after the validation split). Wall: the whole command (feature extraction, "
        "checkpoints and reports included); peak RSS: its process; SGD: seconds per epoch; solve: "
        "seconds per solver call, and per proximal-gradient iteration.",
        "",
        "| preset | M | N | wall s | peak RSS GB | SGD s / epoch | solve s / call | s / iteration "
        "| test acc. S-CNN / MG-CNN |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: (r["preset"], r["N"])):
        acc = f"{100 * r['total']['S-CNN']:.1f} / {100 * r['total']['MG-CNN']:.1f}"
        out.append(
            f"| {r['preset']} | {r['M']} | {r['N']} | {r['wall_s']:.0f} | {r['rss_gb']:.2f} | "
            f"{r['sgd_epoch_s']:.1f} | {r['solve_s']:.1f} | {r['iter_s']:.3f} | {acc} |"
        )
    out += [
        "",
        "Per 10,000 training images, a **linear extrapolation** (least-squares line in N "
        "through the sizes above, evaluated at N = 10,000; not measured):",
        "",
        "| preset | peak RSS GB | SGD s / epoch | s / solver iteration |",
        "|---|---|---|---|",
    ]
    for preset in sorted({r["preset"] for r in rows}):
        sel = [r for r in rows if r["preset"] == preset]
        vals = [_at(sel, k, 10_000) for k in ("rss_gb", "sgd_epoch_s", "iter_s")]
        out.append(f"| {preset} | {vals[0]:.2f} | {vals[1]:.0f} | {vals[2]:.3f} |")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--celeba", action="store_true", help="also the CelebA-size case")
    p.add_argument("--celeba-budget", type=float, default=600.0)
    p.add_argument("--outer", type=int, default=2)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--dense-limit-gb", type=float, default=3.3)
    p.add_argument("--json", type=Path, default=None, help="also write the rows here")
    p.add_argument("--rows", type=Path, default=None, help="start from the rows of a --json file")
    p.add_argument(
        "--copy-limit-gb", type=float, default=1.7, help="dense-copy where X is at most this"
    )
    p.add_argument("--write-docs", action="store_true")
    p.add_argument("--presets", default=None, help="comma-separated presets: whole runs instead")
    p.add_argument(
        "--replica-sizes",
        default="300,900",
        help="replica sizes (images; AwA: images per class, 50 classes)",
    )
    p.add_argument("--preset-iters", type=int, default=60, help="solver iterations per call")
    p.add_argument("--work", type=Path, default=Path("/tmp/bench_scale_presets"))
    p.add_argument(
        "--no-run", action="store_true", help="with --presets and --rows: only print the rows"
    )
    p.add_argument("--case", nargs=3, metavar=("N", "M", "PATH"), help=argparse.SUPPRESS)
    p.add_argument("--budget", type=float, default=None, help=argparse.SUPPRESS)
    p.add_argument(
        "--c-shift",
        type=float,
        default=0.0,
        help="lower the tail offsets by this: negative pre-activations, as in trained tails",
    )
    args = p.parse_args()
    if args.case:
        N, M, path = int(args.case[0]), int(args.case[1]), args.case[2]
        print(json.dumps(run_case(N, M, path, args.outer, args.iters, args.budget, args.c_shift)))
        return
    if args.presets:
        rows = json.loads(args.rows.read_text())["rows"] if args.rows else []
        for preset in [] if args.no_run else args.presets.split(","):
            for size in (int(v) for v in args.replica_sizes.split(",")):
                row = run_preset(preset, size, args.preset_iters, args.work)
                rows.append(row)
                print(
                    f"{preset} N={row['N']}: {row['wall_s']:.0f} s, peak RSS "
                    f"{row['rss_gb']:.2f} GB",
                    file=sys.stderr,
                    flush=True,
                )
                if args.json:
                    args.json.write_text(json.dumps({"rows": rows}, indent=1))
        text = preset_markdown(rows, args.preset_iters)
        print(text)
        if args.write_docs:
            from benchmarks._report import write_section

            write_section("scale-presets", text)
        return
    if args.quick:
        grid = [(n, m) for m in (23, 40) for n in (2000, 4000)]
    else:
        grid = [(n, 40) for n in (2000, 5000, 10000, 20000, 40000, 80000, 160000)]
        grid += [(n, m) for m in (23, 85, 312) for n in (2000, 6000)]
    rows = json.loads(args.rows.read_text())["rows"] if args.rows else []
    done = {(r["N"], r["M"], r["path"]) for r in rows}
    for N, M in grid:
        gb = N * M * D * 4 / 1e9
        paths = ["dense-copy"] if gb <= args.copy_limit_gb else []
        paths += (["dense"] if gb <= args.dense_limit_gb else []) + ["factored"]
        paths = [p for p in paths if (N, M, p) not in done]
        for path in paths:
            row = spawn(N, M, path, args)
            if row is not None:
                rows.append(row)
                if args.json:  # as it goes: a long run keeps what it measured
                    args.json.write_text(json.dumps({"rows": rows, "celeba": None}, indent=1))
    celeba = spawn(162770, 40, "factored", args, args.celeba_budget) if args.celeba else None
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "celeba": celeba}, indent=1))
    text = markdown(rows, args, celeba)
    print(text)
    if args.write_docs:
        from benchmarks._report import write_section

        write_section("scale", text)


if __name__ == "__main__":
    main()
