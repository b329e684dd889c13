"""Per-attribute ridge weights by inner cross-validation and the task weights made from them."""

from __future__ import annotations

import numpy as np
import pytest

from apcnn.selection import (
    auto_task_weights,
    per_attribute_ridge,
    ridge_fit,
    scores,
    task_weights_from_ridge,
)


def _data(attribute_specific: bool, seed: int = 0):
    rng = np.random.default_rng(seed)
    n, m, d = 150, 3, 6
    x = rng.normal(size=(n, m, d)) if attribute_specific else rng.normal(size=(n, d))
    xm = x if attribute_specific else np.repeat(x[:, None], m, axis=1)
    y = np.sign(xm[:, np.arange(m), np.arange(m)])  # attribute m: sign of feature m (clean)
    y[:, 2] *= np.where(rng.random(n) < 0.45, -1.0, 1.0)  # attribute 2: mostly noise
    return x, y, np.ones_like(y, dtype=bool)


@pytest.mark.parametrize("attribute_specific", [False, True])
def test_per_attribute_ridge_on_shared_and_attribute_specific_features(attribute_specific):
    x, y, mask = _data(attribute_specific)
    W, b, lams = per_attribute_ridge(x, y, mask, (1e-3, 30.0), seed=0)
    assert W.shape == (x.shape[-1], 3) and b.shape == (3,)
    assert lams[0] == lams[1] == 1e-3  # clean rules want little regularisation
    assert (np.sign(scores(x, W, b))[:, :2] == y[:, :2]).mean() > 0.95
    W2, b2 = ridge_fit(x, y, mask, lams)  # the refit is the same per-attribute fit
    np.testing.assert_allclose(W2, W)


def test_task_weights_give_each_attribute_its_ridge_weight():
    c = task_weights_from_ridge(np.array([0.1, 1.0, 10.0]))
    np.testing.assert_allclose(c, [10.0, 1.0, 0.1])
    x, y, mask = _data(False, seed=2)
    weights, lams = auto_task_weights(x, y, mask, seed=0)
    assert weights.shape == (3,) and (weights > 0).all()
    np.testing.assert_allclose(weights * lams, np.exp(np.log(lams).mean()))
    assert np.exp(np.log(weights).mean()) == pytest.approx(1.0)
    again, _ = auto_task_weights(10.0 * x, y, mask, seed=0)  # the feature scale does not matter
    np.testing.assert_allclose(again, weights)


def test_identical_attribute_features_are_treated_as_shared():
    x, y, mask = _data(False, seed=3)
    copies = np.repeat(x[:, None], 3, axis=1)  # (N, M, D), all m equal
    weights, _ = auto_task_weights(copies, y, mask)
    np.testing.assert_allclose(weights, auto_task_weights(x, y, mask)[0])


def test_linear_probe_returns_weights_for_the_features_as_given():
    from apcnn.selection import linear_probe

    x, y, mask = _data(False)
    x = 7.0 * x  # any scale: the λ grid applies to unit-scale features
    W, b, lams = linear_probe(x, y, mask, seed=0)
    scale = x.std(axis=0).mean()
    W_unit, b_unit, lams_unit = per_attribute_ridge(x / scale, y, mask, seed=0)
    np.testing.assert_array_equal(lams, lams_unit)
    np.testing.assert_allclose(scores(x, W, b), scores(x / scale, W_unit, b_unit), rtol=1e-5)
    # given ridge weights: no cross-validation, the same fit
    W2, b2, lams2 = linear_probe(np.repeat(x[:, None], 3, axis=1), y, mask, lams=lams)
    np.testing.assert_allclose(W2, W, rtol=1e-5, atol=1e-8)
    np.testing.assert_array_equal(lams2, lams)


def test_penalties_scale_with_the_weighted_count_of_labels():
    """With sample weights, per-sample penalties are per unit of loss weight: n is the mean over
    attributes of the labelled entries' summed weights (unlabelled weights, NaN included, are
    ignored); all-one weights give the plain count."""
    import torch

    from apcnn.selection import penalty_scale, solver_penalties

    mask = np.array([[True, False], [True, True], [False, True], [True, True]])
    w = np.array([[2.0, np.nan], [0.5, 1.0], [7.0, 3.0], [1.5, 0.0]])
    assert penalty_scale(mask) == 3.0
    assert penalty_scale(mask, w) == pytest.approx((4.0 + 4.0) / 2)
    assert penalty_scale(torch.as_tensor(mask), torch.as_tensor(w)) == pytest.approx(4.0)
    assert penalty_scale(mask, np.ones(mask.shape)) == penalty_scale(mask)
    got = solver_penalties(mask, sample_weights=w, mu=0.5, lam=2.0)
    assert got == pytest.approx({"mu": 2.0, "lam": 8.0})


def test_ridge_cv_with_class_weights_is_invariant_to_their_scale():
    """Weighted per-attribute SVMs: multiplying every weight by one factor changes nothing (the
    penalties follow the weighted count), while class weights change the fit."""
    import torch

    from apcnn.losses import entry_weights, positive_ratio_weights
    from apcnn.selection import linear_probe

    x, y, mask = _data(False, seed=4)
    y[:, 0] = np.where(x[:, 0] > 0.9, 1.0, -1.0)  # attribute 0: about 18 % positives
    yt, mt = torch.as_tensor(y), torch.as_tensor(mask)
    w = entry_weights(yt, mt, *positive_ratio_weights(yt, mt)).numpy()
    W, b, lams = linear_probe(x, y, mask, seed=0, sample_weights=w)
    W3, b3, lams3 = linear_probe(x, y, mask, seed=0, sample_weights=3.0 * w)
    np.testing.assert_array_equal(lams3, lams)
    np.testing.assert_allclose(scores(x, W3, b3), scores(x, W, b), rtol=1e-4, atol=1e-6)
    W1, b1, _ = linear_probe(x, y, mask, seed=0, lams=lams)
    assert np.abs(b1 - b).max() > 1e-3
