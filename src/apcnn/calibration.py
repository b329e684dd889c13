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
    return np.where(a > 0, 1.0 / (1.0 + np.exp(-c)), 0.5)


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
