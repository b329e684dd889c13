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
