"""A run folder read back for reports: metrics, training curves, the checkpoints' L and S, and
the checkpoints re-scored on a split of their data (:mod:`apcnn.html_report` draws them).

Read-only: nothing here writes to the run folder or imports the training system.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["load_run", "score_run", "test_split_scores"]

log = logging.getLogger(__name__)

_METHOD_ORDER = ("S-CNN", "M-CNN", "MG-CNN")


def method_key(name: str) -> tuple[int, str]:
    return (_METHOD_ORDER.index(name) if name in _METHOD_ORDER else len(_METHOD_ORDER), name)


def load_run(run_dir: str | Path) -> dict[str, Any]:
    """Everything the report needs from a run folder.

    Returns ``{"results": metrics.json, "rows": metrics.jsonl rows, "config_text": str | None,
    "schema": AttributeSchema, "checkpoints": {method: path}, "L": {method: (D, K)},
    "S": {method: (K, M)}, "W": {method: (D, M)}, "histories": {method: [objective]},
    "history_calls": {method: [[objective] per solver call]}}``
    (methods ordered S-CNN, M-CNN, MG-CNN, then others).
    """
    from .checkpoint import CheckpointError, load_checkpoint, read_checkpoint_meta
    from .data.schema import AttributeSchema
    from .predictor import FORMAT
    from .runlog import read_metrics

    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"run folder {run} not found; pass the --out folder of a training")
    metrics_path = run / "metrics.json"
    if not metrics_path.is_file():
        raise FileNotFoundError(
            f"{metrics_path} not found; the run has not finished (train it, or --resume it)"
        )
    results = json.loads(metrics_path.read_text())
    rows = read_metrics(run / "metrics.jsonl") if (run / "metrics.jsonl").is_file() else []
    config_text = (run / "config.yaml").read_text() if (run / "config.yaml").is_file() else None

    ckpts: dict[str, Path] = {}
    L: dict[str, np.ndarray] = {}
    S: dict[str, np.ndarray] = {}
    schema = None
    ck_root = run / "checkpoints"
    for path in sorted(ck_root.iterdir()) if ck_root.is_dir() else []:
        if not path.is_dir() or path.name == "state":
            continue
        try:
            tensors, meta = load_checkpoint(path)
        except (CheckpointError, FileNotFoundError) as e:
            log.warning("skipping checkpoint %s: %s", path, e)
            continue
        if meta.get("format") != FORMAT or "head.S" not in tensors:
            continue
        method = str(meta.get("method") or path.name)
        ckpts[method] = path
        L[method] = tensors["head.L"].float().numpy()
        S[method] = tensors["head.S"].float().numpy()
        if schema is None:
            schema = AttributeSchema.from_dict(meta["schema"])
    if schema is None:  # no predictor checkpoint: one group over the metrics' attributes
        block = next(iter(results.get("methods", {}).values()), {})
        names = list(block.get("per_attribute", {}))
        if not names:
            raise ValueError(f"{run}: no predictor checkpoint and no per-attribute metrics")
        schema = AttributeSchema(names=tuple(names), groups=(("all", tuple(range(len(names)))),))
    order = sorted(ckpts, key=method_key)
    histories: dict[str, list[float]] = {}
    calls: dict[str, list[list[float]]] = {}
    if (ck_root / "state").is_dir():
        try:
            raw = read_checkpoint_meta(ck_root / "state").get("histories") or {}
            # one list per solver call; concatenated for the curve (jumps = new features)
            calls = {
                m: [solve if isinstance(solve, list) else [solve] for solve in h]
                for m, h in raw.items()
            }
            histories = {m: [v for solve in c for v in solve] for m, c in calls.items()}
        except (CheckpointError, FileNotFoundError, ValueError) as e:
            log.warning("no solver histories: %s", e)
    return {
        "results": results,
        "rows": rows,
        "config_text": config_text,
        "schema": schema,
        "checkpoints": {m: ckpts[m] for m in order},
        "L": {m: L[m] for m in order},
        "S": {m: S[m] for m in order},
        "W": {m: L[m] @ S[m] for m in order},
        "histories": histories,
        "history_calls": calls,
    }


def test_split_scores(
    checkpoints: Mapping[str, str | Path],
    *,
    split: str = "test",
    root: str | None = None,
    device: str = "cpu",
    batch_size: int | None = None,
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Scores of each checkpoint on ``split`` of its dataset: ``({method: (N, M)}, targets (N, M)
    in {-1, 0, +1}, mask (N, M) bool)``.

    The split is rebuilt with :func:`apcnn.inference.checkpoint_dataset` from the first checkpoint's
    config (``root`` overrides ``data.root``); each checkpoint sees it through its own evaluation
    transform (:meth:`~apcnn.models.spec.ModelSpec.eval_transform`). The frozen trunk is run once
    when every checkpoint has the same trunk weights and preprocessing; each method then only
    runs its tails and head.
    """
    from .inference import checkpoint_dataset
    from .predictor import load_predictor

    if not checkpoints:
        raise ValueError("no checkpoints to score")
    loaded = {m: load_predictor(p) for m, p in checkpoints.items()}
    cfg, dataset = checkpoint_dataset(next(iter(loaded.values()))[1], split=split, root=root)
    scores = _score_loaded(loaded, checkpoints, dataset, cfg, device, batch_size)
    return scores, np.asarray(dataset.targets), np.asarray(dataset.mask, dtype=bool)


