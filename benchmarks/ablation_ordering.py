"""Why S < M < MG does not hold on Clothing: a feature-level ablation of the multi-task layer.

In the paper protocol (``configs/clothing_paper.yaml``) every attribute's tail starts as the same
ImageNet head convolution, so at the start all attributes see one shared 1280-d feature (the
frozen lite0 trunk, 224 x 336, centre window: what ``extract_methods`` gives S-extract and
M-extract). The multi-task layer W = L S is then the only thing that can share. This script
measures, on the test folds of the Table III split (seed-0 permutation, 15 % of the training
part held out for validation as ``build_datasets`` does), what moves M (one group) and MG (the
4 Clothing groups) against S (independent per-attribute SVMs, the same loss):

- K (latent tasks), mu (group weight, per sample), the L weight lam (``mtl.lam: auto`` =
  the pooled ridge weight, times 0.1 / 1 / 10), the loss (squared hinge, logistic), and the
  starting point (``warm``: the S solution of the train split, as M-extract and the CNN methods;
  ``default``: ``fit_alternating``'s own start, an independent fit with the pooled ridge;
  ``random``: L, S factored from a random matrix of the S solution's norm);
- at 100 % and at 10 % of the train/val labels (``thin_labels``, stratified; test untouched).

Every fit uses the M-extract recipe otherwise (``apcnn.reproduce.extract_methods``): features
divided by ``feature_scale``, per-attribute loss weights c_m from the per-attribute ridge CV,
gamma 1e-5, max_outer 5, max_iter 100, inner_tol 1e-4, bias. "val" picks the setting with the
best validation accuracy (micro, as the library does); "oracle" the one with the best test
accuracy (what the grid could give at best). ``S-extract`` is the library's S (ridge CV and refit
on train + val); ``S-train`` the same SVMs fitted on the train split only: the start of M and the
reference with the same rows.

``python benchmarks/ablation_ordering.py [--root DIR] [--quick] [--write-docs]``; ``--quick``:
fold 0, 100 % labels, a 2-setting grid (61 s measured on 2 cores); the full run (folds 0 and 1,
100 % and 10 %, 110 fits each): 828 s. Needs the dataset; the trunk features come from the
feature cache (``$APCNN_CACHE``) when an earlier run left them there. Results:
docs/clothing_research.md, "Why the ordering does not hold (feature-level ablation)".
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

CENTRE = [0.15, 0.85, 0.25, 0.75]  # model.pool_region of configs/clothing_paper.yaml
GAMMA, MAX_OUTER, MAX_ITER, INNER_TOL, VAL_FRACTION = 1e-5, 5, 100, 1e-4, 0.15
RECIPE_MU, RECIPE_K = 0.002, 64
KS = (4, 8, 16, 23, 46)
MUS = (0.0003, 0.001, 0.002, 0.008, 0.03)
LAM_MULTS = (0.1, 1.0, 10.0)
LOSSES = ("squared_hinge", "logistic")
INITS = ("warm", "default", "random")


class Setting(NamedTuple):
    grouping: str  # "M" (one group) or "MG" (the schema's groups)
    K: int
    mu: float
    lam_mult: float
    loss: str
    init: str

    def label(self) -> str:
        return (
            f"{self.grouping} K={self.K} mu={self.mu:g} lam x{self.lam_mult:g} "
            f"{self.loss} {self.init}"
        )


def features(root: str) -> tuple[np.ndarray, Any]:
    """(N, 1280) pooled ImageNet features of the paper protocol (frozen lite0, 224 x 336, centre
    window, no flip average) and the dataset. From the feature cache: the pooled features under
    the trainer's key when present, else the head convolution applied to the cached maps below
    it (``tail: head``), else extracted."""
    from apcnn.data import create_dataset
    from apcnn.data.transforms import build_transform
    from apcnn.features import FeatureCache, extract_features
    from apcnn.models.backbone import create_backbone
    from apcnn.models.fc_tail import PooledTrunk
    from apcnn.models.pooling import region_mean
    from apcnn.training.inputs import cache_root

    backbone, info = create_backbone("tf_efficientnet_lite0")
    transform = build_transform(
        224, info.mean, info.std, train=False, crop_fraction=1.0, height=336
    )
    ds = create_dataset("clothing", root=root, transform=transform)
    cache = FeatureCache(cache_root() / "features")
    key = {
        "dataset": ds.cache_key(),
        "backbone": "tf_efficientnet_lite0",
        "weights": info.weights_sha256,
        "tail": "fc",
        "transform": repr(transform),
        "pool_region": CENTRE,
    }
    pooled = cache.load(key)
    if pooled is not None:
        print("features: cached pooled ImageNet features", flush=True)
        return pooled.float().numpy(), ds
    maps = cache.load(dict(key, tail="head"))
    if maps is not None:
        print("features: ImageNet head on the cached maps below it", flush=True)
        with torch.inference_mode():
            parts = [
                region_mean(backbone.bn2(backbone.conv_head(maps[i : i + 128].float())), CENTRE)
                for i in range(0, len(maps), 128)
            ]
        return torch.cat(parts).numpy(), ds
    print("features: extracting (no cached entry)", flush=True)
    trunk = PooledTrunk(backbone, CENTRE)
    return extract_features(trunk, ds, batch_size=32, num_workers=2).float().numpy(), ds


class Fold(NamedTuple):
    x: dict[str, np.ndarray]
    y: dict[str, np.ndarray]
    m: dict[str, np.ndarray]


def fold_data(x: np.ndarray, ds: Any, k: int, fraction: float) -> Fold:
    """Train / val / test of test fold ``k`` as ``build_datasets`` draws them (seed 0, 15 %
    val), labels thinned to ``fraction`` on train and val (``thin_labels``); features scaled by
    the train split's ``feature_scale``."""
    from apcnn.data.splits import kfold_indices, thin_labels, train_val_split
    from apcnn.selection import feature_scale

    train_idx, test_idx = kfold_indices(len(ds), 5, 0)[k]
    tr, va = train_val_split(np.asarray(train_idx), VAL_FRACTION, 0)
    src = thin_labels(ds, {"train": tr, "val": va}, fraction, seed=0, fold=k)
    targets = np.asarray(src.targets, dtype=np.float32)
    mask = np.asarray(src.mask, dtype=bool)
    rows = {"train": tr, "val": va, "test": np.asarray(test_idx)}
    scale = feature_scale(x[tr])
    return Fold(
        {s: x[r] / scale for s, r in rows.items()},
        {s: targets[r] for s, r in rows.items()},
        {s: mask[r] for s, r in rows.items()},
    )


