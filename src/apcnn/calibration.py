"""Per-attribute Platt scaling: p_m = sigmoid(a_m * score_m + c_m).

Fitted on held-out training data (the validation part of the training split), never on test data.

A Platt model is a *posterior* under the label frequencies of the split it was fitted on: at the
fitted offset, the probabilities it assigns to that split average to the mean Platt target
(:func:`calibration_prior`). Bayes' rule turns it into a likelihood ratio only with that same
prior::

    log p(s | a = 1) / p(s | a = 0) = logit p_m(s) − logit ρ_m

which is what attribute-based zero-shot classification (DAP, :mod:`apcnn.zeroshot`) needs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.optimize import minimize

#: an attribute needs this many labelled samples of each class for a Platt fit
MIN_PER_CLASS = 2


def platt_targets(y: np.ndarray) -> np.ndarray:
    """Platt's smoothed targets for boolean labels ``y`` (n,) of one attribute.

    t_i = (N+ + 1) / (N+ + 2) for a positive, 1 / (N- + 2) for a negative (Platt 1999, sec. 2.2:
    the MAP targets under a uniform prior on each label's probability, out-of-sample).
    """
    y = np.asarray(y, dtype=bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    return np.where(y, (n_pos + 1.0) / (n_pos + 2.0), 1.0 / (n_neg + 2.0))


def _labelled(targets: np.ndarray, mask: np.ndarray, m: int) -> np.ndarray:
    """Boolean labels (positive = True) of attribute ``m`` on its labelled samples."""
    sel = np.asarray(mask[:, m], dtype=bool)
    return np.asarray(targets)[sel, m] > 0


def _fittable(y: np.ndarray) -> bool:
    return int(y.sum()) >= MIN_PER_CLASS and int((~y).sum()) >= MIN_PER_CLASS


def fit_platt(scores: np.ndarray, targets: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Fit Platt scaling per attribute.

    Args:
        scores: (N, M) decision values.
        targets: (N, M) labels in {-1, +1}.
        mask: (N, M) bool, True where labelled.

    Returns:
        (2, M) array: row 0 the slopes a_m, row 1 the offsets c_m, minimising the cross-entropy
        Σ_i −t_i log p_i − (1 − t_i) log(1 − p_i), p_i = σ(a_m s_i + c_m), against Platt's
        smoothed targets (:func:`platt_targets`). An attribute with fewer than two labelled
        samples of each class keeps a = 1, c = 0.
    """
    scores = np.asarray(scores, dtype=np.float64)
    n_attr = scores.shape[1]
    params = np.zeros((2, n_attr))
    params[0] = 1.0
    for m in range(n_attr):
        y = _labelled(targets, mask, m)
        if not _fittable(y):
            continue
        s = scores[np.asarray(mask[:, m], dtype=bool), m]
        t = platt_targets(y)

        def nll(ac: np.ndarray, s=s, t=t) -> tuple[float, np.ndarray]:
            z = ac[0] * s + ac[1]
            # log(1 + exp(z)) - t z, computed stably
            value = np.sum(np.logaddexp(0.0, z) - t * z)
            p = 0.5 * (1.0 + np.tanh(0.5 * z))
            r = p - t
            return float(value), np.array([np.sum(r * s), np.sum(r)])

        res = minimize(nll, np.array([1.0, 0.0]), jac=True, method="L-BFGS-B")
        params[:, m] = res.x
    return params


def boundary_thresholds(params: np.ndarray) -> np.ndarray:
    """(M,) decision thresholds on the calibrated probability that keep the trained decision
    boundary (score 0): t_m = σ(c_m), since p_m >= σ(c_m) ⇔ a_m s + c_m >= c_m ⇔ s >= 0 when
    a_m > 0. So predictions, probabilities, ONNX outputs and the reported metrics (score > 0)
    agree. An attribute whose fitted slope is not positive (its probability does not rise with
    the score: calibration failed) keeps 0.5. ``params``: (2, M) from :func:`fit_platt`."""
    a, c = np.asarray(params, dtype=np.float64)
    # tanh form: exact for any c (1 / (1 + exp(-c)) overflows for c < -709)
    return np.where(a > 0, 0.5 * (1.0 + np.tanh(0.5 * c)), 0.5)


#: ``train.threshold`` values: the trained boundary, best validation accuracy, best balanced
#: accuracy per attribute, and one prior shift for all attributes (:func:`choose_prior_shift`)
THRESHOLD_RULES = ("0", "accuracy", "balanced", "prior_shift")

#: the shifts w that :func:`choose_prior_shift` tries (0: the boundary, 1: the prior)
SHIFT_GRID = tuple(i / 20 for i in range(21))


def choose_thresholds(
    probabilities: np.ndarray,
    targets: np.ndarray,
    mask: np.ndarray,
    rule: str,
    boundary: np.ndarray,
) -> np.ndarray:
    """(M,) per-attribute decision thresholds t_m on the calibrated probability (decide
    p >= t_m), chosen on a held-out split (the validation split, after :func:`fit_platt`).

    Args:
        probabilities: (N, M) calibrated probabilities on that split (float32 or float64: the
            candidates are computed and compared in that precision, so a stored threshold
            decides exactly as it was scored).
        targets: (N, M) labels in {-1, +1} at labelled entries.
        mask: (N, M) bool, True where labelled.
        rule: ``"0"``: ``boundary`` unchanged (the trained boundary, score 0); ``"accuracy"``:
            the t_m with the best accuracy (TP + TN) / n; ``"balanced"``: the best balanced
            accuracy (TP / N+ + TN / N-) / 2, the attribute's contribution to mA.
        boundary: (M,) the boundary thresholds (:func:`boundary_thresholds`, σ(c_m)).

    Candidates per attribute: the midpoints between consecutive values of {0, the distinct
    labelled probabilities, 1} (every distinct decision on the split, "all positive" and "all
    negative" included) and ``boundary[m]``. Ties go to the candidate nearest ``boundary[m]``,
    so an attribute keeps the trained boundary unless another threshold is strictly better; the
    chosen threshold's score is therefore never below the boundary's. An attribute without
    labels or with one class only keeps ``boundary[m]``. The counts are compared as integers
    (TP + TN, resp. TP N- + TN N+), so ties are exact.
    """
    if rule not in THRESHOLD_RULES:
        raise ValueError(
            f"threshold rule must be one of {', '.join(THRESHOLD_RULES)}, got {rule!r}"
        )
    p = np.asarray(probabilities)
    dtype = p.dtype if p.dtype in (np.float32, np.float64) else np.dtype(np.float64)
    p = p.astype(dtype)
    if p.ndim != 2:
        raise ValueError(f"probabilities must be 2-D (N, M), got shape {p.shape}")
    t, m = np.asarray(targets), np.asarray(mask, dtype=bool)
    if t.shape != p.shape or m.shape != p.shape:
        raise ValueError(
            f"probabilities {p.shape}, targets {t.shape} and mask {m.shape} must have one shape"
        )
    out = np.asarray(boundary, dtype=dtype).reshape(-1).copy()
    if out.shape != (p.shape[1],):
        raise ValueError(f"boundary must have shape ({p.shape[1]},), got {out.shape}")
    if rule == "0":
        return out
    if rule == "prior_shift":
        raise ValueError("rule 'prior_shift' needs the prior: call choose_prior_shift")
    for j in range(p.shape[1]):
        y = _labelled(t, m, j)
        if y.all() or not y.any():  # no labels, or one class: nothing to trade off
            continue
        out[j] = _best_threshold(p[m[:, j], j], y, rule, out[j])
    return out


def _best_threshold(p: np.ndarray, y: np.ndarray, rule: str, boundary: Any) -> Any:
    """The threshold of :func:`choose_thresholds` for one attribute: ``p`` (n,) and boolean
    labels ``y`` (n,) with both classes present, in ``p``'s precision."""
    dtype = p.dtype
    ends = np.concatenate([[0.0], np.unique(p).astype(np.float64), [1.0]])
    mids = ((ends[:-1] + ends[1:]) / 2).astype(dtype)
    cand = np.unique(np.append(mids, dtype.type(boundary)))  # sorted, in p's precision
    pos, neg = np.sort(p[y]), np.sort(p[~y])
    n_pos, n_neg = pos.size, neg.size
    tp = n_pos - np.searchsorted(pos, cand, side="left")  # positives with p >= t
    tn = np.searchsorted(neg, cand, side="left")  # negatives with p < t
    if rule == "accuracy":
        score = tp + tn
    else:  # balanced accuracy * 2 N+ N-, in integers
        score = tp.astype(np.int64) * n_neg + tn.astype(np.int64) * n_pos
    ties = np.flatnonzero(score == score.max())
    distance = np.abs(cand[ties].astype(np.float64) - float(boundary))
    return cand[ties[np.argmin(distance)]]


def shifted_thresholds(boundary: np.ndarray, prior: np.ndarray, shift: float) -> np.ndarray:
    """(M,) thresholds part of the way from the trained boundary to the label frequency::

        logit t_m = (1 − w) logit b_m + w logit ρ_m

    ``boundary`` b_m (M,) (:func:`boundary_thresholds`), ``prior`` ρ_m (M,)
    (:func:`calibration_prior` of the calibration split; NaN keeps b_m), ``shift`` w in [0, 1].
    For calibrated probabilities, deciding p ≥ ρ_m maximises the expected balanced accuracy
    and p ≥ 1/2 the expected accuracy; t_m(w) is the Bayes decision when a missed positive costs
    ((1 − ρ_m) / ρ_m)^w times a false alarm (relative to the boundary's costs), so one w moves
    every attribute by the same amount of evidence, not by a per-attribute fit to a small split.
    The result has ``boundary``'s dtype (float32 stays float32, so it decides as scored).
    """
    b = np.asarray(boundary)
    dtype = b.dtype if b.dtype in (np.float32, np.float64) else np.dtype(np.float64)
    if not 0.0 <= shift <= 1.0:
        raise ValueError(f"shift must be in [0, 1], got {shift}")
    if shift == 0.0:  # exactly the boundary (the logit round trip may move it by an ulp)
        return b.astype(dtype)
    rho = np.asarray(prior, dtype=np.float64).reshape(b.shape)
    clip = (1e-12, 1 - 1e-12)  # NaN priors pass through and are replaced below
    z = (1.0 - shift) * _logit(np.clip(b.astype(np.float64), *clip)) + shift * _logit(
        np.clip(rho, *clip)
    )
    return np.where(np.isnan(rho), b, 0.5 * (1.0 + np.tanh(0.5 * z))).astype(dtype)


def _logit(p: np.ndarray) -> np.ndarray:
    return np.log(p) - np.log1p(-p)


def decision_scores(decisions: np.ndarray, targets: np.ndarray, mask: np.ndarray) -> tuple:
    """(accuracy, mA) of boolean ``decisions`` (N, M): the means over attributes with labels of
    the per-attribute accuracy and balanced accuracy (mean recall of the classes present), as
    :func:`apcnn.metrics.attribute_metrics` totals them."""
    d, m = np.asarray(decisions, dtype=bool), np.asarray(mask, dtype=bool)
    y = np.asarray(targets) > 0
    pos, neg = (y & m).sum(0), (~y & m).sum(0)
    tp, tn = (d & y & m).sum(0), (~d & ~y & m).sum(0)
    n = pos + neg
    has = n > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = (tp + tn) / n
        recalls = np.stack(
            [np.where(pos > 0, tp / pos, np.nan), np.where(neg > 0, tn / neg, np.nan)]
        )
    balanced = np.nanmean(recalls[:, has], axis=0)
    return float(np.mean(acc[has])), float(np.mean(balanced))


def choose_prior_shift(
    probabilities: np.ndarray,
    targets: np.ndarray,
    mask: np.ndarray,
    boundary: np.ndarray,
    prior: np.ndarray,
    max_accuracy_loss: float,
    grid: tuple[float, ...] = SHIFT_GRID,
) -> tuple[np.ndarray, float]:
    """``train.threshold: prior_shift``: (thresholds (M,), w) of :func:`shifted_thresholds` with
    the w of ``grid`` that gives the best mean balanced accuracy (mA) on the given (validation)
    split among those whose mean accuracy there is at least the boundary's (w = 0) minus
    ``max_accuracy_loss`` (a fraction: 0.003 = 0.3 points); ties go to the smaller w.

    One number is chosen for all attributes, so a validation split of a few hundred images is
    enough (per-attribute thresholds, rule ``balanced``, overfit it: Clothing fold 0 lost 7
    points of test accuracy for +5 mA). Arrays as :func:`choose_thresholds`.
    """
    p = np.asarray(probabilities)
    if not 0.0 <= max_accuracy_loss <= 1.0:
        raise ValueError(f"max_accuracy_loss must be in [0, 1], got {max_accuracy_loss}")
    base = np.asarray(boundary).astype(p.dtype)
    floor = decision_scores(p >= base[None, :], targets, mask)[0] - max_accuracy_loss
    best: tuple = (base, 0.0, -np.inf)  # w = 0 is always allowed
    for w in sorted(grid):
        t = shifted_thresholds(boundary, prior, w).astype(p.dtype)
        acc, ma = decision_scores(p >= t[None, :], targets, mask)
        if acc >= floor - 1e-12 and ma > best[2]:
            best = (t, float(w), ma)
    return best[0], best[1]


def thresholds_by_rule(
    probabilities: np.ndarray,
    targets: np.ndarray,
    mask: np.ndarray,
    rule: str,
    boundary: np.ndarray,
    max_accuracy_loss: float = 0.003,
) -> tuple[np.ndarray, float | None]:
    """``train.threshold`` on a held-out split: (thresholds (M,), the prior shift w or None).
    Rule ``prior_shift``: :func:`choose_prior_shift` towards this split's label frequencies
    (:func:`calibration_prior`); the others: :func:`choose_thresholds`. Arrays as there."""
    if rule != "prior_shift":
        return choose_thresholds(probabilities, targets, mask, rule, boundary), None
    prior = calibration_prior(targets, mask)
    return choose_prior_shift(probabilities, targets, mask, boundary, prior, max_accuracy_loss)


def calibration_prior(targets: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(M,) prior ρ_m = p(a_m = 1) implied by :func:`fit_platt` on the same labels.

    ρ_m = mean_i t_i = (N+ (N+ + 1)/(N+ + 2) + N- / (N- + 2)) / (N+ + N-)

    over the labelled samples of attribute m. At the fitted offset the cross-entropy's derivative
    Σ_i (p_i − t_i) vanishes, so the Platt probabilities average to exactly ρ_m on the
    calibration split: ρ_m is the prior inside p_m = p(a_m = 1 | s), and
    logit p_m − logit ρ_m is the log-likelihood ratio log p(s | a_m = 1) / p(s | a_m = 0).
    NaN where :func:`fit_platt` fitted nothing (fewer than two samples of a class).
    """
    targets = np.asarray(targets)
    out = np.full(targets.shape[1], np.nan)
    for m in range(targets.shape[1]):
        y = _labelled(targets, mask, m)
        if _fittable(y):
            out[m] = float(platt_targets(y).mean())
    return out


def apply_platt(scores: np.ndarray, params: np.ndarray) -> np.ndarray:
    """Probabilities (N, M) from decision values (N, M) and Platt parameters (2, M)."""
    z = np.asarray(scores, dtype=np.float64) * params[0] + params[1]
    return 0.5 * (1.0 + np.tanh(0.5 * z))