def _split_datasets(meta: Mapping[str, Any], root: str | None) -> tuple[Any, dict[str, Any]]:
    """(config, {split: dataset}) of a checkpoint's data: every split, as training cut them."""
    from .inference import checkpoint_splits

    cfg, built = checkpoint_splits(dict(meta), root)
    return cfg, {name: source.subset(idx) for name, (source, idx) in built.items()}


def _score_loaded(
    loaded: Mapping[str, tuple[Any, dict[str, Any]]],
    checkpoints: Mapping[str, str | Path],
    dataset: Any,
    cfg: Any,
    device: str,
    batch_size: int | None,
) -> dict[str, np.ndarray]:
    """Scores (N, M) of each loaded predictor on ``dataset`` (the shared frozen trunk once)."""
    import copy

    import torch

    from .features import extract_features
    from .predictor import checkpoint_spec

    specs = {m: checkpoint_spec(meta, checkpoints[m]) for m, (_, meta) in loaded.items()}
    first_pred, _ = next(iter(loaded.values()))
    first_pre = next(iter(specs.values())).preprocessing_dict()
    datasets = {}
    for method, spec in specs.items():
        datasets[method] = dataset
        if spec.preprocessing_dict() != first_pre:  # same images and labels, its own transform
            datasets[method] = copy.copy(dataset)
            datasets[method].transform = spec.eval_transform()
    bs = batch_size or cfg.train.batch_size
    dev = torch.device(device)

    def trunk_state(pred: Any) -> dict[str, torch.Tensor]:
        return {k: v for k, v in pred.state_dict().items() if k.startswith("cnn.trunk.")}

    ref = trunk_state(first_pred)
    shared = all(
        trunk_state(p).keys() == ref.keys()
        and all(torch.equal(v, ref[k]) for k, v in trunk_state(p).items())
        for p, _ in loaded.values()
    ) and all(s.freeze_trunk and datasets[m] is dataset for m, s in specs.items())
    scores: dict[str, np.ndarray] = {}
    trunk = None
    if shared:
        first_pred.to(dev)
        trunk = extract_features(
            first_pred.cnn.forward_trunk,
            dataset,
            batch_size=bs,
            num_workers=cfg.data.num_workers,
            device=dev,
            desc="trunk",
        )
    for method, (pred, _) in loaded.items():
        pred.to(dev).eval()
        if trunk is not None:
            with torch.inference_mode():
                out = [pred.forward_from_trunk(c.to(dev)).float().cpu() for c in trunk.split(bs)]
            scores[method] = torch.cat(out).numpy()
        else:
            scores[method] = extract_features(
                pred, datasets[method], batch_size=bs, num_workers=cfg.data.num_workers, device=dev
            ).numpy()
    return scores


def score_run(
    checkpoints: Mapping[str, str | Path], split: str, root: str | None, device: str, score: bool
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Every split of the run's data (for the label counts) and, when ``score``, each checkpoint
    on ``split``: ``{"dataset", "scores", "probs", "thresholds", "boundaries", "rules": {method:
    ...}, "targets", "mask"}`` (probabilities calibrated, thresholds as saved in each checkpoint,
    boundaries the thresholds σ(c_m) of its trained boundary, rules its ``train.threshold``)."""
    import torch

    from .calibration import boundary_thresholds
    from .predictor import load_predictor

    loaded = {m: load_predictor(p) for m, p in checkpoints.items()}
    cfg, splits = _split_datasets(next(iter(loaded.values()))[1], root)
    if not score:
        return {}, splits
    if split not in splits:
        raise ValueError(f"unknown split {split!r}; valid: {', '.join(splits)}")
    dataset = splits[split]
    scores = _score_loaded(loaded, checkpoints, dataset, cfg, device, None)
    probs, thresholds, boundaries, rules = {}, {}, {}, {}
    for method, (pred, meta) in loaded.items():
        with torch.inference_mode():
            s = torch.from_numpy(scores[method]).to(pred.calibration)
            probs[method] = pred.probabilities(s).float().cpu().numpy()
        thresholds[method] = pred.threshold.float().cpu().numpy()
        boundaries[method] = boundary_thresholds(pred.calibration.double().cpu().numpy())
        rules[method] = str(((meta.get("config") or {}).get("train") or {}).get("threshold", "0"))
    scored = {
        "dataset": dataset,
        "scores": scores,
        "probs": probs,
        "thresholds": thresholds,
        "boundaries": boundaries,
        "rules": rules,
        "targets": np.asarray(dataset.targets),
        "mask": np.asarray(dataset.mask, dtype=bool),
    }
    return scored, splits
