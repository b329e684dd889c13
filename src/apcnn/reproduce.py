"""``apcnn reproduce clothing``: the paper's Table III protocol on the Clothing Attribute Dataset.

Protocol (docs/design.md section 2): the 23 binary attributes in the paper's 4 groups; 5 folds
from a seed-0 permutation of the 1856 images; a NaN label is excluded from training and from
scoring; hyperparameters are chosen on a validation part of the training folds, never on the test
fold. Five methods per fold:

- **S-extract**: frozen ImageNet features (the pooled backbone output) + one linear L2-SVM per
  attribute (``apcnn.solvers.fit_independent``), each attribute with its own ridge weight chosen
  by 3-fold cross-validation inside the training folds
  (:func:`apcnn.selection.per_attribute_ridge`).
- **M-extract**: the same features + the grouped multi-task layer (``fit_alternating``; mu chosen
  on validation).
- **S-CNN**, **M-CNN**, **MG-CNN**: the training system (``apcnn.training``), fold by fold, with
  the packaged preset ``apcnn/configs/clothing.yaml`` (``configs/clothing.yaml`` in a checkout,
  which explains each choice; ``CLOTHING_SETTINGS`` flat): the trunk's last 5 blocks
  are first fine-tuned on the 23 attributes of the training split (``train.adapt_blocks``,
  :mod:`apcnn.adapt`; one adaptation per fold, shared by the three methods); S-CNN starts from the
  cross-validated per-attribute SVMs on the training split (``train.linear_probe``) and
  fine-tunes; the multi-task layer's loss weights and L weight come from the same CV
  (``mtl.task_weights: auto``, ``mtl.lam: auto``); mu and the round are chosen on validation.

Input (all methods): the whole 2:3 photo at 224 x 336, the backbone's final feature map averaged
over its centre window (``model.pool_region``; ``benchmarks/ablation_clothing_input.py``). The
extract methods see the ImageNet trunk (``Inputs.pretrained_inputs``), never the adapted one.

Each fold lives in ``OUT/fold<k>/``; a finished fold is never redone, an interrupted one resumes
from its checkpoint. The trunk features are cached on disk and shared by folds and methods.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .config import preset_settings
from .data.schema import AttributeSchema
from .selection import (
    RIDGE_LAMBDAS,
    choose_on_validation,
    feature_scale,
    per_attribute_ridge,
    pooled_ridge,
    ridge_fit,
    scores,
    solver_penalties,
    task_weights_from_ridge,
)

# The recipe of the CNN methods: the keys the packaged preset apcnn/configs/clothing.yaml sets,
# flat ({"train.adapt_blocks": 5, ...}); the file comments on each choice.
CLOTHING_SETTINGS: dict[str, Any] = preset_settings("clothing")
# --quick: a shorter schedule, as overrides over the preset
QUICK_SETTINGS: dict[str, Any] = {
    "train.adapt_epochs": 4,
    "train.epochs_single": 3,
    "train.epochs_joint": 1,
    "train.rounds": 1,
    "mtl.mu_grid": [0.008],
    "mtl.max_outer": 3,
}
QUICK_EXTRACT_LAMBDAS = (0.3, 3.0)
QUICK_EXTRACT_MUS = (0.008,)
# per-sample ridge weights tried for S-extract, per attribute
EXTRACT_LAMBDAS = RIDGE_LAMBDAS
EXTRACT_MUS = (0.002, 0.008, 0.03)  # per-sample group weights tried for M-extract
METHODS = ("S-extract", "M-extract", "S-CNN", "M-CNN", "MG-CNN")


# the protocol itself: `--set` may change the recipe, never these
PROTOCOL_KEYS = ("data.name", "data.root", "data.fold", "data.folds", "data.split_seed", "run.out")


def check_overrides(overrides: Sequence[str]) -> list[str]:
    """``key=value`` strings over the recipe; ConfigError for a malformed one or a protocol key."""
    from .config import ConfigError, parse_override

    for item in overrides:
        key, _ = parse_override(item, what="--set")
        if key in PROTOCOL_KEYS:
            raise ConfigError(
                f"--set {key} would change the protocol ({', '.join(PROTOCOL_KEYS)} are fixed; "
                "use --root, --folds and --out)"
            )
    return list(overrides)


def fold_config(
    root: str | Path,
    out: Path,
    fold: int,
    folds: int,
    quick: bool,
    overrides: Sequence[str] = (),
) -> Any:
    """The fold's TrainConfig: the ``clothing`` preset (+ the quick schedule), then ``overrides``
    (``key=value``, as ``apcnn train --set``), then the protocol keys."""
    from .config import TrainConfig, load_config, preset_path

    protocol = {"data.root": str(root), "data.fold": fold, "data.folds": folds, "run.out": str(out)}
    items = [f"{k}={json.dumps(v)}" for k, v in QUICK_SETTINGS.items()] if quick else []
    items += check_overrides(overrides)
    items += [f"{k}={json.dumps(v)}" for k, v in protocol.items()]
    return load_config(TrainConfig, preset_path("clothing"), items)


def _accuracy(decision_values: np.ndarray, y: np.ndarray, mask: np.ndarray) -> float:
    correct = (np.sign(decision_values) == y) & mask
    return float(correct.sum() / max(mask.sum(), 1))


def _multiclass_targets(trainer: Any) -> tuple[AttributeSchema, np.ndarray]:
    """The 3 multi-class attributes as one-vs-rest members: (their schema, targets (N, 13)) for
    every image of the dataset, in dataset order (labels only; no image is read)."""
    from .data import create_dataset

    full = create_dataset("clothing", root=trainer.cfg.data.root, include_multiclass=True)
    extra = [i for i, kind in enumerate(full.schema.kinds) if kind == "multiclass"]
    return full.schema.subset(extra), np.asarray(full.targets)[:, extra]


def extract_methods(trainer: Any, quick: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    """S-extract and M-extract on the trainer's cached frozen ImageNet features (tail ``fc``:
    pooled; never the adapted trunk of ``train.adapt_blocks``)."""
    from .metrics import attribute_metrics, multiclass_accuracy
    from .solvers import fit_alternating

    def arrays(split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        d = trainer.splits[split]
        x = trainer.pretrained_inputs(split).float().cpu().numpy().reshape(len(d), -1)
        return x, d.targets.cpu().numpy(), d.mask.cpu().numpy()

    (xt, yt, mt), (xv, yv, mv), (xs, ys, ms) = arrays("train"), arrays("val"), arrays("test")
    scale = feature_scale(xt)  # the solvers like features of unit scale
    xt, xv, xs = xt / scale, xv / scale, xs / scale

    # S-extract: the whole training part (train + val) with inner cross-validation per attribute;
    # the one-vs-rest members of the 3 multi-class attributes (beyond the paper) ride along
    mc_schema, mc_targets = _multiclass_targets(trainer)
    train_rows = np.concatenate([trainer.splits[s].indices for s in ("train", "val")])
    test_rows = trainer.splits["test"].indices
    n_bin = yt.shape[1]
    xa = np.concatenate([xt, xv])
    ya = np.concatenate([np.concatenate([yt, yv]), mc_targets[train_rows]], axis=1)
    ma = ya != 0
    lambdas = QUICK_EXTRACT_LAMBDAS if quick else EXTRACT_LAMBDAS
    w_all, b_all, lam_all = per_attribute_ridge(xa, ya, ma, lambdas, seed=trainer.cfg.train.seed)
    w_single, b_single, lam_m = w_all[:, :n_bin], b_all[:n_bin], lam_all[:n_bin]
    chosen: dict[str, Any] = {
        "S-extract": {"lam": dict(zip(trainer.schema.names, lam_m.tolist(), strict=True))}
    }
    results = {
        "S-extract": attribute_metrics(scores(xs, w_single, b_single), ys, ms, trainer.schema)
    }
    mc_scores = scores(xs, w_all[:, n_bin:], b_all[n_bin:])
    mc_test = mc_targets[test_rows]
    results["S-extract"]["multiclass"] = {}
    for mc in mc_schema.multiclass:
        acc, count = multiclass_accuracy(mc_scores, mc_test, mc_test != 0, mc.members)
        results["S-extract"]["multiclass"][mc.name] = {"accuracy": acc, "n": count}
    # M-extract starts from the same SVMs fitted on the train split alone: the val split, which
    # picks mu, must be unseen
    w_start, _ = ridge_fit(xt, yt, mt, lam_m)
    lam_mtl = pooled_ridge(lam_m)  # one ridge weight for the shared L
    # ... and per-attribute loss weights that give attribute m back its own strength λ_m
    weights = task_weights_from_ridge(lam_m)  # = lam_mtl / lam_m
    chosen["M-extract"] = {"task_weights": dict(zip(trainer.schema.names, weights.tolist()))}

    m_cfg = trainer.cfg.mtl

    def fit(mu: float) -> Any:
        return fit_alternating(
            xt,
            yt,
            trainer.schema.group_indices,
            **solver_penalties(mt, mu=mu, gamma=m_cfg.gamma, lam=lam_mtl),
            K=trainer.cfg.model.rank,
            mask=mt,
            W0=w_start,
            max_outer=m_cfg.max_outer,
            tol=m_cfg.tol,
            bias=True,
            max_iter=m_cfg.max_iter,
            inner_tol=m_cfg.inner_tol,
            seed=trainer.cfg.train.seed,
            task_weights=weights,
        )

    def validate(mu: float, res: Any) -> float:
        return _accuracy(scores(xv, np.asarray(res.L) @ np.asarray(res.S), res.bias), yv, mv)

    best = choose_on_validation(QUICK_EXTRACT_MUS if quick else EXTRACT_MUS, fit, validate)
    chosen["M-extract"].update(mu=best.candidate, val_accuracy=best.score)
    res = best.result
    w_multi = np.asarray(res.L) @ np.asarray(res.S)
    results["M-extract"] = attribute_metrics(
        scores(xs, w_multi, np.asarray(res.bias)), ys, ms, trainer.schema
    )
    return results, chosen


def run_fold(
    root: str | Path,
    out: Path,
    fold: int,
    folds: int,
    quick: bool,
    overrides: Sequence[str] = (),
) -> dict[str, Any]:
    """All five methods on one fold; a finished fold is read back from ``fold.json`` (if it
    was run with the same ``overrides``: otherwise ConfigError, never a mix of recipes)."""
    from .config import ConfigError
    from .runlog import RunDir, atomic_write_json, seed_everything
    from .training import Trainer

    done = out / "fold.json"
    if done.exists():
        record = json.loads(done.read_text())
        if record.get("overrides", []) != list(overrides):
            raise ConfigError(
                f"{out} was run with --set {record.get('overrides', [])}, not "
                f"{list(overrides)}; pass a new --out (or the same --set to reuse it)"
            )
        return record
    cfg = fold_config(root, out, fold, folds, quick, overrides)
    seed_everything(cfg.train.seed)
    start = time.time()
    with RunDir(out) as run:
        trainer = Trainer(cfg, run, resume=True)
        extract, chosen = extract_methods(trainer, quick)
        cnn = trainer.run_plan()
        chosen.update(trainer.chosen)
        record = {
            "fold": fold,
            "results": {**extract, **cnn},
            "chosen": chosen,
            "schema": trainer.schema.to_dict(),
            "S": trainer.predictor.head.S.detach().cpu().numpy().tolist(),
            "seconds": time.time() - start,
            "overrides": list(overrides),
        }
    atomic_write_json(done, record)
    # The fold is final (fold.json short-circuits a rerun): its resume state (the largest file,
    # optimizer included) is no longer needed; the per-method predictors stay.
    shutil.rmtree(out / "checkpoints" / "state", ignore_errors=True)
    return record


def reproduce_clothing(
    root: str | Path,
    *,
    folds: int = 5,
    out: str | Path = "runs/reproduce-clothing",
    quick: bool = False,
    overrides: Sequence[str] = (),
    progress: bool = True,
) -> dict[str, Any]:
    """Run the protocol and write ``OUT/results.json`` and ``OUT/report.md``.

    ``overrides``: ``key=value`` changes to the recipe (``CLOTHING_SETTINGS``), as ``apcnn train
    --set``; e.g. complete per-attribute CNNs on a GPU: ``model.tail=all``,
    ``model.freeze_trunk=false``, ``train.adapt_blocks=0``, ``model.flip_average=false``."""
    from .data import DatasetError, create_dataset
    from .metrics import method_block
    from .reports import PAPER_TABLE_III, format_table, paper_comparison, write_report
    from .runlog import atomic_write_json

    out = Path(out)
    overrides = list(overrides)
    fold_config(root, out / "fold0", 0, folds, quick, overrides)  # a bad --set fails here
    try:
        create_dataset("clothing", root=root, split="all")
    except DatasetError as err:
        raise DatasetError(
            f"{err} -- the Clothing Attribute Dataset (Chen, Gallagher, Girod, ECCV 2012) is "
            "distributed by its authors; --root must be the folder that holds images/000001.jpg.. "
            "and labels/<attribute>_GT.mat (check it with `apcnn data verify clothing --root DIR`)"
        ) from None
    start = time.time()
    fold_ids = [0] if quick else list(range(folds))
    records = []
    for k in fold_ids:
        t0 = time.time()
        records.append(run_fold(root, out / f"fold{k}", k, folds, quick, overrides))
        if progress:
            done = len(records)
            eta = (time.time() - start) / done * (len(fold_ids) - done)
            print(
                f"fold {k + 1}/{len(fold_ids)} done in {time.time() - t0:.0f} s; "
                f"about {eta / 60:.1f} min left",
                flush=True,
            )
    schema = AttributeSchema.from_dict(records[0]["schema"])
    methods = {
        m: method_block([r["results"][m] for r in records], schema)
        for m in METHODS
        if all(m in r["results"] for r in records)
    }
    # multi-class attributes (S-extract only): mean and std of the per-fold accuracies
    mc_folds: dict[str, list[float]] = {}
    for r in records:
        for name, v in r["results"].get("S-extract", {}).get("multiclass", {}).items():
            mc_folds.setdefault(name, []).append(v["accuracy"])
    if mc_folds and "S-extract" in methods:
        methods["S-extract"]["multiclass"] = {k: float(np.mean(v)) for k, v in mc_folds.items()}
        methods["S-extract"]["multiclass_std"] = {
            k: float(np.std(v, ddof=1)) if len(v) > 1 else None for k, v in mc_folds.items()
        }
    results = {
        "protocol": {
            "dataset": "clothing",
            "attributes": len(schema.names),
            "folds": folds,
            "folds_run": fold_ids,
            "permutation_seed": 0,
            "missing_labels": "excluded",
            "hyperparameters": "chosen on a validation part of the training folds",
            "quick": quick,
            "overrides": overrides,
        },
        "methods": methods,
        "chosen_hyperparameters": {r["fold"]: r["chosen"] for r in records},
        "paper": PAPER_TABLE_III,
        "seconds": time.time() - start,
        "fold_seconds": [r["seconds"] for r in records],
    }
    atomic_write_json(out / "results.json", results)
    write_report(out, results, schema=schema, S=np.asarray(records[-1]["S"]))
    print(format_table(results, PAPER_TABLE_III))
    print("against the paper (points, ours minus the paper's):")
    print("\n".join(paper_comparison(methods, PAPER_TABLE_III)))
    if mc_folds:
        shown = ", ".join(f"{k} {100 * np.mean(v):.2f}" for k, v in mc_folds.items())
        print(f"multi-class attributes (S-extract, accuracy %): {shown}")
    return results
