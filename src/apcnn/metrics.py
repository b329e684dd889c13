"""Masked per-attribute metrics and the ``results.json`` method block.

Inputs (NumPy arrays or torch tensors):

- ``scores``: (N, M) real decision values f_m(i); the decision is ``+1 iff score > 0`` unless
  ``decisions`` (N, M) bool are given (e.g. a predictor's ``p >= threshold``, the rule
  ``apcnn predict`` uses: :meth:`apcnn.predictor.AttributePredictor.decisions`); average
  precision always ranks the scores.
- ``targets``: (N, M) in {-1, +1}; entries outside ``mask`` may hold anything (0, NaN).
- ``mask``: (N, M) bool, True = labelled. ``None``: finite, non-zero targets are labelled.

Per attribute m, over its labelled samples (TP, FP, TN, FN for the positive class +1):

- accuracy = (TP + TN) / n
- balanced accuracy = mean of the recalls of the classes present: (TP/(TP+FN) + TN/(TN+FP)) / 2
- average precision = ``sklearn.metrics.average_precision_score`` (NaN with one class only)
- F1 = 2 TP / (2 TP + FP + FN) (NaN when there are no positives and none predicted)

An attribute with no labelled sample has NaN everywhere. Group and total values are means over
attributes of the non-NaN values (NaN if none); mAP is the total of average precision.
Multi-class attributes (``schema.multiclass``): accuracy of ``argmax`` over the member scores on
samples where every member is labelled and exactly one member is +1.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from apcnn.data.schema import AttributeSchema

__all__ = [
    "METRICS",
    "binary_metrics",
    "attribute_metrics",
    "multiclass_accuracy",
    "method_block",
    "check_scored_once",
]

#: metric names computed per attribute
METRICS = ("accuracy", "balanced_accuracy", "average_precision", "f1")


def _np(x: Any, name: str) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    a = np.asarray(x)
    if a.ndim != 2:
        raise ValueError(f"{name} must be 2-D (N, M), got shape {a.shape}")
    return a


def _prepare(
    scores: Any, targets: Any, mask: Any | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    s = _np(scores, "scores").astype(np.float64)
    t = _np(targets, "targets").astype(np.float64)
    if s.shape != t.shape:
        raise ValueError(f"scores {s.shape} and targets {t.shape} must have the same shape")
    if mask is None:
        m = np.isfinite(t) & (t != 0)
    else:
        m = _np(mask, "mask").astype(bool)
        if m.shape != s.shape:
            raise ValueError(f"mask {m.shape} must have the shape of scores {s.shape}")
    tl = t[m]
    if tl.size and not np.all((tl == 1) | (tl == -1)):
        bad = np.unique(tl[(tl != 1) & (tl != -1)])[:5]
        raise ValueError(f"labelled targets must be -1 or +1, got values {bad.tolist()}")
    if not np.all(np.isfinite(s[m])):
        raise ValueError("scores contain NaN or inf at labelled entries; check the model output")
    return s, np.where(m, t, 0.0), m


def binary_metrics(
    scores: np.ndarray, targets: np.ndarray, decisions: np.ndarray | None = None
) -> dict[str, float]:
    """Metrics of one attribute from 1-D ``scores`` and ``targets`` in {-1, +1} (all labelled).

    ``decisions``: 1-D bool, the predicted positives (default ``scores > 0``).
    Returns ``{"accuracy", "balanced_accuracy", "average_precision", "f1", "n", "positives"}``.
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(targets, dtype=np.float64).ravel() > 0
    n = int(y.size)
    nan = float("nan")
    if n == 0:
        return dict.fromkeys(METRICS, nan) | {"n": 0, "positives": 0}
    pred = s > 0 if decisions is None else np.asarray(decisions, dtype=bool).ravel()
    if pred.shape != y.shape:
        raise ValueError(f"decisions {pred.shape} must have the shape of scores {y.shape}")
    tp = int(np.sum(pred & y))
    fp = int(np.sum(pred & ~y))
    fn = int(np.sum(~pred & y))
    tn = n - tp - fp - fn
    pos, neg = tp + fn, tn + fp
    recalls = ([tp / pos] if pos else []) + ([tn / neg] if neg else [])
    if pos and neg:
        from sklearn.metrics import average_precision_score

        ap = float(average_precision_score(y, s))
    else:
        ap = nan
    return {
        "accuracy": (tp + tn) / n,
        "balanced_accuracy": float(np.mean(recalls)),
        "average_precision": ap,
        "f1": 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else nan,
        "n": n,
        "positives": pos,
    }


