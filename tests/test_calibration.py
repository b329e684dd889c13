"""Platt scaling: smoothed targets, the prior a fitted calibration carries, likelihood ratios."""

from __future__ import annotations

import numpy as np
import pytest

from apcnn.calibration import apply_platt, calibration_prior, fit_platt, platt_targets


def _logit(p):
    return np.log(p) - np.log1p(-p)


def test_platt_targets_are_smoothed_frequencies():
    # N+ = 3, N- = 1: positives (3 + 1) / (3 + 2), negatives 1 / (1 + 2)
    np.testing.assert_allclose(platt_targets([True, True, True, False]), [0.8, 0.8, 0.8, 1 / 3])


def test_calibration_prior_is_mean_target_and_mean_fitted_probability():
    rng = np.random.default_rng(0)
    n = 200
    y = np.stack([rng.random(n) < 0.2, rng.random(n) < 0.6, np.zeros(n, bool)], axis=1)
    y[0, 2] = True  # attribute 2: a single positive, not fitted
    targets = np.where(y, 1.0, -1.0)
    scores = 1.5 * targets + rng.normal(0, 1.5, size=(n, 3))
    mask = rng.random((n, 3)) > 0.1
    rho = calibration_prior(targets, mask)
    # by hand for attribute 0
    pos = int((y[:, 0] & mask[:, 0]).sum())
    neg = int((~y[:, 0] & mask[:, 0]).sum())
    by_hand = (pos * (pos + 1) / (pos + 2) + neg / (neg + 2)) / (pos + neg)
    assert rho[0] == pytest.approx(by_hand, rel=1e-12)
    assert np.isnan(rho[2])
    # at the fitted offset the Platt probabilities average to rho on the calibration split
    params = fit_platt(scores, targets, mask)
    probs = apply_platt(scores, params)
    for m in (0, 1):
        assert probs[mask[:, m], m].mean() == pytest.approx(rho[m], abs=1e-4)
    np.testing.assert_array_equal(params[:, 2], [1.0, 0.0])


def test_dividing_by_the_calibration_prior_gives_the_likelihood_ratio():
    """Scores s ~ N(+1, 1) for positives, N(-1, 1) for negatives: log-likelihood ratio 2 s.

    Calibrated on a split with 1 positive in 5, logit p − logit rho recovers 2 s; a prior that
    differs from the split's frequency (0.5 here) leaves a bias of logit 0.2 − logit 0.5 = −1.39.
    """
    rng = np.random.default_rng(1)
    n_pos, n_neg = 1000, 4000
    s = np.concatenate([rng.normal(1, 1, n_pos), rng.normal(-1, 1, n_neg)])[:, None]
    targets = np.concatenate([np.ones(n_pos), -np.ones(n_neg)])[:, None]
    mask = np.ones_like(targets, dtype=bool)
    params = fit_platt(s, targets, mask)
    rho = calibration_prior(targets, mask)[0]
    grid = np.linspace(-2, 2, 9)[:, None]
    llr = _logit(apply_platt(grid, params))[:, 0] - _logit(rho)
    np.testing.assert_allclose(llr, 2 * grid[:, 0], rtol=0.1, atol=0.1)
    off = _logit(apply_platt(grid, params))[:, 0] - _logit(0.5)
    assert np.abs(off - 2 * grid[:, 0]).min() > 1.0
