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
attributes of the non-NaN values (NaN if none); mAP is the total of average precision. Tables call
the mean balanced accuracy **mA** (the pedestrian-attribute field's name for it).

Instance-based metrics (:func:`instance_metrics`, Jia et al., "Rethinking of pedestrian
attribute recognition"): per image i over its labelled attributes (restricted to a group's
attributes for the group values), with predicted positives P_i and true positives T_i,

- instance accuracy = |P_i ∩ T_i| / |P_i ∪ T_i|, precision = |P_i ∩ T_i| / |P_i|,
  recall = |P_i ∩ T_i| / |T_i|, each averaged over the images with at least one labelled
  attribute;
- an empty denominator counts 0 (the published baselines add eps to every denominator, and so
  does scikit-learn's ``average="samples"`` with ``zero_division=0``): an image with no predicted
  positive has precision 0, one with no true positive recall 0, one with neither accuracy 0;
- instance F1 = 2 P R / (P + R) from the *averaged* precision P and recall R (0 when both are 0).
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
    "INSTANCE_METRICS",
    "binary_metrics",
    "instance_metrics",
    "attribute_metrics",
    "multiclass_accuracy",
    "method_block",
    "check_scored_once",
]

#: metric names computed per attribute
METRICS = ("accuracy", "balanced_accuracy", "average_precision", "f1")
#: instance-based metric names (per image, then averaged; :func:`instance_metrics`)
INSTANCE_METRICS = ("accuracy", "precision", "recall", "f1")


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


def instance_metrics(
    decisions: Any,
    targets: Any,
    mask: Any,
    attributes: Sequence[int] | None = None,
    *,
    skip_empty: bool = False,
) -> dict[str, float]:
    """Instance-based accuracy, precision, recall and F1 over the labelled entries.

    Args:
        decisions: (N, M) bool predicted positives.
        targets: (N, M) in {-1, +1} at labelled entries (anything elsewhere, NaN included).
        mask: (N, M) bool, True = labelled.
        attributes: the columns to restrict to (an attribute group); None = all.
        skip_empty: leave out images with no true and no predicted positive (nothing to find,
            nothing found). Used for groups: most images have no positive in most groups (a
            plain photo has no pattern), and counting them 0 would rate a group by how often it
            is absent rather than by how well it is recognised.

    Per image i over its labelled attributes in ``attributes``: P_i the predicted positives,
    T_i the true positives; acc_i = |P ∩ T| / |P ∪ T|, prec_i = |P ∩ T| / |P|,
    rec_i = |P ∩ T| / |T|, an empty denominator giving 0 (the eps convention of the published
    baselines). Images without a labelled attribute in ``attributes`` are left out.

    Returns ``{"accuracy", "precision", "recall": mean over the n images, "f1": 2 P R / (P + R)
    of the averaged P and R (0 when both are 0), "n": int}``; all NaN when n = 0.
    """
    d = _np(decisions, "decisions").astype(bool)
    t = _np(targets, "targets")
    m = _np(mask, "mask").astype(bool)
    if not d.shape == t.shape == m.shape:
        raise ValueError(
            f"decisions {d.shape}, targets {t.shape} and mask {m.shape} must have the same shape"
        )
    cols = list(range(d.shape[1])) if attributes is None else list(attributes)
    m = m[:, cols]
    pred = d[:, cols] & m
    with np.errstate(invalid="ignore"):  # NaN targets at unlabelled entries
        true = (np.where(m, t[:, cols], 0.0) > 0) & m
    rows = m.any(axis=1)
    if skip_empty:
        rows &= (pred | true).any(axis=1)
    n = int(rows.sum())
    if n == 0:
        return dict.fromkeys(INSTANCE_METRICS, float("nan")) | {"n": 0}
    pred, true = pred[rows], true[rows]
    inter = (pred & true).sum(axis=1).astype(np.float64)

    def ratio(den: np.ndarray) -> float:
        den = den.astype(np.float64)
        return float(np.mean(np.divide(inter, den, out=np.zeros_like(inter), where=den > 0)))

    acc = ratio((pred | true).sum(axis=1))
    prec, rec = ratio(pred.sum(axis=1)), ratio(true.sum(axis=1))
    f1 = 2 * prec * rec / (prec + rec) if prec + rec > 0 else 0.0
    return {"accuracy": acc, "precision": prec, "recall": rec, "f1": f1, "n": n}


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

    ``decisions``: (N, M) bool predicted positives for accuracy, balanced accuracy, F1 and the
    instance metrics (default ``scores > 0``); average precision ranks ``scores`` either way.

    Returns::

        {
          "accuracy" | "balanced_accuracy" | "average_precision" | "f1": {
              "total": float,                       # mean over attributes (NaN excluded)
              "groups": {group: float},             # mean over the group's attributes
              "per_attribute": {name: float},
          },
          "mAP": float,                             # == ["average_precision"]["total"]
          "instance": {                             # instance_metrics(), per image
              "accuracy" | "precision" | "recall" | "f1": {"total": float, "groups": {g: float}},
              "num_images": {"total": int, "groups": {g: int}},
          },
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
    if decisions is None:
        d = s > 0
    else:
        d = _np(decisions, "decisions").astype(bool)
        if d.shape != s.shape:
            raise ValueError(f"decisions {d.shape} must have the shape of scores {s.shape}")
    per = [binary_metrics(s[m[:, j], j], t[m[:, j], j], d[m[:, j], j]) for j in range(s.shape[1])]
    out: dict[str, Any] = {}
    for metric in METRICS:
        values = [p[metric] for p in per]
        out[metric] = {
            "total": _nanmean(values),
            "groups": {g: _nanmean([values[i] for i in idx]) for g, idx in schema.groups},
            "per_attribute": dict(zip(schema.names, values, strict=True)),
        }
    out["mAP"] = out["average_precision"]["total"]
    total = instance_metrics(d, t, m)
    by_group = {g: instance_metrics(d, t, m, idx, skip_empty=True) for g, idx in schema.groups}
    out["instance"] = {
        metric: {"total": total[metric], "groups": {g: r[metric] for g, r in by_group.items()}}
        for metric in INSTANCE_METRICS
    }
    out["instance"]["num_images"] = {
        "total": total["n"],
        "groups": {g: r["n"] for g, r in by_group.items()},
    }
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
    return _summary_of(blocks, schema, metric)


def _summary_of(blocks: Sequence[Mapping[str, Any]], schema: AttributeSchema, metric: str):
    """Mean over folds, fold values and spread of one metric's per-fold blocks ``{"total",
    "groups", ["per_attribute"]}`` (the instance metrics have no per-attribute values)."""
    folds = [_f(b["total"]) for b in blocks]
    groups = {g: [_f(b["groups"][g]) for b in blocks] for g in schema.group_names}
    out: dict[str, Any] = {
        "total": _clean(_nanmean(folds)),
        "groups": {g: _clean(_nanmean(v)) for g, v in groups.items()},
    }
    if all("per_attribute" in b for b in blocks):
        per = {n: [_f(b["per_attribute"][n]) for b in blocks] for n in schema.names}
        out["per_attribute"] = {n: _clean(_nanmean(v)) for n, v in per.items()}
    out |= {
        "folds": [_clean(x) for x in folds],
        "metric": metric,
        "std": {"total": _std(folds), "groups": {g: _std(v) for g, v in groups.items()}},
    }
    return out


def _thresholds(fold_results: Sequence[Mapping[str, Any]], schema: AttributeSchema):
    """``{"rule", "per_attribute": mean over folds}`` of the folds' decision thresholds
    (``attribute_metrics`` outputs that :func:`apcnn.training.steps.finish` gave a
    ``"thresholds"`` entry), with ``"shift"`` (mean) and ``"shift_folds"`` when every fold
    chose a prior shift; None when a fold has none. ``rule`` is ``"mixed"`` when the folds
    disagree."""
    entries = [r.get("thresholds") for r in fold_results]
    if not all(isinstance(e, Mapping) for e in entries):
        return None
    rules = {str(e.get("rule")) for e in entries}
    per = {
        n: _clean(_nanmean([_f((e.get("per_attribute") or {}).get(n)) for e in entries]))
        for n in schema.names
    }
    out = {"rule": rules.pop() if len(rules) == 1 else "mixed", "per_attribute": per}
    shifts = [e.get("shift") for e in entries]
    if all(isinstance(v, (int, float)) for v in shifts):  # rule prior_shift: w of each fold
        out["shift"] = _clean(float(np.mean(shifts)))
        out["shift_folds"] = [float(v) for v in shifts]
    return out


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
         "instance": {"accuracy" | "precision" | "recall" | "f1":
                      {"total", "groups", "folds", "metric": "instance_<name>", "std"}},
         "thresholds": {"rule": str, "per_attribute": {name: float}},  # when the folds have them
         "multiclass": {name: float}, "num_folds": int}

    Values are fractions in [0, 1], means over folds (NaN folds excluded); a value that is
    undefined in every fold is None (JSON null). ``balanced_accuracy`` is the mA of the tables.
    The instance F1 of a fold comes from that fold's averaged precision and recall; the block's
    is the mean of the folds' F1. ``instance`` is left out when a fold result has none (metrics
    written before it existed), ``thresholds`` when a fold has no decision thresholds.
    """
    if not fold_results:
        raise ValueError("method_block needs at least one fold result")
    if metric not in METRICS:
        raise ValueError(f"metric {metric!r} is not one of {', '.join(METRICS)}")
    block = _summary(fold_results, schema, metric)
    for extra in ("balanced_accuracy", "average_precision"):
        if extra != metric:
            block[extra] = _summary(fold_results, schema, extra)
    if all(isinstance(r.get("instance"), Mapping) for r in fold_results):
        block["instance"] = {
            name: _summary_of(
                [r["instance"][name] for r in fold_results], schema, f"instance_{name}"
            )
            for name in INSTANCE_METRICS
        }
    thresholds = _thresholds(fold_results, schema)
    if thresholds is not None:
        block["thresholds"] = thresholds
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
