"""Is the multi-task layer's regularisation why M / MG trade accuracy for mA on Clothing?

Two hypotheses, measured on the features and splits of ``ablation_ordering.py`` (its data
preparation is imported: frozen lite0 ImageNet features of the paper protocol, test folds 0 and
1, 15 % of the train part held out for validation, train / val labels thinned by
``thin_labels``, test untouched):

(a) S gains from one ridge weight per attribute (per-attribute CV) and the multi-task layer has
    only global mu / lam (plus the per-attribute loss weights c_m of the recipe). Test:
    ``S-perattr`` (S-train of ``ablation_ordering``: per-attribute ridge lam_m from the CV, fitted
    on the train rows) against ``S-pooled``: one ridge weight for all attributes, chosen on
    validation (micro accuracy) from ``RIDGE_LAMBDAS``, and ``S-pooled auto`` (the geometric mean
    of the lam_m: the recipe's ``mtl.lam: auto``, the L weight of M / MG).
(b) the penalty of W = L S is of degree below 2 in W, so large weights are barely shrunk. In
    ``fit_alternating`` the penalties are ``mu sum_k sum_g ||S[k, g]||_2 + gamma ||L||_1 +
    lam ||L||_F^2``: gamma is an l1 weight on L (not a Frobenius weight on S). Optimised over
    the scale t of the factorisation (L t, S / t), lam ||L||_F^2 + mu ||S||_{2,1} is of degree
    2/3 in W and gamma ||L||_1 + mu ||S||_{2,1} of degree 1, so raising gamma moves the penalty
    of large W from degree 2/3 towards 1. Test: M and MG at the recipe's K = 64, mu = 0.002,
    lam auto with gamma in ``GAMMAS`` (per sample, scaled by ``solver_penalties`` as the recipe
    scales all its penalties), with the loss weights c_m (the recipe, warm start S-perattr) and
    without them (warm start S-pooled auto).

Per setting: test accuracy and mA (%), ||W|| / ||W_S|| (Frobenius, W_S = S-perattr), the share
of labelled test entries predicted positive (points against S-perattr's), and the mean column
norm ratio ||w_m|| / ||w_S,m|| on the rare half of the attributes (train positive rate below
the median) against the common half. "val": per block (grouping x loss weights), the gamma with
the best validation accuracy (micro); "oracle": the best test accuracy.

``python benchmarks/ablation_regularisation.py [--root DIR] [--quick] [--write-docs]``;
``--quick``: fold 0, 25 % labels, MG, gamma in {1e-5, 1e-2}. ``--write-docs`` writes the
section "Regularisation of the multi-task layer (hypothesis test)" of
docs/clothing_research.md (between its markers, the rest of the file untouched).
"""

from __future__ import annotations

import argparse
import itertools
import re
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from benchmarks.ablation_ordering import (  # noqa: E402
    INNER_TOL,
    MAX_ITER,
    MAX_OUTER,
    RECIPE_K,
    RECIPE_MU,
    Fold,
    Reference,
    features,
    fold_data,
    micro_accuracy,
    reference,
    test_metrics,
)

GAMMAS = (1e-5, 1e-3, 1e-2, 1e-1, 1.0)  # 1e-5: the recipe
CUT_GAMMAS = (1e-5, 1e-2, 1.0)  # at 5 % and 100 % of the labels
FRACTIONS = (0.05, 0.1, 0.25, 1.0)
DOC = ROOT / "docs" / "clothing_research.md"
START, END = "<!-- regularisation:start -->", "<!-- regularisation:end -->"


class Setting(NamedTuple):
    grouping: str  # "M" (one group) or "MG" (the schema's groups)
    weights: bool  # per-attribute loss weights c_m (the recipe) or none
    gamma: float  # per-sample l1 weight on L

    def block(self) -> str:
        return f"{self.grouping} {'c_m' if self.weights else 'no c_m'}"