def micro_accuracy(z: np.ndarray, y: np.ndarray, m: np.ndarray) -> float:
    """Labelled entries right: the validation score of ``apcnn.reproduce``."""
    return float(((np.sign(z) == y) & m).sum() / max(m.sum(), 1))


def test_metrics(z: np.ndarray, f: Fold, schema: Any) -> tuple[float, float]:
    """(accuracy, mA) on the test split: means over attributes (``attribute_metrics``)."""
    from apcnn.metrics import attribute_metrics

    r = attribute_metrics(z, f.y["test"], f.m["test"], schema)
    return r["accuracy"]["total"], r["balanced_accuracy"]["total"]


class Reference(NamedTuple):
    lams: np.ndarray  # per-attribute ridge weights (CV on train + val, as S-extract)
    weights: np.ndarray  # c_m = pooled / lam_m
    lam: float  # pooled ridge (mtl.lam: auto)
    W: dict[str, tuple[np.ndarray, np.ndarray]]  # loss -> S on the train split (W, bias)
    rows: dict[str, tuple[float, float, float]]  # name -> (val acc, test acc, test mA)


def reference(f: Fold, schema: Any) -> Reference:
    """S-extract (library) and S-train for both losses. S-train with per-attribute ridge lam_m
    = ``fit_independent`` with the pooled ridge and loss weights c_m (the same problem up to a
    factor per attribute)."""
    from apcnn.selection import (
        per_attribute_ridge,
        pooled_ridge,
        scores,
        solver_penalties,
        task_weights_from_ridge,
    )
    from apcnn.solvers import fit_independent

    xa = np.concatenate([f.x["train"], f.x["val"]])
    ma = np.concatenate([f.m["train"], f.m["val"]])
    ya = np.where(ma, np.concatenate([f.y["train"], f.y["val"]]), 0.0).astype(np.float32)
    w, b, lams = per_attribute_ridge(xa, ya, ma)
    rows = {"S-extract": (np.nan, *test_metrics(scores(f.x["test"], w, b), f, schema))}
    lam, weights = pooled_ridge(lams), task_weights_from_ridge(lams)
    W = {}
    for loss in LOSSES:
        w, b = fit_independent(
            f.x["train"],
            f.y["train"],
            f.m["train"],
            solver_penalties(f.m["train"], lam=lam)["lam"],
            bias=True,
            loss=loss,
            tol=1e-4,
            task_weights=weights,
        )
        W[loss] = (np.asarray(w), np.asarray(b))
        val = micro_accuracy(scores(f.x["val"], *W[loss]), f.y["val"], f.m["val"])
        rows[f"S-train {loss}"] = (val, *test_metrics(scores(f.x["test"], *W[loss]), f, schema))
    return Reference(lams, weights, lam, W, rows)