def _nanmean(values: Sequence[float]) -> float:
    v = [float(x) for x in values if x is not None and not math.isnan(float(x))]
    return float(np.mean(v)) if v else float("nan")


def multiclass_accuracy(
    scores: Any, targets: Any, mask: Any | None, members: Sequence[int]
) -> tuple[float, int]:
    """Accuracy of ``argmax_j scores[:, members[j]]`` against the member that is +1.

    Only rows where every member is labelled and exactly one member is +1 count.
    Returns ``(accuracy, n)``; accuracy is NaN when n = 0.
    """
    s, t, m = _prepare(scores, targets, mask)
    idx = list(members)
    rows = m[:, idx].all(axis=1) & ((t[:, idx] > 0).sum(axis=1) == 1)
    n = int(rows.sum())
    if n == 0:
        return float("nan"), 0
    true = np.argmax(t[rows][:, idx], axis=1)
    pred = np.argmax(s[rows][:, idx], axis=1)
    return float(np.mean(true == pred)), n


def attribute_metrics(
    scores: Any,
    targets: Any,
    mask: Any | None,
    schema: AttributeSchema,
    *,
    decisions: Any | None = None,
) -> dict[str, Any]:
    """All metrics of one evaluation (e.g. one test fold).

    ``decisions``: (N, M) bool predicted positives for accuracy, balanced accuracy and F1
    (default ``scores > 0``); average precision ranks ``scores`` either way.

    Returns::

        {
          "accuracy" | "balanced_accuracy" | "average_precision" | "f1": {
              "total": float,                       # mean over attributes (NaN excluded)
              "groups": {group: float},             # mean over the group's attributes
              "per_attribute": {name: float},
          },
          "mAP": float,                             # == ["average_precision"]["total"]
          "counts": {name: {"n": int, "positives": int}},
          "multiclass": {name: {"accuracy": float, "n": int}},
          "num_samples": int,
        }
    """
    s, t, m = _prepare(scores, targets, mask)
    if s.shape[1] != schema.num_attributes:
        raise ValueError(
            f"scores have {s.shape[1]} columns but the schema has {schema.num_attributes} "
            "attributes"
        )
    if decisions is not None:
        d = _np(decisions, "decisions").astype(bool)
        if d.shape != s.shape:
            raise ValueError(f"decisions {d.shape} must have the shape of scores {s.shape}")
    per = [
        binary_metrics(s[m[:, j], j], t[m[:, j], j], None if decisions is None else d[m[:, j], j])
        for j in range(s.shape[1])
    ]
    out: dict[str, Any] = {}
    for metric in METRICS:
        values = [p[metric] for p in per]
        out[metric] = {
            "total": _nanmean(values),
            "groups": {g: _nanmean([values[i] for i in idx]) for g, idx in schema.groups},
            "per_attribute": dict(zip(schema.names, values, strict=True)),
        }
    out["mAP"] = out["average_precision"]["total"]
    out["counts"] = {
        name: {"n": p["n"], "positives": p["positives"]}
        for name, p in zip(schema.names, per, strict=True)
    }
    out["multiclass"] = {}
    for mc in schema.multiclass:
        acc, n = multiclass_accuracy(s, t, m, mc.members)
        out["multiclass"][mc.name] = {"accuracy": acc, "n": n}
    out["num_samples"] = int(s.shape[0])
    return out


# ------------------------------------------------------------------------------ results.json
def _clean(x: float) -> float | None:
    """NaN -> None so the block is strict JSON."""
    return None if x is None or math.isnan(x) else float(x)


def _f(x: Any) -> float:
    return math.nan if x is None else float(x)