def describe(
    W: np.ndarray, b: np.ndarray, f: Fold, schema: Any, Ws: np.ndarray, rare: np.ndarray
) -> dict[str, float]:
    """Validation accuracy (micro), test accuracy and mA, ||W|| / ||Ws||, the share of labelled
    test entries predicted positive, and the mean column-norm ratio ||w_m|| / ||w_S,m|| on the
    rare (``rare`` (M,) bool) and the other attributes."""
    from apcnn.selection import scores

    z = scores(f.x["test"], W, b)
    acc, ma = test_metrics(z, f, schema)
    col = np.linalg.norm(W, axis=0) / np.maximum(np.linalg.norm(Ws, axis=0), 1e-12)
    m = f.m["test"]
    return {
        "val": micro_accuracy(scores(f.x["val"], W, b), f.y["val"], f.m["val"]),
        "acc": acc,
        "mA": ma,
        "norm": float(np.linalg.norm(W) / np.linalg.norm(Ws)),
        "pos": float(((z > 0) & m).sum() / m.sum()),
        "true_pos": float(((f.y["test"] > 0) & m).sum() / m.sum()),
        "col_rare": float(col[rare].mean()),
        "col_common": float(col[~rare].mean()),
    }


def single_task(
    f: Fold, ref: Reference, schema: Any, rare: np.ndarray
) -> tuple[dict[str, dict[str, float]], np.ndarray]:
    """Part (a): S-perattr (per-attribute lam_m), S-pooled (one lam, chosen on validation from
    ``RIDGE_LAMBDAS``) and S-pooled auto (one lam = geometric mean of the lam_m), all on the
    train rows; rows name -> :func:`describe`, and the S-pooled auto W (M / MG's start without
    c_m)."""
    from apcnn.selection import RIDGE_LAMBDAS, ridge_path, scores, solver_penalties
    from apcnn.solvers import fit_independent

    Ws, bs = ref.W["squared_hinge"]
    rows = {"S-perattr": describe(Ws, bs, f, schema, Ws, rare)}
    best = None
    for lam, w, b in ridge_path(f.x["train"], f.y["train"], f.m["train"], RIDGE_LAMBDAS):
        val = micro_accuracy(scores(f.x["val"], w, b), f.y["val"], f.m["val"])
        if best is None or val > best[0]:  # ties: the stronger lam (the path runs strongest first)
            best = (val, lam, np.asarray(w).copy(), np.asarray(b).copy())
    assert best is not None
    rows[f"S-pooled (lam {best[1]:g})"] = describe(best[2], best[3], f, schema, Ws, rare)
    Wa, ba = fit_independent(
        f.x["train"],
        f.y["train"],
        f.m["train"],
        solver_penalties(f.m["train"], lam=ref.lam)["lam"],
        bias=True,
        tol=1e-4,
    )
    Wa, ba = np.asarray(Wa), np.asarray(ba)
    rows[f"S-pooled auto (lam {ref.lam:.2g})"] = describe(Wa, ba, f, schema, Ws, rare)
    return rows, Wa


def fit(
    f: Fold, ref: Reference, schema: Any, s: Setting, W0: np.ndarray, rare: np.ndarray
) -> dict[str, float]:
    """Part (b): one M / MG fit of the M-extract recipe (K 64, mu 0.002, lam auto, 5 outer
    iterations, bias, warm start ``W0``) with l1 weight ``s.gamma`` on L, with or without the
    loss weights c_m; :func:`describe` plus seconds."""
    from apcnn.solvers import fit_alternating

    M = f.y["train"].shape[1]
    groups = [list(range(M))] if s.grouping == "M" else schema.group_indices
    t0 = time.perf_counter()
    res = fit_alternating(
        f.x["train"],
        f.y["train"],
        groups,
        **solver_penalties_for(f, s.gamma, ref.lam),
        K=RECIPE_K,
        mask=f.m["train"],
        W0=W0,
        max_outer=MAX_OUTER,
        bias=True,
        max_iter=MAX_ITER,
        inner_tol=INNER_TOL,
        seed=0,
        task_weights=ref.weights if s.weights else None,
    )
    W, b = np.asarray(res.L) @ np.asarray(res.S), np.asarray(res.bias)
    out = describe(W, b, f, schema, ref.W["squared_hinge"][0], rare)
    out["seconds"] = time.perf_counter() - t0
    return out


def solver_penalties_for(f: Fold, gamma: float, lam: float) -> dict[str, float]:
    """The recipe's per-sample penalties scaled to eq. 2 (``solver_penalties``: times the mean
    number of labelled training samples per attribute), gamma included."""
    from apcnn.selection import solver_penalties

    return solver_penalties(f.m["train"], mu=RECIPE_MU, gamma=gamma, lam=lam)


