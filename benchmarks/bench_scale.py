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
"""

from __future__ import annotations

import argparse
import json
import math
import os
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


def build(N: int, M: int, seed: int = 0):
    """h (N, D) float32, tail weights A (M, D, D), offsets c (M, D), labels, mask, groups."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    h = torch.relu(torch.randn(N, D, generator=gen))
    A = torch.eye(D).repeat(M, 1, 1)
    cols = torch.randint(0, D, (M, D, 16), generator=gen)
    A.scatter_add_(2, cols, 0.02 * torch.rand(M, D, 16, generator=gen))
    c = 0.05 * torch.rand(M, D, generator=gen)
    # planted labels through the tails' scores h A_mᵀ v_m (v_m random), 10% missing
    V = torch.randn(D, M, generator=gen) / math.sqrt(D)
    AV = torch.bmm(V.T.unsqueeze(1), A).squeeze(1)  # (M, D): row m is (A_mᵀ v_m)ᵀ
    z = h @ AV.T
    z = z - z.median(0).values + 0.3 * z.std(0) * torch.randn(N, M, generator=gen)
    Y = torch.where(z > 0, 1.0, -1.0).numpy()
    mask = (torch.rand(N, M, generator=gen) > 0.1).numpy()
    groups = [list(range(s, min(s + 8, M))) for s in range(0, M, 8)]
    return h, A, c, Y, mask, groups


def run_case(N: int, M: int, path: str, outer: int, iters: int, budget: float | None) -> dict:
    import torch

    from apcnn.features_store import FactoredFeatures
    from apcnn.solvers import fit_alternating

    torch.set_num_threads(os.cpu_count() or 1)
    if path == "dense-copy":  # the solvers before the chunked path: an attribute-major copy
        import apcnn.solvers

        apcnn.solvers.COPY_LIMIT = 2**62
    t0 = time.perf_counter()
    h, A, c, Y, mask, groups = build(N, M)
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
        "max_gap": max(gaps) if gaps else None,
        "log": lines,
    }


def spawn(N: int, M: int, path: str, args: argparse.Namespace, budget: float | None = None):
    cmd = [sys.executable, __file__, "--case", str(N), str(M), path, "--outer", str(args.outer)]
    cmd += ["--iters", str(args.iters)] + (["--budget", str(budget)] if budget else [])
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
    p.add_argument("--case", nargs=3, metavar=("N", "M", "PATH"), help=argparse.SUPPRESS)
    p.add_argument("--budget", type=float, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.case:
        N, M, path = int(args.case[0]), int(args.case[1]), args.case[2]
        print(json.dumps(run_case(N, M, path, args.outer, args.iters, args.budget)))
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
