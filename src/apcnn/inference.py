"""Inference with a trained predictor checkpoint: metrics on a split of its dataset, per-image
predictions (``apcnn evaluate``, ``apcnn predict``). Training lives in :mod:`apcnn.engine`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .data.schema import AttributeSchema
from .data.splits import build_datasets
from .devices import resolve_device


def checkpoint_dataset(
    meta: dict[str, Any], *, split: str = "test", root: str | None = None
) -> tuple[Any, Any]:
    """(config, dataset) of a split of the data a predictor checkpoint was trained on.

    The split is rebuilt from the checkpoint's own config (the same folds and seeds), with the
    checkpoint's evaluation transform (:meth:`ModelSpec.eval_transform
    <apcnn.models.spec.ModelSpec.eval_transform>`); ``root`` points it at another copy of the data.
    """
    from .config import TrainConfig, config_from_dict
    from .predictor import checkpoint_spec

    transform = checkpoint_spec(meta).eval_transform()
    cfg = config_from_dict(TrainConfig, meta["config"])
    if root is not None:
        cfg.data.root = root
    datasets = build_datasets(cfg, transform)
    if split not in datasets:
        raise ValueError(f"unknown split {split!r}; valid: {', '.join(datasets)}")
    source, indices = datasets[split]
    return cfg, source.subset(indices)


def evaluate_checkpoint(
    checkpoint: str | Path, *, root: str | None = None, split: str = "test"
) -> dict[str, Any]:
    """Metrics of a predictor checkpoint on a split of the dataset it was trained on."""
    from .features import extract_features
    from .metrics import attribute_metrics, method_block
    from .predictor import load_predictor
    from .reports import format_table

    predictor, meta = load_predictor(checkpoint)
    cfg, dataset = checkpoint_dataset(meta, split=split, root=root)
    device = resolve_device(cfg.train.device)
    predictor.to(device)
    scores = extract_features(
        predictor,
        dataset,
        batch_size=cfg.train.batch_size,
        num_workers=cfg.data.num_workers,
        device=device,
        amp=False,
        progress=True,
    ).numpy()
    schema = AttributeSchema.from_dict(meta["schema"])
    metrics = attribute_metrics(scores, dataset.targets, dataset.mask, schema)
    method = meta.get("method", "model")
    block = {"methods": {method: method_block([metrics], schema)}}
    return {"metrics": metrics, "table": format_table(block, None)}


def predict_images(checkpoint: str | Path, images: list[str]) -> list[dict[str, Any]]:
    """Per image: per attribute score, calibrated probability and decision."""
    from .data.images import open_rgb
    from .predictor import checkpoint_spec, decisions_from_scores, load_predictor

    predictor, meta = load_predictor(checkpoint)
    transform = checkpoint_spec(meta, checkpoint).eval_transform()
    batch = torch.stack([transform(open_rgb(p)) for p in images])
    with torch.inference_mode():
        scores = predictor(batch)
        probs = predictor.probabilities(scores)
    schema = AttributeSchema.from_dict(meta["schema"])
    items = decisions_from_scores(scores.numpy(), probs.numpy(), schema)
    for path, item in zip(images, items):
        item["image"] = str(path)
    return items
