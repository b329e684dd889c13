"""Inference with a trained predictor checkpoint: metrics on a split of its dataset, per-image
predictions (``apcnn evaluate``, ``apcnn predict``). Training lives in :mod:`apcnn.training`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from .data.schema import AttributeSchema
from .data.splits import build_datasets
from .devices import resolve_device


def checkpoint_splits(
    meta: dict[str, Any], root: str | None = None
) -> tuple[Any, dict[str, tuple[Any, np.ndarray]]]:
    """(config, ``{split: (source dataset, indices)}``) of the data a predictor checkpoint was
    trained on, cut again from the checkpoint's own config (same folds and seeds) and seen
    through its evaluation transform; ``root`` points it at another copy of the data."""
    from .config import TrainConfig, config_from_dict
    from .predictor import checkpoint_spec

    cfg = config_from_dict(TrainConfig, meta["config"])
    if root is not None:
        cfg.data.root = root
    return cfg, build_datasets(cfg, checkpoint_spec(meta).eval_transform())


def _split_of(datasets: dict[str, Any], split: str) -> tuple[Any, np.ndarray]:
    if split not in datasets:
        raise ValueError(f"unknown split {split!r}; valid: {', '.join(datasets)}")
    return datasets[split]


def checkpoint_dataset(
    meta: dict[str, Any], *, split: str = "test", root: str | None = None
) -> tuple[Any, Any]:
    """(config, dataset) of a split of the data a predictor checkpoint was trained on.

    The split is rebuilt from the checkpoint's own config (the same folds and seeds), with the
    checkpoint's evaluation transform (:meth:`ModelSpec.eval_transform
    <apcnn.models.spec.ModelSpec.eval_transform>`); ``root`` points it at another copy of the data.
    """
    cfg, datasets = checkpoint_splits(meta, root)
    source, indices = _split_of(datasets, split)
    return cfg, source.subset(indices)


def evaluate_checkpoint(
    checkpoint: str | Path,
    *,
    root: str | None = None,
    split: str = "test",
    allow_overlap: bool = False,
    threshold: str | None = None,
    max_accuracy_loss: float = 0.003,
) -> dict[str, Any]:
    """Metrics of a predictor checkpoint on a split of the dataset it was trained on.

    The data is checked against the model first:

    - the split is the one recorded in the checkpoint (``split_ids``: the sample ids of each
      split at training time) whenever the data still holds all of its images, so ``--root``
      with added images does not rebuild a different split (:func:`recorded_split`);
    - attributes are matched by name, the dataset's columns put in the checkpoint's order;
      missing or extra attributes are named (:func:`match_attributes`);
    - an evaluated split that shares images with the checkpoint's train or val split is refused
      unless ``allow_overlap`` (then a loud warning: the metrics are optimistic).

    The decisions are the predictor's, p >= the checkpoint's per-attribute thresholds (as
    ``predict`` and the ONNX model decide), or with ``threshold`` (a ``train.threshold`` rule)
    thresholds chosen again on the checkpoint's validation split (:func:`rechoose_thresholds`;
    the checkpoint is not changed). Returns ``{"metrics": attribute_metrics output (with a
    ``thresholds`` entry when re-chosen), "table": the results table (accuracy, mA, instance
    F1), the instance metrics and the threshold rule, as text}``.
    """
    from .features import extract_features
    from .metrics import attribute_metrics, method_block
    from .predictor import load_predictor
    from .reports import format_table, instance_table

    predictor, meta = load_predictor(checkpoint)
    schema = AttributeSchema.from_dict(meta["schema"])
    cfg, source, indices = _checkpoint_split(meta, split=split, root=root)
    dataset = match_attributes(source.subset(indices), schema, checkpoint)
    check_overlap(dataset.sample_ids, meta, split, checkpoint, allow=allow_overlap)
    device = resolve_device(cfg.train.device)
    predictor.to(device)

    def scores_of(data: Any) -> np.ndarray:
        return extract_features(
            predictor,
            data,
            batch_size=cfg.train.batch_size,
            num_workers=cfg.data.num_workers,
            device=device,
            amp=False,
            progress=True,
        ).numpy()

    rechosen = None
    if threshold is not None:
        if split == "val":
            raise ValueError(
                "--threshold chooses the thresholds on the validation split; score another "
                "split (e.g. --split test)"
            )
        _, val_source, val_rows = _checkpoint_split(meta, split="val", root=root)
        val = match_attributes(val_source.subset(val_rows), schema, checkpoint)
        rechosen = rechoose_thresholds(
            predictor, scores_of(val), val.targets, val.mask, threshold, max_accuracy_loss
        )
    scores = scores_of(dataset)
    # decide as predict and the ONNX model do: p >= the checkpoint's threshold
    with torch.inference_mode():
        s = torch.from_numpy(scores).to(predictor.calibration)
        decisions = predictor.decisions(predictor.probabilities(s)).cpu().numpy()
    metrics = attribute_metrics(scores, dataset.targets, dataset.mask, schema, decisions=decisions)
    method = meta.get("method", "model")
    block = {"methods": {method: method_block([metrics], schema)}}
    rule = ((meta.get("config") or {}).get("train") or {}).get("threshold", "0")
    decision = f"decision: p >= each attribute's threshold (train.threshold={rule})"
    if rechosen is not None:
        metrics["thresholds"] = rechosen
        shift = f", w = {rechosen['shift']:.2f}" if "shift" in rechosen else ""
        decision = (
            f"decision: p >= thresholds chosen again on the validation split (--threshold "
            f"{threshold}{shift}); the checkpoint keeps train.threshold={rule}"
        )
    table = "\n\n".join([format_table(block, None), instance_table(block), decision])
    return {"metrics": metrics, "table": table}


def rechoose_thresholds(
    predictor: Any,
    val_scores: np.ndarray,
    val_targets: Any,
    val_mask: Any,
    rule: str,
    max_accuracy_loss: float = 0.003,
) -> dict[str, Any]:
    """Set ``predictor.threshold`` (in memory) by ``rule`` on the validation scores, as training
    does (:func:`apcnn.calibration.thresholds_by_rule`, from the boundary σ(c_m) of the
    predictor's own calibration). Returns ``{"rule", "per_attribute": [t_m], ["shift": w]}``."""
    from .calibration import boundary_thresholds, thresholds_by_rule

    targets, mask = np.asarray(val_targets), np.asarray(val_mask, dtype=bool)
    calibration = predictor.calibration.detach().cpu().double().numpy()
    boundary = boundary_thresholds(calibration).astype(np.float32)
    with torch.inference_mode():
        s = torch.as_tensor(val_scores).to(predictor.calibration)
        probs = predictor.probabilities(s).cpu().numpy()
    chosen, shift = thresholds_by_rule(probs, targets, mask, rule, boundary, max_accuracy_loss)
    predictor.threshold.copy_(torch.as_tensor(chosen).to(predictor.threshold))
    out: dict[str, Any] = {"rule": rule, "per_attribute": [float(v) for v in chosen]}
    if shift is not None:
        out["shift"] = shift
    return out


def _checkpoint_split(meta: dict[str, Any], *, split: str, root: str | None) -> tuple:
    """(config, source dataset, indices) of ``split``: the recorded sample ids when the source
    holds them all, else the split rebuilt from the checkpoint's config (with a warning when the
    checkpoint recorded another one)."""
    cfg, datasets = checkpoint_splits(meta, root)
    source, indices = _split_of(datasets, split)
    recorded = (meta.get("split_ids") or {}).get(split)
    if recorded is not None:
        rows = recorded_split(source, recorded, split)
        if rows is not None:
            return cfg, source, rows
    return cfg, source, indices


def recorded_split(source: Any, recorded: list[str], split: str) -> np.ndarray | None:
    """Rows of ``source`` holding the ``recorded`` sample ids, in that order; None (with a
    warning) when some are missing: the data is not the one the checkpoint was trained on."""
    import warnings

    where: dict[str, int] = {}
    for i, sid in enumerate(source.sample_ids.tolist()):
        where.setdefault(sid, i)
    missing = [sid for sid in recorded if sid not in where]
    if missing:
        warnings.warn(
            f"{len(missing)} of the {len(recorded)} {split} images recorded in the checkpoint "
            f"are not in this data (first: {missing[0]}); evaluating the {split} split rebuilt "
            "from the data instead",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
    return np.asarray([where[sid] for sid in recorded], dtype=np.int64)


def match_attributes(dataset: Any, schema: AttributeSchema, checkpoint: Any) -> Any:
    """``dataset`` with its label columns in the order of the checkpoint's ``schema`` (matched by
    name); :class:`ValueError` naming the missing and extra attributes when the names differ."""
    have = list(dataset.schema.names)
    want = list(schema.names)
    if have == want:
        return dataset
    missing = [n for n in want if n not in have]
    extra = [n for n in have if n not in want]
    if missing or extra:
        raise ValueError(
            f"{checkpoint}: the data's attributes differ from the checkpoint's (missing: "
            f"{', '.join(missing) or '-'}; extra: {', '.join(extra) or '-'}); evaluate on data "
            "labelled with the attributes the model predicts"
        )
    order = [have.index(n) for n in want]
    dataset.targets = dataset.targets[:, order]
    dataset.mask = dataset.mask[:, order]
    dataset.schema = schema
    return dataset


def check_overlap(
    ids: Any, meta: dict[str, Any], split: str, checkpoint: Any, *, allow: bool
) -> None:
    """Refuse (or, with ``allow``, warn loudly) when the evaluated images include images the
    checkpoint was trained or validated on (its recorded ``split_ids``)."""
    import sys

    recorded = meta.get("split_ids") or {}
    seen = {name: set(recorded.get(name) or ()) for name in ("train", "val") if name != split}
    ids = set(np.asarray(ids).tolist())
    shared = {name: len(ids & s) for name, s in seen.items() if ids & s}
    if not shared:
        return
    what = ", ".join(f"{n} with its {name} split" for name, n in shared.items())
    message = (
        f"{checkpoint}: the {split} split shares images with the data the model was trained on "
        f"({what}); its metrics would be optimistic"
    )
    if not allow:
        raise ValueError(f"{message}; pass --allow-overlap to evaluate anyway")
    print(f"WARNING: {message} (--allow-overlap)", file=sys.stderr)


def predict_images(
    checkpoint: str | Path, images: list[str], *, threshold: float | None = None
) -> list[dict[str, Any]]:
    """Per image: per attribute score, calibrated probability p, threshold and decision.

    The decision is p >= threshold: the checkpoint's per-attribute thresholds (0.5 for a
    checkpoint without any), or ``threshold`` for every attribute when given.
    """
    from .data.images import open_rgb
    from .predictor import (
        checkpoint_spec,
        decisions_from_scores,
        load_predictor,
        resolve_thresholds,
    )

    predictor, meta = load_predictor(checkpoint)
    transform = checkpoint_spec(meta, checkpoint).eval_transform()
    batch = torch.stack([transform(open_rgb(p)) for p in images])
    with torch.inference_mode():
        scores = predictor(batch)
        probs = predictor.probabilities(scores)
    schema = AttributeSchema.from_dict(meta["schema"])
    thresholds, _ = resolve_thresholds(predictor.threshold, schema.num_attributes, threshold)
    items = decisions_from_scores(scores.numpy(), probs.numpy(), schema, thresholds)
    for path, item in zip(images, items):
        item["image"] = str(path)
    return items
