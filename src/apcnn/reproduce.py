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

Two protocols (``--protocol``), each a packaged preset read by :func:`fold_config`:

- ``adapted`` (default, ``configs/clothing.yaml``): the recipe above, a trunk adapted on all 23
  attributes and shared by the CNN methods.
- ``paper`` (``configs/clothing_paper.yaml``): the paper's setting. Each attribute has its own
  CNN top, a copy of the trunk's head convolution started from ImageNet weights and fine-tuned on
  that attribute alone (``model.tail: head``); nothing is adapted jointly
  (``train.adapt_blocks: 0``), so only the multi-task layer lets attributes share.

Label budgets (``label_fractions``): for each fraction F < 1 the folds run again with
``data.label_fraction=F`` (:func:`apcnn.data.splits.thin_labels`: a stratified, nested subset of
each attribute's train and val labels, the same for every method; test labels untouched) in
``OUT/frac<F>/fold<k>``, and ``results.json`` gets a ``label_budget`` block.

Each fold lives in ``OUT/fold<k>/``; a finished fold is never redone (and never reused by another
protocol, ``--set`` or label fraction), an interrupted one resumes from its checkpoint. The
trunk features are cached on disk and shared by folds and methods.
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

# The protocols: the packaged preset (apcnn/configs/<name>.yaml) each one trains
PROTOCOLS: dict[str, str] = {"adapted": "clothing", "paper": "clothing_paper"}
# The recipe of the CNN methods: the keys the packaged preset apcnn/configs/clothing.yaml sets,
# flat ({"train.adapt_blocks": 5, ...}); the file comments on each choice.
CLOTHING_SETTINGS: dict[str, Any] = preset_settings("clothing")
# ... and of the paper protocol (configs/clothing_paper.yaml)
PAPER_SETTINGS: dict[str, Any] = preset_settings("clothing_paper")
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
# the methods of the label-budget block (all five run in every fold anyway)
BUDGET_METHODS = ("S-CNN", "M-CNN", "MG-CNN", "S-extract", "M-extract")


# the protocol itself: `--set` may change the recipe, never these
PROTOCOL_KEYS = (
    "data.name",
    "data.root",
    "data.fold",
    "data.folds",
    "data.split_seed",
    "data.label_fraction",
    "run.out",
)


def default_out(protocol: str = "adapted") -> str:
    """The default output folder of a protocol: ``runs/reproduce-clothing`` (``adapted``),
    ``runs/reproduce-clothing-<protocol>`` otherwise."""
    check_protocol(protocol)
    return "runs/reproduce-clothing" + ("" if protocol == "adapted" else f"-{protocol}")


def check_protocol(protocol: str) -> str:
    """``protocol`` if it names one of :data:`PROTOCOLS`, else ConfigError."""
    from .config import ConfigError

    if protocol not in PROTOCOLS:
        raise ConfigError(
            f"unknown protocol {protocol!r}; the protocols are: {', '.join(PROTOCOLS)}"
        )
    return protocol


def check_fractions(fractions: Sequence[float]) -> list[float]:
    """The label fractions, sorted and without repeats; ConfigError unless each is in (0, 1]."""
    from .config import ConfigError

    out = []
    for f in fractions:
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0.0 < float(f) <= 1.0:
            raise ConfigError(f"--label-fraction {f!r}: each fraction must be in (0, 1]")
        out.append(float(f))
    return sorted(set(out))


def check_run_folds(run_folds: Sequence[int] | None, folds: int, quick: bool) -> list[int]:
    """The folds to train: ``run_folds`` sorted and without repeats, each in ``[0, folds)``;
    None: every fold, or fold 0 with ``quick``. ConfigError names the valid range."""
    from .config import ConfigError

    if run_folds is None or len(run_folds) == 0:
        return [0] if quick else list(range(folds))
    chosen = sorted({int(k) for k in run_folds})
    bad = [k for k in chosen if not 0 <= k < folds]
    if bad:
        raise ConfigError(
            f"--run-folds {' '.join(map(str, bad))}: with --folds {folds} a fold is one of "
            f"0..{folds - 1}"
        )
    return chosen


def fraction_dir(fraction: float) -> str:
    """The folder of a label fraction's folds: ``frac0.10`` (two decimals, more when needed)."""
    text = f"{fraction:.2f}"
    return f"frac{text if float(text) == fraction else repr(float(fraction))}"


def check_overrides(overrides: Sequence[str]) -> list[str]:
    """``key=value`` strings over the recipe; ConfigError for a malformed one or a protocol key."""
    from .config import ConfigError, parse_override

    for item in overrides:
        key, _ = parse_override(item, what="--set")
        if key in PROTOCOL_KEYS:
            raise ConfigError(
                f"--set {key} would change the protocol ({', '.join(PROTOCOL_KEYS)} are fixed; "
                "use --root, --folds, --label-fraction and --out)"
            )
    return list(overrides)


def fold_config(
    root: str | Path,
    out: Path,
    fold: int,
    folds: int,
    quick: bool,
    overrides: Sequence[str] = (),
    *,
    protocol: str = "adapted",
    label_fraction: float = 1.0,
) -> Any:
    """The fold's TrainConfig: the protocol's preset (:data:`PROTOCOLS`; + the quick schedule),
    then ``overrides`` (``key=value``, as ``apcnn train --set``), then the protocol keys."""
    from .config import TrainConfig, load_config, preset_path

    fixed = {
        "data.root": str(root),
        "data.fold": fold,
        "data.folds": folds,
        "data.label_fraction": float(label_fraction),
        "run.out": str(out),
    }
    items = [f"{k}={json.dumps(v)}" for k, v in QUICK_SETTINGS.items()] if quick else []
    items += check_overrides(overrides)
    items += [f"{k}={json.dumps(v)}" for k, v in fixed.items()]
    return load_config(TrainConfig, preset_path(PROTOCOLS[check_protocol(protocol)]), items)


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


def _multiclass_masks(trainer: Any, mc_targets: np.ndarray, n_bin: int) -> dict[str, np.ndarray]:
    """``{split: (n, 13) bool}``: which one-vs-rest member labels each split may use. Test: all
    known ones; train and val: with ``data.label_fraction`` < 1 the same stratified subset rule
    as the binary attributes (:func:`apcnn.data.splits.label_fraction_mask`, the members' own
    draws: column ids after the binary attributes')."""
    from .data.splits import LABEL_FRACTION_SPLITS, label_fraction_mask

    d = trainer.cfg.data
    out = {}
    for split, data in trainer.splits.items():
        y = mc_targets[data.indices]
        out[split] = y != 0
        if split in LABEL_FRACTION_SPLITS and d.label_fraction < 1.0:
            out[split] = label_fraction_mask(
                y,
                out[split],
                d.label_fraction,
                seed=d.split_seed,
                stream=(d.fold, LABEL_FRACTION_SPLITS.index(split)),
                columns=range(n_bin, n_bin + y.shape[1]),
            )
    return out


def extract_methods(trainer: Any, quick: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    """S-extract and M-extract on the trainer's cached frozen ImageNet features (tail ``fc``:
    pooled; never the adapted trunk of ``train.adapt_blocks``). The labels are the splits'
    (targets and masks: with ``data.label_fraction`` < 1 only the kept ones)."""
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
    mc_masks = _multiclass_masks(trainer, mc_targets, n_bin)
    xa = np.concatenate([xt, xv])
    # the masks say which labels exist (a masked entry's target is never read)
    ma = np.concatenate(
        [np.concatenate([mt, mv]), np.concatenate([mc_masks["train"], mc_masks["val"]])], axis=1
    )
    ya = np.where(ma, np.concatenate([np.concatenate([yt, yv]), mc_targets[train_rows]], 1), 0.0)
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
        acc, count = multiclass_accuracy(mc_scores, mc_test, mc_masks["test"], mc.members)
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


#: configuration keys that say where or how a fold ran, not what it computed: left out of the
#: recipe a finished fold is matched by (so folds can be gathered from other machines)
PLACE_KEYS = frozenset(
    {"data.root", "run.out", "data.num_workers", "train.dist_timeout", "train.dist_debug"}
)


def fold_recipe(cfg: Any) -> dict[str, Any]:
    """A fold's recipe: its resolved configuration flat (``"train.lr": 0.01``, JSON values),
    without :data:`PLACE_KEYS`; stored in ``fold.json`` and compared before a fold is reused."""
    from .config import config_to_dict

    flat = {f"{s}.{k}": v for s, keys in config_to_dict(cfg).items() for k, v in keys.items()}
    return json.loads(json.dumps({k: v for k, v in flat.items() if k not in PLACE_KEYS}))


def _recipe_changes(have: dict[str, Any], want: dict[str, Any]) -> list[str]:
    """``"key: A there, B now"`` for each key whose value differs (or exists on one side)."""
    missing = "(absent)"
    return [
        f"{k}: {have.get(k, missing)} there, {want.get(k, missing)} now"
        for k in sorted(set(have) | set(want))
        if have.get(k, missing) != want.get(k, missing)
    ]


def check_fold_record(
    record: dict[str, Any],
    out: Path,
    expected: dict[str, Any],
    recipe: dict[str, Any] | None = None,
) -> None:
    """ConfigError unless a finished fold's ``record`` was run as ``expected`` asks: the same
    ``protocol`` and ``label_fraction``, and then the same :func:`fold_recipe` (records that
    store one: a changed preset is caught too, and the same recipe reached by other ``--set``
    flags is reused) or, in older records without it, the same ``overrides``. Records written
    before a key existed count as its default: ``adapted``, ``[]``, ``1.0``, and a recipe
    without a configuration key added since counts as that key's default."""
    from .config import ConfigError

    defaults = {"protocol": "adapted", "overrides": [], "label_fraction": 1.0}
    flags = {"protocol": "--protocol", "overrides": "--set", "label_fraction": "--label-fraction"}
    stored = record.get("recipe")
    for key, want in expected.items():
        if key == "overrides" and stored is not None and recipe is not None:
            continue  # the recipe below decides
        have = record.get(key, defaults[key])
        if have != want:
            raise ConfigError(
                f"{out} was run with {flags[key]} {have}, not {want}; a finished fold is never "
                f"reused by another recipe: pass a new --out (or the same {flags[key]} to reuse "
                "it)"
            )
    if stored is not None and recipe is not None:
        from .config import TrainConfig

        # a key added to the configuration after the fold ran counts as its default there
        # (new keys default to the behaviour from before they existed)
        key_defaults = fold_recipe(TrainConfig())
        stored = {**{k: v for k, v in key_defaults.items() if k in recipe}, **stored}
        changes = _recipe_changes(stored, recipe)
        if changes:
            raise ConfigError(
                f"{out} was run with another recipe ({'; '.join(changes)}); a finished fold is "
                "never reused by another recipe: pass a new --out, or --set those keys to the "
                "values there to reuse it"
            )


def run_fold(
    root: str | Path,
    out: Path,
    fold: int,
    folds: int,
    quick: bool,
    overrides: Sequence[str] = (),
    *,
    protocol: str = "adapted",
    label_fraction: float = 1.0,
) -> dict[str, Any]:
    """All five methods on one fold; a finished fold is read back from ``fold.json`` (if it
    was run with the same protocol, label fraction and :func:`fold_recipe`: otherwise
    ConfigError naming what changed, never a mix of recipes)."""
    from .runlog import RunDir, atomic_write_json, seed_everything
    from .training import Trainer

    expected = {
        "protocol": check_protocol(protocol),
        "overrides": list(overrides),
        "label_fraction": float(label_fraction),
    }
    cfg = fold_config(
        root, out, fold, folds, quick, overrides, protocol=protocol, label_fraction=label_fraction
    )
    recipe = fold_recipe(cfg)
    done = out / "fold.json"
    if done.exists():
        record = json.loads(done.read_text())
        check_fold_record(record, out, expected, recipe)
        return record
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
            **expected,
            "recipe": recipe,
            # labels the methods saw (all binary attributes, after data.label_fraction)
            "labels_kept": {
                split: int(trainer.splits[split].mask.sum().item()) for split in ("train", "val")
            },
        }
    atomic_write_json(done, record)
    # The fold is final (fold.json short-circuits a rerun): its resume state (the largest file,
    # optimizer included) is no longer needed; the per-method predictors stay.
    shutil.rmtree(out / "checkpoints" / "state", ignore_errors=True)
    return record


def _budget_series(blocks: Sequence[dict[str, Any]], key: str | None) -> dict[str, list]:
    """``{"mean": [...], "std": [...], "folds": [[...], ...]}`` of one metric's total, one entry
    per fraction, from the :func:`apcnn.metrics.method_block` outputs ``blocks``."""
    parts = [b if key is None else b[key] for b in blocks]
    return {
        "mean": [p["total"] for p in parts],
        "std": [p["std"]["total"] for p in parts],
        "folds": [p["folds"] for p in parts],
    }


def label_budget_block(
    records: dict[float, Sequence[dict[str, Any]]], schema: AttributeSchema
) -> dict[str, Any]:
    """The ``label_budget`` block of ``results.json`` from the fold records of each fraction.

    Returns ``{"fractions": [F ascending], "labels_kept": {"train": [mean per fraction]},
    "methods": {method: {"accuracy" | "balanced_accuracy": {"mean": [per fraction],
    "std": [per fraction; None with one fold], "folds": [[per fold] per fraction]}}}}`` for the
    methods of :data:`BUDGET_METHODS` that every fold of every fraction has."""
    from .metrics import method_block

    fractions = sorted(records)
    methods: dict[str, Any] = {}
    for m in BUDGET_METHODS:
        if not all(m in r["results"] for f in fractions for r in records[f]):
            continue
        blocks = [method_block([r["results"][m] for r in records[f]], schema) for f in fractions]
        methods[m] = {
            "accuracy": _budget_series(blocks, None),
            "balanced_accuracy": _budget_series(blocks, "balanced_accuracy"),
        }
    kept = [
        [r["labels_kept"]["train"] for r in records[f] if "labels_kept" in r] for f in fractions
    ]
    return {
        "fractions": fractions,
        "labels_kept": {"train": [float(np.mean(k)) if k else None for k in kept]},
        "methods": methods,
    }


def _run_folds(
    root: str | Path,
    out: Path,
    fold_ids: Sequence[int],
    folds: int,
    quick: bool,
    overrides: Sequence[str],
    *,
    protocol: str,
    label_fraction: float,
    progress: bool,
) -> list[dict[str, Any]]:
    """:func:`run_fold` for each of ``fold_ids`` in ``out/fold<k>``, with a progress line."""
    start = time.time()
    records = []
    what = "" if label_fraction == 1.0 else f" (label fraction {label_fraction:g})"
    for k in fold_ids:
        t0 = time.time()
        records.append(
            run_fold(
                root,
                out / f"fold{k}",
                k,
                folds,
                quick,
                overrides,
                protocol=protocol,
                label_fraction=label_fraction,
            )
        )
        if progress:
            done = len(records)
            eta = (time.time() - start) / done * (len(fold_ids) - done)
            print(
                f"fold {k} ({done} of {len(fold_ids)}){what} done in {time.time() - t0:.0f} s; "
                f"about {eta / 60:.1f} min left",
                flush=True,
            )
    return records


def reproduce_clothing(
    root: str | Path,
    *,
    folds: int = 5,
    out: str | Path | None = None,
    quick: bool = False,
    overrides: Sequence[str] = (),
    progress: bool = True,
    protocol: str = "adapted",
    label_fractions: Sequence[float] = (),
    run_folds: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Run the protocol and write ``OUT/results.json`` and ``OUT/report.md``.

    ``protocol``: ``adapted`` (``configs/clothing.yaml``) or ``paper``
    (``configs/clothing_paper.yaml``), see the module docstring; ``out`` defaults to
    :func:`default_out` of it. ``label_fractions``: fractions in (0, 1]; each F < 1 runs the
    folds again with ``data.label_fraction=F`` in ``OUT/frac<F>/fold<k>`` and ``results.json``
    gets a ``label_budget`` block (F = 1 is the main run, always part of it). ``run_folds``: the
    folds to train (default every fold, fold 0 with ``quick``), e.g. the quick schedule on all
    folds, or the folds split over machines: each call reuses the folds already finished in
    ``out``, so a last call with every fold only gathers them.

    ``overrides``: ``key=value`` changes to the recipe (``CLOTHING_SETTINGS``), as ``apcnn train
    --set``; e.g. complete per-attribute CNNs on a GPU: ``model.tail=all``,
    ``model.freeze_trunk=false``, ``train.adapt_blocks=0``, ``model.flip_average=false``."""
    from .data import DatasetError, create_dataset
    from .metrics import method_block
    from .reports import (
        PAPER_TABLE_III,
        format_table,
        ordering_folds,
        paper_comparison,
        write_report,
    )
    from .runlog import atomic_write_json

    check_protocol(protocol)
    out = Path(default_out(protocol) if out is None else out)
    overrides = list(overrides)
    fractions = check_fractions(label_fractions)
    fold_ids = check_run_folds(run_folds, folds, quick)
    # a bad --set fails here
    fold_config(root, out / "fold0", 0, folds, quick, overrides, protocol=protocol)
    try:
        create_dataset("clothing", root=root, split="all")
    except DatasetError as err:
        raise DatasetError(
            f"{err} -- the Clothing Attribute Dataset (Chen, Gallagher, Girod, ECCV 2012) is "
            "distributed by its authors; --root must be the folder that holds images/000001.jpg.. "
            "and labels/<attribute>_GT.mat (check it with `apcnn data verify clothing --root DIR`)"
        ) from None
    start = time.time()
    run = dict(protocol=protocol, progress=progress)
    records = _run_folds(root, out, fold_ids, folds, quick, overrides, label_fraction=1.0, **run)
    by_fraction = {1.0: records}
    for f in (f for f in fractions if f < 1.0):
        by_fraction[f] = _run_folds(
            root, out / fraction_dir(f), fold_ids, folds, quick, overrides, label_fraction=f, **run
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
            "name": protocol,
            "preset": f"configs/{PROTOCOLS[protocol]}.yaml",
            "dataset": "clothing",
            "attributes": len(schema.names),
            "folds": folds,
            "folds_run": fold_ids,
            "permutation_seed": 0,
            "missing_labels": "excluded",
            "hyperparameters": "chosen on a validation part of the training folds",
            "quick": quick,
            "overrides": overrides,
            "label_fractions": sorted(by_fraction),
        },
        "methods": methods,
        "chosen_hyperparameters": {r["fold"]: r["chosen"] for r in records},
        "paper": PAPER_TABLE_III,
        "seconds": time.time() - start,
        "fold_seconds": [r["seconds"] for r in records],
    }
    ordering = ordering_folds(methods)
    if ordering is not None:
        results["ordering"] = ordering
    if len(by_fraction) > 1:
        results["label_budget"] = label_budget_block(by_fraction, schema)
        results["label_budget"]["fold_seconds"] = [
            [r["seconds"] for r in by_fraction[f]] for f in sorted(by_fraction)
        ]
    atomic_write_json(out / "results.json", results)
    title = f"Clothing, Table III: the {protocol} protocol"
    write_report(out, results, schema=schema, S=np.asarray(records[-1]["S"]), title=title)
    print(format_table(results, PAPER_TABLE_III))
    print("against the paper (points, ours minus the paper's):")
    print("\n".join(paper_comparison(methods, PAPER_TABLE_III)))
    if mc_folds:
        shown = ", ".join(f"{k} {100 * np.mean(v):.2f}" for k, v in mc_folds.items())
        print(f"multi-class attributes (S-extract, accuracy %): {shown}")
    if "label_budget" in results:
        from .reports import label_budget_md

        print(label_budget_md(results["label_budget"]))
    return results
