from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning, NotFittedError

from apcnn import solvers as sv
from apcnn.estimator import MultiTaskAttributeClassifier

GROUPS = [[0, 1, 2], [3, 4], [5]]


def planted(shared: bool = True, seed: int = 0, N: int = 120, M: int = 6, D: int = 10):
    """Labels from a planted low-rank model ``W = L S`` (rank 2) with a bias and little noise."""
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((D, 2)) @ rng.standard_normal((2, M))
    X = rng.standard_normal((N, D)) if shared else rng.standard_normal((N, M, D))
    scores = X @ W if shared else np.einsum("nmd,dm->nm", X, W)
    Y01 = (scores + 0.5 + 0.2 * rng.standard_normal((N, M)) > 0).astype(float)
    return X, Y01


def test_fit_predict_with_01_labels_and_missing():
    X, Y = planted()
    Y[np.random.default_rng(1).random(Y.shape) < 0.2] = np.nan
    clf = MultiTaskAttributeClassifier(K=4, mu=0.5, gamma=0.05, lam=0.5, groups=GROUPS, tol=1e-4)
    assert clf.fit(X, Y) is clf
    D, M = X.shape[1], Y.shape[1]
    assert clf.L_.shape == (D, 4) and clf.S_.shape == (4, M) and clf.coef_.shape == (D, M)
    np.testing.assert_allclose(clf.coef_, clf.L_ @ clf.S_)
    assert clf.intercept_.shape == (M,) and np.abs(clf.intercept_).sum() > 0
    assert clf.n_iter_ >= 1 and clf.n_features_in_ == D
    assert np.all(np.diff(clf.objective_history_) <= 0)
    assert list(clf.classes_) == [0, 1]
    pred = clf.predict(X)
    assert set(np.unique(pred)) <= {0, 1}
    known = ~np.isnan(Y)
    assert (pred[known] == Y[known]).mean() > 0.9  # training accuracy on a planted model
    assert clf.score(X, Y) == pytest.approx((pred[known] == Y[known]).mean())
    np.testing.assert_allclose(clf.decision_function(X), X @ clf.coef_ + clf.intercept_)
    # the fitted model is the solver's optimum of its objective with the same data
    Ypm = np.where(Y == 1, 1.0, -1.0)
    assert clf.converged_
    f = sv.objective(X, Ypm, clf.L_, clf.S_, GROUPS, 0.5, 0.05, 0.5, known, bias=clf.intercept_)
    assert f == pytest.approx(clf.objective_history_[-1], rel=1e-12)


def test_pm1_labels_attribute_specific_features_and_mask():
    X, Y01 = planted(shared=False, seed=2)
    Y = 2 * Y01 - 1
    mask = np.random.default_rng(3).random(Y.shape) > 0.1
    clf = MultiTaskAttributeClassifier(K=3, mu=0.2, gamma=0.05, lam=0.5, bias=False, tol=1e-4)
    clf.fit(X, Y, mask=mask)
    assert list(clf.classes_) == [-1, 1]
    assert (clf.intercept_ == 0).all()
    pred = clf.predict(X)
    assert set(np.unique(pred)) <= {-1, 1}
    np.testing.assert_allclose(clf.decision_function(X), np.einsum("nmd,dm->nm", X, clf.coef_))
    assert (pred[mask] == Y[mask]).mean() > 0.85
    with pytest.raises(ValueError, match=r"X must have shape \(N, 10\) or \(N, 6, 10\)"):
        clf.decision_function(X[:, :, :5])


def test_not_fitted_and_convergence_warning():
    X, Y = planted(seed=4)
    clf = MultiTaskAttributeClassifier(K=2, max_outer=1, tol=1e-12)
    with pytest.raises(NotFittedError):
        clf.predict(X)
    with pytest.raises(NotFittedError):
        clf.decision_function(X)
    with pytest.warns(ConvergenceWarning, match="max_outer=1"):
        clf.fit(X, Y)
    assert clf.n_iter_ == 1 and not clf.converged_


def test_init_only_stores_and_clone():
    clf = MultiTaskAttributeClassifier(K=5, mu=-1.0, groups=[[0], [1]], random_state=3)
    params = clf.get_params()
    assert params["K"] == 5 and params["mu"] == -1.0 and params["groups"] == [[0], [1]]
    c2 = clone(clf).set_params(mu=2.0)
    assert c2.mu == 2.0 and c2.K == 5
    X, Y = planted(seed=5)
    with pytest.raises(ValueError, match="mu must be a finite number >= 0"):
        clf.fit(X, Y)  # validated in fit, not in __init__


def test_bad_labels_and_groups():
    X, Y = planted(seed=6)
    three = np.where(np.arange(Y.size).reshape(Y.shape) % 7 == 0, 2.0, Y)  # {0, 1, 2}
    with pytest.raises(ValueError, match="Only binary classification is supported"):
        MultiTaskAttributeClassifier(K=2).fit(X, three)
    with pytest.raises(ValueError, match="is in no group"):
        MultiTaskAttributeClassifier(K=2, groups=[[0, 1]]).fit(X, Y)
    with pytest.raises(ValueError, match="mask must have the shape of Y"):
        MultiTaskAttributeClassifier(K=2).fit(X, Y, mask=np.ones((3, 3), bool))


def test_one_dimensional_target_and_float32():
    X, Y = planted(seed=7, M=1)
    clf = MultiTaskAttributeClassifier(K=1, mu=0.1, tol=1e-4).fit(X.astype(np.float32), Y[:, 0])
    assert clf.decision_function(X).shape == (X.shape[0],)
    assert clf.coef_.dtype == np.float32
    assert (clf.predict(X) == Y[:, 0]).mean() > 0.9