def settings(quick: bool, fraction: float) -> list[Setting]:
    """The grid: M / MG x with / without c_m x ``GAMMAS`` at 10 % and 25 % of the labels (the
    issue's budgets), ``CUT_GAMMAS`` at the others (to keep the full run near 10 minutes)."""
    if quick:
        return [Setting("MG", True, g) for g in (1e-5, 1e-2)]
    gammas = GAMMAS if fraction in (0.1, 0.25) else CUT_GAMMAS
    return [
        Setting(g, w, gamma)
        for g, w, gamma in itertools.product(("M", "MG"), (True, False), gammas)
    ]


Run = dict[str, Any]  # "single": name -> row; "multi": [(Setting, row)]


def run_fold(x: np.ndarray, ds: Any, k: int, frac: float, grid: list[Setting]) -> Run:
    f = fold_data(x, ds, k, frac)
    ref = reference(f, ds.schema)
    ytr = np.where(f.m["train"], f.y["train"], 0.0)
    rate = (ytr > 0).sum(axis=0) / np.maximum(f.m["train"].sum(axis=0), 1)
    rare = rate < np.median(rate)
    single, Wa = single_task(f, ref, ds.schema, rare)
    for name, r in single.items():
        print(f"fold {k} {frac:.0%} {name}: {fmt(r)}", flush=True)
    multi = []
    for s in grid:
        r = fit(f, ref, ds.schema, s, ref.W["squared_hinge"][0] if s.weights else Wa, rare)
        multi.append((s, r))
        print(
            f"fold {k} {frac:.0%} {s.block()} gamma {s.gamma:g}: {fmt(r)} ({r['seconds']:.1f} s)",
            flush=True,
        )
    return {"single": single, "multi": multi}


def fmt(r: dict[str, float]) -> str:
    return (
        f"val {100 * r['val']:.2f} test {100 * r['acc']:.2f} mA {100 * r['mA']:.2f} "
        f"|W|/|Ws| {r['norm']:.2f} pos {100 * r['pos']:.1f}% "
        f"col rare/common {r['col_rare']:.2f}/{r['col_common']:.2f}"
    )


def cell(rs: list[dict[str, float]], base: list[dict[str, float]]) -> str:
    """Mean over folds of: accuracy / mA minus S-perattr's (points), ||W|| / ||Ws||, positive
    share minus S-perattr's (points)."""
    d = lambda key: np.mean([100 * (r[key] - b[key]) for r, b in zip(rs, base)])  # noqa: E731
    return (
        f"{d('acc'):+.2f} / {d('mA'):+.1f} · {np.mean([r['norm'] for r in rs]):.2f}× · "
        f"{d('pos'):+.1f}"
    )


