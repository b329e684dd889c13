"""Per-attribute Platt scaling: p_m = sigmoid(a_m * score_m + c_m).

Fitted on held-out training data (the validation part of the training split), never on test data.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize


def fit_platt(scores: np.ndarray, targets: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Fit Platt scaling per attribute.

    Args:
        scores: (N, M) decision values.
        targets: (N, M) labels in {-1, +1}.
        mask: (N, M) bool, True where labelled.

    Returns:
        (2, M) array: row 0 the slopes a_m, row 1 the offsets c_m. Uses Platt's smoothed targets
        (N+ + 1)/(N+ + 2) and 1/(N- + 2) to avoid overconfidence; an attribute with fewer than two
        labelled samples of each class keeps a = 1, c = 0.
    """
    scores = np.asarray(scores, dtype=np.float64)
    n_attr = scores.shape[1]
    params = np.zeros((2, n_attr))
    params[0] = 1.0
    for m in range(n_attr):
        sel = np.asarray(mask[:, m], dtype=bool)
        s, y = scores[sel, m], np.asarray(targets)[sel, m] > 0
        n_pos, n_neg = int(y.sum()), int((~y).sum())
        if n_pos < 2 or n_neg < 2:
            continue
        t = np.where(y, (n_pos + 1.0) / (n_pos + 2.0), 1.0 / (n_neg + 2.0))

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


def apply_platt(scores: np.ndarray, params: np.ndarray) -> np.ndarray:
    """Probabilities (N, M) from decision values (N, M) and Platt parameters (2, M)."""
    z = np.asarray(scores, dtype=np.float64) * params[0] + params[1]
    return 0.5 * (1.0 + np.tanh(0.5 * z))