def _std(values: Sequence[float]) -> float | None:
    v = [x for x in values if x is not None and not math.isnan(x)]
    if not v:
        return None
    return float(np.std(v, ddof=1)) if len(v) > 1 else None  # one fold: no spread to report


def _summary(fold_results: Sequence[Mapping[str, Any]], schema: AttributeSchema, metric: str):
    blocks = []
    for i, r in enumerate(fold_results):
        if metric not in r:
            raise KeyError(f"fold result {i} has no {metric!r}; pass attribute_metrics() outputs")
        blocks.append(r[metric])
    folds = [_f(b["total"]) for b in blocks]
    groups = {g: [_f(b["groups"][g]) for b in blocks] for g in schema.group_names}
    per = {n: [_f(b["per_attribute"][n]) for b in blocks] for n in schema.names}
    return {
        "total": _clean(_nanmean(folds)),
        "groups": {g: _clean(_nanmean(v)) for g, v in groups.items()},
        "per_attribute": {n: _clean(_nanmean(v)) for n, v in per.items()},
        "folds": [_clean(x) for x in folds],
        "metric": metric,
        "std": {"total": _std(folds), "groups": {g: _std(v) for g, v in groups.items()}},
    }


def method_block(
    fold_results: Sequence[Mapping[str, Any]],
    schema: AttributeSchema,
    metric: str = "accuracy",
) -> dict[str, Any]:
    """One method's entry of ``results.json`` (docs/design.md section 3) from per-fold metrics.

    Args:
        fold_results: one :func:`attribute_metrics` output per test fold.
        schema: the attribute schema the folds were scored with.
        metric: the headline metric (``"accuracy"`` for the paper's protocol).

    Returns::

        {"total": float, "groups": {g: float}, "per_attribute": {name: float},
         "folds": [float per fold], "metric": metric,
         "std": {"total": float, "groups": {g: float}},  # sample std over folds (None: 1 fold)
         "balanced_accuracy": {same keys}, "average_precision": {same keys},
         "multiclass": {name: float}, "num_folds": int}

    Values are fractions in [0, 1], means over folds (NaN folds excluded); a value that is
    undefined in every fold is None (JSON null).
    """
    if not fold_results:
        raise ValueError("method_block needs at least one fold result")
    if metric not in METRICS:
        raise ValueError(f"metric {metric!r} is not one of {', '.join(METRICS)}")
    block = _summary(fold_results, schema, metric)
    for extra in ("balanced_accuracy", "average_precision"):
        if extra != metric:
            block[extra] = _summary(fold_results, schema, extra)
    block["multiclass"] = {
        mc.name: _clean(
            _nanmean(
                [
                    r.get("multiclass", {}).get(mc.name, {}).get("accuracy", math.nan)
                    for r in fold_results
                ]
            )
        )
        for mc in schema.multiclass
    }
    block["num_folds"] = len(fold_results)
    return block


def check_scored_once(indices_list: Sequence[Any], n: int) -> None:
    """Raise ValueError unless the test folds ``indices_list`` score each of ``n`` samples once."""
    counts = np.zeros(int(n), dtype=np.int64)
    for k, idx in enumerate(indices_list):
        a = np.asarray(idx.detach().cpu() if hasattr(idx, "detach") else idx).ravel()
        if a.size and not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"fold {k} indices must be integers, got dtype {a.dtype}")
        if a.size and (a.min() < 0 or a.max() >= n):
            raise ValueError(f"fold {k} has sample indices outside 0..{n - 1}")
        counts += np.bincount(a.astype(np.int64), minlength=n)
    never = np.flatnonzero(counts == 0)
    twice = np.flatnonzero(counts > 1)
    if never.size or twice.size:
        parts = []
        if never.size:
            parts.append(f"{never.size} samples scored 0 times (e.g. {never[:5].tolist()})")
        if twice.size:
            parts.append(f"{twice.size} samples scored 2+ times (e.g. {twice[:5].tolist()})")
        raise ValueError("the test folds must score every sample exactly once: " + "; ".join(parts))
