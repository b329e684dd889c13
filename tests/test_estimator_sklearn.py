"""scikit-learn conventions of :class:`apcnn.estimator.MultiTaskAttributeClassifier`.

``check_estimator``'s checks (one test each), tags, input validation, ``predict_proba``, the
NaN-aware scorers and cross-validation with an integer ``cv`` on labels with missing entries.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.base import clone, is_classifier, is_regressor
from sklearn.metrics import accuracy_score, balanced_accuracy_score
from sklearn.model_selection import GridSearchCV, KFold, cross_val_predict, cross_val_score
from sklearn.utils import get_tags
from sklearn.utils.estimator_checks import parametrize_with_checks

from apcnn.estimator import (
    MultiTaskAttributeClassifier,
    masked_accuracy,
    masked_accuracy_scorer,
    masked_balanced_accuracy,
    masked_balanced_accuracy_scorer,
)

GROUPS = [[0, 1, 2], [3, 4], [5]]


def planted(seed: int = 0, N: int = 120, M: int = 6, D: int = 10, missing: float = 0.0):
    """``{0, 1}`` labels of a planted rank-2 model ``W = L S`` with a bias and a little noise,
    a fraction ``missing`` of them NaN."""
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((D, 2)) @ rng.standard_normal((2, M))
    X = rng.standard_normal((N, D))
    Y = (X @ W + 0.5 + 0.2 * rng.standard_normal((N, M)) > 0).astype(float)
    Y[rng.random(Y.shape) < missing] = np.nan
    return X, Y


def small(**kw) -> MultiTaskAttributeClassifier:
    return MultiTaskAttributeClassifier(K=2, mu=0.3, gamma=0.01, tol=1e-3, **kw)


# ---------------------------------------------------------------------- check_estimator


class _AsClassifier(MultiTaskAttributeClassifier):
    """The estimator tagged ``estimator_type="classifier"``, so that scikit-learn also runs its
    classifier checks (predict_proba format, decision/proba/predict agreement, one-label and
    multi-class targets, ...). The real estimator is not tagged a classifier (see the module
    docstring of ``apcnn.estimator``: an integer ``cv`` would then reject NaN labels)."""

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.estimator_type = "classifier"
        return tags


# The checks that cannot apply, and why (every other check must pass):
EXPECTED_FAILED = {
    # Only in the classifier-tagged view: string class labels ("one", "two", "three"). Labels are
    # numeric because NaN marks a missing label, so Y is a float array; fit says so clearly
    # ("Unknown label type: Y must hold numeric binary labels").
    "check_classifiers_classes": "string labels are not supported: NaN marks a missing label",
}
# Not in the list, skipped by scikit-learn itself: check_array_api_input (runs only with the
# environment variable SCIPY_ARRAY_API=1; the estimator computes with NumPy, array_api_support is
# False). No pandas in this environment: the DataFrame variants of the checks are skipped too.


def _expected_failed(estimator):
    return EXPECTED_FAILED if isinstance(estimator, _AsClassifier) else {}


@parametrize_with_checks(
    [
        MultiTaskAttributeClassifier(K=2, max_outer=10, tol=1e-3),
        _AsClassifier(K=2, max_outer=10, tol=1e-3),
    ],
    expected_failed_checks=_expected_failed,
)
def test_sklearn_check(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning of max_outer=10 on some checks
        check(estimator)


def test_tags_declare_multi_label_binary_targets_not_classifier_not_regressor():
    clf = MultiTaskAttributeClassifier()
    tags = get_tags(clf)
    assert tags.classifier_tags.multi_label and not tags.classifier_tags.multi_class
    assert tags.target_tags.multi_output and tags.target_tags.single_output
    assert tags.target_tags.required
    assert tags.input_tags.two_d_array and tags.input_tags.three_d_array
    assert not tags.input_tags.sparse and not tags.input_tags.allow_nan
    assert tags.estimator_type is None and tags.regressor_tags is None
    assert not is_classifier(clf) and not is_regressor(clf)


# ---------------------------------------------------------------------- input validation


@pytest.mark.parametrize(
    "bad, match",
    [
        (lambda X: X.astype(complex), "Complex data not supported"),
        (lambda X: X.astype(str).astype(object), None),  # numeric strings: converted, accepted
        (lambda X: np.full(X.shape, "a", dtype=object), "could not convert string to float"),
        (lambda X: X[:0], r"0 sample\(s\)"),
        (lambda X: X[:, :0], r"0 feature\(s\)"),
        (lambda X: np.where(X > 1.5, np.nan, X), "Input X contains NaN"),
        (lambda X: np.where(X > 1.5, np.inf, X), "Input X contains infinity"),
        (sp.csr_matrix, "Sparse data was passed for X, but dense data is required"),
        (lambda X: X[:, 0], "Expected 2D array, got 1D array"),
        (lambda X: X[:, :, None, None], r"X must be 2-D \(N, D\) or 3-D \(N, M, D\)"),
    ],
)
def test_X_is_validated_at_fit_and_predict(bad, match):
    X, Y = planted(seed=1)
    if match is None:  # accepted like scikit-learn: object arrays of numbers
        clf = small().fit(bad(X), Y)
        np.testing.assert_allclose(clf.decision_function(bad(X)), clf.decision_function(X))
        return
    with pytest.raises((TypeError, ValueError), match=match):  # sparse: TypeError, like sklearn
        small().fit(bad(X), Y)
    clf = small().fit(X, Y)
    for method in (clf.predict, clf.decision_function, clf.predict_proba):
        with pytest.raises((TypeError, ValueError), match=match):
            method(bad(X))


def test_attribute_specific_features_are_validated_too():
    rng = np.random.default_rng(2)
    X = rng.standard_normal((60, 3, 4))
    Y = (rng.standard_normal((60, 3)) > 0).astype(float)
    clf = small().fit(X, Y)
    assert clf.predict_proba(X).shape == (60, 3) and clf.n_features_in_ == 4
    with pytest.raises(ValueError, match="Input X contains NaN"):
        clf.predict(np.where(X > 1.5, np.nan, X))
    with pytest.raises(ValueError, match=r"0 feature\(s\)"):
        small().fit(X[:, :, :0], Y)
    with pytest.raises(ValueError, match=r"X has 2 features, but .* expecting 4"):
        clf.predict(X[:, :, :2])


def test_torch_tensors_are_accepted():
    torch = pytest.importorskip("torch")
    X, Y = planted(seed=3, missing=0.1)
    clf = small().fit(torch.tensor(X, requires_grad=True), torch.tensor(Y))
    np.testing.assert_allclose(clf.predict_proba(torch.tensor(X)), clf.predict_proba(X))


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda Y: np.where(Y == 1, np.inf, Y), "Input Y contains infinity"),
        (lambda Y: np.where(Y == 1, -np.inf, Y), "Input Y contains infinity"),
        (lambda Y: np.full(Y.shape, np.nan), "Y has no labelled entry"),
        (lambda Y: np.where(Y == 1, np.arange(Y.size).reshape(Y.shape) % 3, Y), "Only binary"),
        (lambda Y: Y + 0.5, "Unknown label type: continuous"),
        (lambda Y: np.full(Y.shape, 3.0), "Y holds one class only"),
        (lambda Y: np.where(Y == 1, "yes", "no"), "Unknown label type"),
        (lambda Y: None, "requires y to be passed"),
        (lambda Y: Y[:-1], "inconsistent numbers of samples"),
    ],
)
def test_bad_targets_raise(change, match):
    X, Y = planted(seed=4, missing=0.1)
    with pytest.raises(ValueError, match=match):
        small().fit(X, change(Y))


def test_any_two_label_values_nan_never_negative():
    X, Y = planted(seed=5, missing=0.2)
    ref = small().fit(X, Y)
    clf = small().fit(X, Y + 1)  # labels {1, 2}: 2 is the positive class
    assert list(clf.classes_) == [1, 2]
    np.testing.assert_array_equal(clf.predict(X), ref.predict(X) + 1)
    # NaN is missing, not negative: filling the missing labels with 0 changes the fit
    filled = small().fit(X, np.nan_to_num(Y, nan=0.0))
    assert not np.allclose(filled.coef_, ref.coef_)


# ---------------------------------------------------------------------- predict_proba


def test_predict_proba_is_monotone_in_the_scores_and_agrees_with_predict():
    X, Y = planted(seed=6, N=200, missing=0.2)
    clf = small(groups=GROUPS).fit(X, Y)
    s, p = clf.decision_function(X), clf.predict_proba(X)
    assert p.shape == s.shape and np.all((p >= 0) & (p <= 1))
    assert np.all(clf.proba_scale_ >= 0) and clf.proba_scale_.shape == (Y.shape[1],)
    for m in range(Y.shape[1]):
        order = np.argsort(s[:, m])
        assert np.all(np.diff(p[order, m]) >= 0)  # non-decreasing in the score
    np.testing.assert_array_equal(clf.predict(X) == clf.classes_[1], p > 0.5)
    np.testing.assert_array_equal(p > 0.5, s > 0)


def test_platt_scale_minimises_the_training_cross_entropy():
    """An independent check of the fitted slope: the cross-entropy against Platt's smoothed
    targets on the labelled training scores is smallest at ``proba_scale_`` on a fine grid."""
    from apcnn.calibration import platt_targets

    X, Y = planted(seed=7, N=200, missing=0.1)
    clf = small().fit(X, Y)
    s = clf.decision_function(X)
    for m in range(Y.shape[1]):
        known = ~np.isnan(Y[:, m])
        sm, t = s[known, m], platt_targets(Y[known, m] == 1)

        def nll(a, sm=sm, t=t):
            z = a * sm
            return np.sum(np.logaddexp(0.0, z) - t * z)

        a = clf.proba_scale_[m]
        grid = np.linspace(0.0, 3 * a + 1.0, 301)
        assert nll(a) <= min(nll(g) for g in grid) + 1e-6


def test_one_dimensional_target_gives_two_column_probabilities():
    X, Y = planted(seed=8, M=1)
    clf = small().fit(X, Y[:, 0])
    p = clf.predict_proba(X)
    assert p.shape == (X.shape[0], 2)
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    np.testing.assert_array_equal(clf.classes_[np.argmax(p, axis=1)], clf.predict(X))


# ---------------------------------------------------------------------- scoring, cv


def test_masked_metrics_match_sklearn_on_the_labelled_entries():
    X, Y = planted(seed=9, N=150, missing=0.3)
    clf = small().fit(X, Y)
    pred = clf.predict(X)
    known = ~np.isnan(Y)
    assert masked_accuracy(Y, pred) == pytest.approx(accuracy_score(Y[known], pred[known]))
    assert clf.score(X, Y) == pytest.approx(masked_accuracy(Y, pred))
    per_attr = [balanced_accuracy_score(Y[known[:, m], m], pred[known[:, m], m]) for m in range(6)]
    assert masked_balanced_accuracy(Y, pred) == pytest.approx(np.mean(per_attr))
    assert masked_accuracy_scorer(clf, X, Y) == pytest.approx(masked_accuracy(Y, pred))
    assert masked_balanced_accuracy_scorer(clf, X, Y) == pytest.approx(np.mean(per_attr))
    with pytest.raises(ValueError, match="no labelled entry"):
        masked_accuracy(np.full(Y.shape, np.nan), pred)


def test_cross_val_score_with_an_integer_cv_and_missing_labels():
    """``cv=3`` is ``KFold(3)``: the same scores as a manual loop over ``KFold(3)`` folds."""
    X, Y = planted(seed=10, N=150, missing=0.2)
    clf = small(groups=GROUPS)
    got = cross_val_score(clf, X, Y, cv=3)
    want = [clone(clf).fit(X[tr], Y[tr]).score(X[te], Y[te]) for tr, te in KFold(3).split(X, Y)]
    np.testing.assert_allclose(got, want)
    assert np.all(got > 0.8)
    pred = cross_val_predict(clf, X, Y, cv=3)
    tr, te = next(iter(KFold(3).split(X, Y)))
    np.testing.assert_array_equal(pred[te], clone(clf).fit(X[tr], Y[tr]).predict(X[te]))
    mA = cross_val_score(clf, X, Y, cv=3, scoring=masked_balanced_accuracy_scorer)
    assert np.all(np.isfinite(mA)) and np.all(mA > 0.7)


def test_grid_search_with_an_integer_cv_and_missing_labels():
    X, Y = planted(seed=11, N=150, missing=0.2)
    search = GridSearchCV(
        small(groups=GROUPS),
        {"mu": [0.1, 1.0]},
        cv=3,
        scoring={"acc": masked_accuracy_scorer, "mA": masked_balanced_accuracy_scorer},
        refit="mA",
    ).fit(X, Y)
    assert np.all(np.isfinite(search.cv_results_["mean_test_acc"]))
    assert search.best_params_["mu"] in (0.1, 1.0)
    assert search.predict_proba(X).shape == Y.shape