def fit(
    f: Fold, ref: Reference, schema: Any, s: Setting, max_outer: int = MAX_OUTER
) -> dict[str, float]:
    """One multi-task fit on the train split: val accuracy, test accuracy and mA, the distance
    of W = L S from the S-train solution (relative Frobenius), seconds."""
    from apcnn.selection import scores, solver_penalties
    from apcnn.solvers import fit_alternating, init_from_w

    M = f.y["train"].shape[1]
    groups = [list(range(M))] if s.grouping == "M" else schema.group_indices
    Ws, _ = ref.W[s.loss]
    start: dict[str, Any] = {}
    if s.init == "warm":
        start["W0"] = Ws
    elif s.init == "random":
        rng = np.random.default_rng(0)
        rand = rng.standard_normal(Ws.shape).astype(np.float32)
        L0, S0 = init_from_w(rand * (np.linalg.norm(Ws) / np.linalg.norm(rand)), s.K, 0)
        start.update(L0=L0, S0=S0)
    t0 = time.perf_counter()
    res = fit_alternating(
        f.x["train"],
        f.y["train"],
        groups,
        **solver_penalties(f.m["train"], mu=s.mu, gamma=GAMMA, lam=ref.lam * s.lam_mult),
        K=s.K,
        mask=f.m["train"],
        max_outer=max_outer,
        bias=True,
        max_iter=MAX_ITER,
        inner_tol=INNER_TOL,
        seed=0,
        loss=s.loss,
        task_weights=ref.weights,
        **start,
    )
    seconds = time.perf_counter() - t0
    W, b = np.asarray(res.L) @ np.asarray(res.S), np.asarray(res.bias)
    acc, ma = test_metrics(scores(f.x["test"], W, b), f, schema)
    return {
        "val": micro_accuracy(scores(f.x["val"], W, b), f.y["val"], f.m["val"]),
        "acc": acc,
        "mA": ma,
        "dist": float(np.linalg.norm(W - Ws) / np.linalg.norm(Ws)),
        "norm": float(np.linalg.norm(W) / np.linalg.norm(Ws)),
        "outer": int(res.n_iter),
        "seconds": seconds,
    }


def grid(quick: bool) -> dict[str, list[Setting]]:
    """The factors, one at a time around the recipe (MG, squared hinge, warm start, lam auto),
    each crossed with the mu range; name -> settings (the val/oracle choice is made within)."""
    base = Setting("MG", RECIPE_K, RECIPE_MU, 1.0, "squared_hinge", "warm")
    if quick:
        return {"recipe (MG, mu grid)": [base, base._replace(mu=0.008)]}
    out: dict[str, list[Setting]] = {}
    for g in ("M", "MG"):
        out[f"{g}: K x mu (warm)"] = [
            base._replace(grouping=g, K=k, mu=mu) for k, mu in itertools.product(KS, MUS)
        ]
    for g in ("M", "MG"):
        out[f"{g}: lam x mu (K={RECIPE_K})"] = [
            base._replace(grouping=g, lam_mult=lm, mu=mu)
            for lm, mu in itertools.product(LAM_MULTS, MUS)
        ]
    for g in ("M", "MG"):
        out[f"{g}: logistic x mu"] = [
            base._replace(grouping=g, loss="logistic", mu=mu) for mu in MUS
        ]
    for init in INITS[1:]:
        for g in ("M", "MG"):
            out[f"{g}: {init} start x mu"] = [
                base._replace(grouping=g, init=init, mu=mu) for mu in MUS
            ]
    return out