def tables(runs: dict[tuple[int, float], Run]) -> str:
    """Markdown: per label fraction (columns; means over the folds run) S-perattr's figures,
    then the gaps of S-pooled and of each multi-task setting, the val pick and the oracle."""
    fracs = sorted({fr for _, fr in runs}, key=float)
    folds = sorted({k for k, _ in runs})
    head = "| | " + " | ".join(f"{fr:.0%}" for fr in fracs) + " |"
    sep = "|---" * (len(fracs) + 1) + "|"
    base = {
        fr: [runs[(k, fr)]["single"]["S-perattr"] for k in folds if (k, fr) in runs] for fr in fracs
    }
    lines = [head, sep]
    lines.append(
        "| S-perattr: acc / mA · positive share (labels' share) (%) | "
        + " | ".join(
            f"{np.mean([100 * r['acc'] for r in base[fr]]):.2f} / "
            f"{np.mean([100 * r['mA'] for r in base[fr]]):.2f} · "
            f"{np.mean([100 * r['pos'] for r in base[fr]]):.1f} "
            f"({np.mean([100 * r['true_pos'] for r in base[fr]]):.1f})"
            for fr in fracs
        )
        + " |"
    )
    for i, label in ((1, "S-pooled (one lam, val)"), (2, "S-pooled auto (geometric mean)")):
        cells = []
        for fr in fracs:
            rs = [list(runs[(k, fr)]["single"].values())[i] for k in folds if (k, fr) in runs]
            cells.append(cell(rs, base[fr]))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    every = [s for run in runs.values() for s, _ in run["multi"]]
    blocks = list(dict.fromkeys(s.block() for s in every))
    for blk in blocks:
        gammas = sorted({s.gamma for s in every if s.block() == blk})
        for g in gammas:
            cells = []
            for fr in fracs:
                rs = [
                    r
                    for k in folds
                    if (k, fr) in runs
                    for s, r in runs[(k, fr)]["multi"]
                    if s.block() == blk and s.gamma == g
                ]
                cells.append(cell(rs, base[fr]) if rs else "–")
            lines.append(f"| {blk}, gamma {g:g} | " + " | ".join(cells) + " |")
        for what, key in (("val pick", "val"), ("oracle", "acc")):
            cells = []
            for fr in fracs:
                rs = [
                    max(
                        (r for s, r in runs[(k, fr)]["multi"] if s.block() == blk),
                        key=lambda r: r[key],
                    )
                    for k in folds
                    if (k, fr) in runs
                ]
                cells.append(cell(rs, base[fr]))
            lines.append(f"| {blk}, {what} | " + " | ".join(cells) + " |")
    cols = ["| column norm ratio rare / common (S-pooled; MG c_m gamma 1e-5) | "]
    for fr in fracs:
        sp = [list(runs[(k, fr)]["single"].values())[1] for k in folds if (k, fr) in runs]
        mg = [
            r
            for k in folds
            if (k, fr) in runs
            for s, r in runs[(k, fr)]["multi"]
            if s.grouping == "MG" and s.weights and s.gamma == GAMMAS[0]
        ]
        cols.append(
            f"{np.mean([r['col_rare'] for r in sp]):.2f} / "
            f"{np.mean([r['col_common'] for r in sp]):.2f}; "
            f"{np.mean([r['col_rare'] for r in mg]):.2f} / "
            f"{np.mean([r['col_common'] for r in mg]):.2f} | "
        )
    lines.append("".join(cols).rstrip())
    return "\n".join(lines)


def write_docs(body: str) -> None:
    """Replace (or append) this script's marked block in docs/clothing_research.md."""
    block = f"{START}\n{body.rstrip()}\n{END}"
    text = DOC.read_text()
    pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    else:
        text = (
            text.rstrip()
            + "\n\n## Regularisation of the multi-task layer (hypothesis test)\n\n"
            + block
            + "\n"
        )
    DOC.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=str(ROOT.parent / "shared/data/ClothingAttributeDataset"))
    parser.add_argument("--quick", action="store_true", help="fold 0, 25 %%, MG, 2 gammas")
    parser.add_argument("--folds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--fractions", type=float, nargs="+", default=list(FRACTIONS))
    parser.add_argument(
        "--time-budget-s", type=float, default=None, help="start no fold after this many seconds"
    )
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    x, ds = features(args.root)
    print(f"features {x.shape} in {time.perf_counter() - t0:.0f} s", flush=True)
    folds, fracs = ([0], [0.25]) if args.quick else (args.folds, args.fractions)
    runs: dict[tuple[int, float], Run] = {}
    # the budgets first, so that a run stopped by --time-budget-s has them
    order = sorted(fracs, key=lambda fr: (fr not in (0.1, 0.25), fr))
    for fr, k in itertools.product(order, folds):
        if args.time_budget_s and time.perf_counter() - t0 > args.time_budget_s:
            print(f"time budget spent: fold {k} at {fr:.0%} and later not run", flush=True)
            break
        runs[(k, fr)] = run_fold(x, ds, k, fr, settings(args.quick, fr))
    text = tables(runs)
    seconds = time.perf_counter() - t0
    print(text)
    print(f"total {seconds:.0f} s")
    if args.write_docs:
        command = "python " + " ".join(["benchmarks/ablation_regularisation.py", *sys.argv[1:]])
        write_docs(
            f"Cells: mean over test folds {', '.join(map(str, folds))} of test accuracy / mA "
            "minus S-perattr's (points) · ‖W‖ / ‖W_S‖ (Frobenius) · share of labelled test "
            "entries predicted positive minus S-perattr's (points). Columns: fraction of the "
            "train / val labels kept.\n\n"
            + text
            + f"\n\nMeasured in {seconds:.0f} s on {torch.get_num_threads()} threads; "
            f"command: `{command}`."
        )


if __name__ == "__main__":
    main()