def run_fold(
    x: np.ndarray,
    ds: Any,
    k: int,
    fraction: float,
    blocks: dict[str, list[Setting]],
    max_outer: int = MAX_OUTER,
) -> tuple[Reference, dict[str, list[tuple[Setting, dict[str, float]]]]]:
    f = fold_data(x, ds, k, fraction)
    ref = reference(f, ds.schema)
    for name, (val, acc, ma) in ref.rows.items():
        print(
            f"fold {k} {fraction:.0%} {name}: val {100 * val:.2f} test {100 * acc:.2f} "
            f"mA {100 * ma:.2f}",
            flush=True,
        )
    out: dict[str, list[tuple[Setting, dict[str, float]]]] = {}
    for name, settings in blocks.items():
        out[name] = []
        for s in settings:
            r = fit(f, ref, ds.schema, s, max_outer)
            out[name].append((s, r))
            print(
                f"fold {k} {fraction:.0%} {s.label()}: val {100 * r['val']:.2f} "
                f"test {100 * r['acc']:.2f} mA {100 * r['mA']:.2f} |W-Ws|/|Ws| {r['dist']:.3f} "
                f"|W|/|Ws| {r['norm']:.2f} "
                f"({r['seconds']:.1f} s)",
                flush=True,
            )
    return ref, out


def pick(results: list[tuple[Setting, dict[str, float]]], key: str) -> tuple[Setting, dict]:
    """The entry with the highest ``key`` (ties: the first)."""
    return max(results, key=lambda sr: sr[1][key])


def table(
    runs: dict[tuple[int, float], tuple[Reference, dict[str, list]]],
) -> str:
    """Markdown: per (fold, fraction), the S references, then per block the val-chosen and the
    oracle setting with their test accuracy / mA and the gap to S-train (same loss)."""
    lines = [
        "| fold, labels | block | chosen on val (setting) | acc | mA | oracle (setting) | acc "
        "| mA | ‖W−Ws‖/‖Ws‖ (val pick) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (k, frac), (ref, blocks) in runs.items():
        where = f"{k}, {frac:.0%}"
        for name, (_, acc, ma) in ref.rows.items():
            lines.append(f"| {where} | {name} | | {100 * acc:.2f} | {100 * ma:.2f} | | | | |")
        for name, res in blocks.items():
            (sv, rv), (so, ro) = pick(res, "val"), pick(res, "acc")
            lines.append(
                f"| {where} | {name} | {short(sv)} | {100 * rv['acc']:.2f} | {100 * rv['mA']:.2f} "
                f"| {short(so)} | {100 * ro['acc']:.2f} | {100 * ro['mA']:.2f} | "
                f"{rv['dist']:.3f} |"
            )
    return "\n".join(lines)


def short(s: Setting) -> str:
    return f"K={s.K} mu={s.mu:g} lam x{s.lam_mult:g}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=str(ROOT.parent / "shared/data/ClothingAttributeDataset"))
    parser.add_argument("--quick", action="store_true", help="fold 0, 100 %%, 2 settings")
    parser.add_argument("--folds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--fractions", type=float, nargs="+", default=[1.0, 0.1])
    parser.add_argument(
        "--blocks", nargs="*", default=None, help="only the grid blocks whose name contains one"
    )
    parser.add_argument(
        "--max-outer", type=int, default=MAX_OUTER, help="outer iterations (recipe: 5)"
    )
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    x, ds = features(args.root)
    print(f"features {x.shape} in {time.perf_counter() - t0:.0f} s", flush=True)
    blocks = grid(args.quick)
    if args.blocks:
        blocks = {n: s for n, s in blocks.items() if any(b in n for b in args.blocks)}
    folds, fractions = ([0], [1.0]) if args.quick else (args.folds, args.fractions)
    runs = {}
    for k, frac in itertools.product(folds, fractions):
        runs[(k, frac)] = run_fold(x, ds, k, frac, blocks, args.max_outer)
    text = table(runs)
    print(text)
    print(f"total {time.perf_counter() - t0:.0f} s")
    if args.write_docs:
        from benchmarks._report import write_section

        body = (
            "## Why S < M < MG does not hold on Clothing (`benchmarks/ablation_ordering.py`)\n\n"
            "Feature level (frozen ImageNet lite0 features of the paper protocol), test "
            "accuracy and mA (%) per test fold and label fraction; each block crosses one "
            "factor with mu; 'chosen on val' is the library's selection, 'oracle' the best "
            "test accuracy in the block. S-train: the start of M/MG (same train rows).\n\n"
            + text
            + "\n"
        )
        write_section("ordering", body)


if __name__ == "__main__":
    main()
