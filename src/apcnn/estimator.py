"""scikit-learn style multi-task attribute classifier on fixed features (the M-extract model).

:class:`MultiTaskAttributeClassifier` fits ``W = L S`` by minimising (Abdulnabi et al. 2015, eq. 2,
plus an optional unpenalised bias ``b``)::

    Σ_m Σ_{i labelled for m} ½ max(0, 1 − y_m(i) (x_m(i)ᵀ L s_m + b_m))²
        + μ Σ_k Σ_g ‖S[k, g]‖₂ + γ ‖L‖₁ + λ ‖L‖_F²

with :func:`apcnn.solvers.fit_alternating` (Algorithm 1). ``X`` is ``(N, D)`` shared features or
``(N, M, D)`` attribute-specific ones (an extension over scikit-learn's 2-D ``X``); ``Y`` is
``(N, M)`` (or ``(N,)``) binary labels, typically ``{−1, +1}`` or ``{0, 1}``, NaN for a missing
label.

scikit-learn conventions and where this estimator departs from them:

- Tags: multi-output binary targets (one binary label per attribute; multi-class targets raise
  ``"Only binary classification is supported"``), NaN in ``Y`` = missing, dense finite ``X``.
- Not tagged as a classifier (``estimator_type`` None, so ``is_classifier`` is False) although it
  classifies, and not a regressor: scikit-learn treats a "classifier" target as finite, and with
  an integer ``cv`` it calls ``type_of_target(y)`` to choose a stratified splitter, which raises
  on NaN before the estimator is called. Untagged, ``cross_val_score(clf, X, Y, cv=3)`` and
  ``GridSearchCV(clf, grid, cv=3)`` use ``KFold(3)`` (unshuffled, as scikit-learn does for any
  multi-label target): pass ``cv=KFold(3, shuffle=True, random_state=0)`` for rows in a
  meaningful order. The classifier tags (``multi_label``, binary only) are still declared.
- Scoring ignores missing labels: :meth:`MultiTaskAttributeClassifier.score` (the default of
  ``cross_val_score``) and the scorers :data:`masked_accuracy_scorer`,
  :data:`masked_balanced_accuracy_scorer` (``make_scorer`` objects; pass them as ``scoring=``).
  scikit-learn's string scorers (``"accuracy"``, ...) reject NaN in ``y``.
- ``cross_val_predict(clf, X, Y, cv=3)`` works (``method="predict"``); with
  ``method="decision_function"`` or ``"predict_proba"`` scikit-learn re-encodes a 2-D ``Y`` per
  column (a NaN becomes a class) and expects one ``classes_`` entry per column: loop over
  ``KFold(3).split(X)`` instead.
- One decision rule: ``predict`` is ``decision_function > 0`` is ``predict_proba > 0.5``
  (see :meth:`MultiTaskAttributeClassifier.predict_proba`).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.optimize import minimize
from sklearn.base import BaseEstimator
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import make_scorer
from sklearn.utils import ClassifierTags
from sklearn.utils.validation import check_array, check_consistent_length, check_is_fitted

from apcnn.calibration import MIN_PER_CLASS, platt_targets
from apcnn.solvers import fit_alternating

__all__ = [
    "MultiTaskAttributeClassifier",
    "masked_accuracy",
    "masked_accuracy_scorer",
    "masked_balanced_accuracy",
    "masked_balanced_accuracy_scorer",
]


def _to_numpy(a: Any) -> Any:
    """Torch tensors to NumPy (``requires_grad`` ones too); anything else unchanged."""
    return a.detach().cpu().numpy() if hasattr(a, "detach") else a


def _check_X(X: Any) -> np.ndarray:
    """Validate features like scikit-learn (``check_array``), allowing ``(N, M, D)`` as well.

    Rejects sparse, complex, non-numeric, empty and non-finite input with scikit-learn's messages;
    keeps float32/float64, converts other numeric dtypes (and numeric object arrays) to float64.
    """
    x = check_array(
        _to_numpy(X),
        accept_sparse=False,
        dtype=(np.float64, np.float32),
        allow_nd=True,
        input_name="X",
    )
    if x.ndim > 3:
        raise ValueError(f"X must be 2-D (N, D) or 3-D (N, M, D); got shape {x.shape}")
    if x.ndim == 3 and 0 in x.shape[1:]:
        raise ValueError(f"0 feature(s) (shape={x.shape}) while a minimum of 1 is required.")
    return x


def _check_Y(Y: Any, mask: Any = None) -> tuple[np.ndarray, np.ndarray, bool]:
    """``Y`` as float64 ``(N, M)`` (a 1-D ``Y`` becomes one column), the labelled entries and
    whether ``Y`` was 1-D.

    NaN is a missing label; ±inf raises. ``mask`` (optional, True = labelled) further excludes
    entries.
    """
    y = _to_numpy(Y)
    if y is None:
        raise ValueError(
            "MultiTaskAttributeClassifier requires y to be passed, but the target y is None."
        )
    y = np.asarray(y)
    if y.dtype.kind not in "biuf":
        try:
            y = y.astype(np.float64)
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"Unknown label type: Y must hold numeric binary labels (NaN = missing); "
                f"got dtype {y.dtype} ({err})"
            ) from None
    y = check_array(
        y, ensure_2d=False, dtype=np.float64, ensure_all_finite="allow-nan", input_name="Y"
    )
    one_d = y.ndim == 1
    if one_d:
        y = y[:, None]
    if y.ndim != 2:
        raise ValueError(f"Y must have shape (N, M) or (N,); got {y.shape}")
    known = ~np.isnan(y)
    if mask is not None:
        m = np.asarray(_to_numpy(mask))
        m = m[:, None] if m.ndim == 1 else m
        if m.shape != y.shape:
            raise ValueError(f"mask must have the shape of Y {y.shape}; got {m.shape}")
        known &= m.astype(bool)
    return y, known, one_d


def _label_coding(y: np.ndarray, known: np.ndarray) -> np.ndarray:
    """``classes_``: the two label values ``[negative, positive]`` of the labelled entries.

    Two distinct values: sorted, the larger one is positive (``[0, 1]``, ``[-1, 1]``, ``[1, 2]``).
    One value only: ``0`` means ``[0, 1]``, ``±1`` means ``[-1, 1]``; any other raises.
    """
    if not known.any():
        raise ValueError("Y has no labelled entry (every label is NaN or masked out)")
    values = np.unique(y[known])
    if np.any(values != np.round(values)):
        raise ValueError(
            "Unknown label type: continuous. Y must hold binary labels ({-1, +1} or {0, 1}, "
            f"NaN = missing); found {values[:5].tolist()}"
        )
    if values.size > 2:
        raise ValueError(
            "Only binary classification is supported. The type of the target is multiclass: "
            f"each attribute is one binary label, found values {values[:5].tolist()}"
        )
    if values.size == 1:
        if values[0] not in (-1.0, 0.0, 1.0):
            raise ValueError(
                f"Y holds one class only ({values[0]:g}): label both classes, or code the "
                "labels {-1, +1} or {0, 1}"
            )
        values = np.array([0.0, 1.0]) if values[0] == 0 else np.array([-1.0, 1.0])
    return values.astype(np.int64)


def _platt_scale(scores: np.ndarray, ypm: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Per-attribute Platt slopes ``a_m ≥ 0`` of ``p = σ(a_m s)`` (Platt scaling without offset).

    Minimises the cross-entropy ``Σ_i log(1 + exp(a s_i)) − t_i a s_i`` over the labelled samples
    of attribute ``m`` against Platt's smoothed targets (:func:`apcnn.calibration.platt_targets`),
    ``a ≥ 0`` so that ``p`` never decreases with the score. The offset is fixed at 0 so that
    ``p > 0.5`` exactly where ``s > 0`` (one decision rule). An attribute with fewer than
    ``MIN_PER_CLASS`` labelled samples of a class keeps ``a = 1`` (like ``fit_platt``).
    """
    a = np.ones(scores.shape[1])
    for m in range(scores.shape[1]):
        sel = known[:, m]
        pos = ypm[sel, m] > 0
        if int(pos.sum()) < MIN_PER_CLASS or int((~pos).sum()) < MIN_PER_CLASS:
            continue
        s, t = scores[sel, m].astype(np.float64), platt_targets(pos)

        def nll(v: np.ndarray, s: np.ndarray = s, t: np.ndarray = t) -> tuple[float, np.ndarray]:
            z = v[0] * s
            r = 0.5 * (1.0 + np.tanh(0.5 * z)) - t
            return float(np.sum(np.logaddexp(0.0, z) - t * z)), np.array([np.sum(r * s)])

        res = minimize(nll, np.array([1.0]), jac=True, method="L-BFGS-B", bounds=[(0.0, None)])
        a[m] = float(res.x[0])
    return a


class MultiTaskAttributeClassifier(BaseEstimator):
    """Multi-task latent attribute classifier (``W = L S``, group-sparse ``S``, sparse ``L``).

    Parameters:
        K: number of latent tasks (columns of ``L``).
        mu: group penalty ``μ`` on ``S``.
        gamma: ℓ1 penalty ``γ`` on ``L``.
        lam: Frobenius penalty ``λ`` on ``L`` (0.5 ≈ the ridge of a linear SVM with ``C = 1``).
        groups: list of lists of attribute indices (a partition of ``range(M)``); None = one group
            with every attribute.
        loss: ``"squared_hinge"`` (the paper) or ``"logistic"``.
        bias: fit an unpenalised per-attribute intercept.
        method: S-step solver, ``"fista"`` (disjoint groups) or ``"spgd"`` (also overlapping).
        overlapping: groups may share attributes (needs ``method="spgd"``).
        max_outer: outer (alternating) iterations; a ``ConvergenceWarning`` is raised when reached.
        tol: stopping rule, relative decrease of the objective over one outer iteration.
        max_iter: iterations of each sub-solver.
        random_state: seed of the random completion of ``L`` (:func:`apcnn.solvers.init_from_w`).
        pos_weight: ``"none"`` or ``"ratio"``: DeepMAR's class weights, attribute m's positive
            labels weighted ``exp(1 − p_m)`` and negative ones ``exp(p_m)`` in the loss (``p_m``
            its positive rate in the labels given to ``fit``;
            :func:`apcnn.losses.positive_ratio_weights`). The penalties are not rescaled.

    Fitted attributes: ``L_`` ``(D, K)``, ``S_`` ``(K, M)``, ``coef_ = L_ S_`` ``(D, M)``,
    ``intercept_`` ``(M,)``, ``classes_`` (``[negative, positive]`` label values seen in ``fit``,
    e.g. ``[-1, 1]`` or ``[0, 1]``), ``proba_scale_`` ``(M,)`` (Platt slopes of
    :meth:`predict_proba`), ``n_iter_``, ``objective_history_``, ``n_features_in_`` (``D``),
    ``n_attributes_`` (``M``), ``converged_``.

    Missing labels (NaN in ``Y``) are left out of the fit and of :meth:`score`; for
    cross-validation see the module docstring (integer ``cv`` = ``KFold``, NaN-aware scorers).
    """

    def __init__(
        self,
        K: int = 32,
        mu: float = 1.0,
        gamma: float = 1e-2,
        lam: float = 0.5,
        groups: Sequence[Sequence[int]] | None = None,
        loss: str = "squared_hinge",
        bias: bool = True,
        method: str = "fista",
        overlapping: bool = False,
        max_outer: int = 50,
        tol: float = 1e-5,
        max_iter: int = 2000,
        random_state: int | None = 0,
        pos_weight: str = "none",
    ) -> None:
        self.K = K
        self.mu = mu
        self.gamma = gamma
        self.lam = lam
        self.groups = groups
        self.loss = loss
        self.bias = bias
        self.method = method
        self.overlapping = overlapping
        self.max_outer = max_outer
        self.tol = tol
        self.max_iter = max_iter
        self.random_state = random_state
        self.pos_weight = pos_weight

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        # Not "classifier": scikit-learn's classifier machinery (stratified integer cv, string
        # scorers) requires finite targets, and NaN marks a missing label here (module docstring).
        tags.estimator_type = None
        tags.classifier_tags = ClassifierTags(multi_class=False, multi_label=True)
        tags.target_tags.required = True
        tags.target_tags.single_output = True  # a 1-D Y gives 1-D outputs
        tags.target_tags.multi_output = True  # Y (N, M): one binary label per attribute
        tags.input_tags.three_d_array = True  # attribute-specific features (N, M, D)
        return tags

    # ------------------------------------------------------------------ fit

    def fit(self, X: Any, Y: Any, mask: Any = None) -> MultiTaskAttributeClassifier:
        """Fit on features ``X`` ``(N, D)`` or ``(N, M, D)``, labels ``Y`` ``(N, M)`` or ``(N,)``.

        ``Y``: two label values (``{−1, +1}``, ``{0, 1}``, ...; the larger is positive), NaN =
        missing; ``mask`` (optional, True = labelled) further excludes entries. Returns ``self``.
        """
        x = _check_X(X)
        y, known, one_d = _check_Y(Y, mask)
        check_consistent_length(x, y)
        classes = _label_coding(y, known)
        ypm = np.where(known & (y == classes[1]), 1.0, -1.0)
        M = ypm.shape[1]
        groups = [list(range(M))] if self.groups is None else self.groups
        seed = int(np.random.RandomState(self.random_state).randint(2**31 - 1))
        weights = _class_weights(self.pos_weight, ypm, known)
        res = fit_alternating(
            x,
            ypm,
            groups,
            mu=self.mu,
            gamma=self.gamma,
            lam=self.lam,
            K=self.K,
            mask=known,
            max_outer=self.max_outer,
            tol=self.tol,
            method=self.method,
            loss=self.loss,
            bias=bool(self.bias),
            seed=seed,
            overlapping=self.overlapping,
            max_iter=self.max_iter,
            sample_weights=weights,
        )
        if not res.converged:
            warnings.warn(
                f"MultiTaskAttributeClassifier did not converge in max_outer={self.max_outer} "
                "outer iterations; increase max_outer or tol",
                ConvergenceWarning,
                stacklevel=2,
            )
        self.L_ = np.asarray(res.L)
        self.S_ = np.asarray(res.S)
        self.coef_ = self.L_ @ self.S_
        self.intercept_ = (
            np.asarray(res.bias) if res.bias is not None else np.zeros(M, dtype=self.coef_.dtype)
        )
        self.classes_ = classes
        self.n_iter_ = res.n_iter
        self.objective_history_ = list(res.history)
        self.converged_ = res.converged
        self.n_features_in_ = x.shape[-1]
        self.n_attributes_ = M
        self._one_d = one_d
        self.proba_scale_ = _platt_scale(self._scores(x), ypm, known)
        return self

    # ------------------------------------------------------------------ predict

    def _scores(self, x: np.ndarray) -> np.ndarray:
        from .selection import scores

        return scores(x, self.coef_, self.intercept_)

    def _validated(self, X: Any) -> np.ndarray:
        check_is_fitted(self, "coef_")
        x = _check_X(X)
        D, M = self.coef_.shape
        if not (x.ndim == 2 and x.shape[1] == D) and not (x.ndim == 3 and x.shape[1:] == (M, D)):
            raise ValueError(
                f"X has {x.shape[-1]} features, but MultiTaskAttributeClassifier is expecting "
                f"{D} features as input: X must have shape (N, {D}) or (N, {M}, {D}) like the "
                f"features seen in fit; got {x.shape}"
            )
        return x

    def decision_function(self, X: Any) -> np.ndarray:
        """Scores ``x_m(i)ᵀ w_m + b_m``, ``(N, M)`` (``(N,)`` if ``Y`` was 1-D in ``fit``)."""
        s = self._scores(self._validated(X))
        return s[:, 0] if self._one_d else s

    def predict(self, X: Any) -> np.ndarray:
        """Decisions in the label coding seen in ``fit``: ``classes_[1]`` where the score > 0.

        The same rule as ``predict_proba > 0.5`` (``predict_proba(X)[:, 1] > 0.5`` for 1-D ``Y``).
        """
        s = self.decision_function(X)
        return np.where(s > 0, self.classes_[1], self.classes_[0])

    def predict_proba(self, X: Any) -> np.ndarray:
        """Calibrated probabilities of the positive class, ``p_m = σ(a_m · score_m)``.

        ``a_m = proba_scale_[m] ≥ 0`` is fitted by Platt scaling (cross-entropy against Platt's
        smoothed targets) on the labelled *training* scores, in ``fit``. Why the training scores:
        ``fit`` stays one solve (a held-out or cross-validated calibration would cost one or
        ``k`` more alternating fits, inside every ``GridSearchCV`` candidate); only one parameter
        per attribute is fitted, and the smoothed targets keep it finite on separable data. The
        training margins are optimistic, so ``p`` leans confident; for a calibration on held-out
        data, fit :func:`apcnn.calibration.fit_platt` on ``decision_function`` of held-out rows.

        The offset is 0, so ``p`` is non-decreasing in the score and ``predict`` is exactly
        ``p > 0.5`` (``score > 0``), scikit-learn's rule for binary classifiers.

        Returns ``(N, M)`` (scikit-learn's multi-label format), or ``(N, 2)`` with columns
        ``[1 − p, p]`` for ``classes_`` when ``Y`` was 1-D in ``fit``.
        """
        check_is_fitted(self, "proba_scale_")
        s = self._scores(self._validated(X))
        p = 0.5 * (1.0 + np.tanh(0.5 * s * self.proba_scale_))
        return np.column_stack([1.0 - p[:, 0], p[:, 0]]) if self._one_d else p

    def score(self, X: Any, y: Any, mask: Any = None, sample_weight: Any = None) -> float:
        """Mean accuracy over the labelled entries (NaN in ``y`` or ``mask`` False excluded).

        Pooled over attributes: ``Σ correct / Σ labelled`` (:func:`masked_accuracy`).
        """
        if sample_weight is not None:
            raise ValueError("sample_weight is not supported; pass mask to exclude entries")
        pred = self.predict(X)
        y, known, _ = _check_Y(y, mask)
        return _masked_accuracy(y, np.reshape(pred, y.shape), known)


# ---------------------------------------------------------------------- NaN-aware metrics


def _class_weights(pos_weight: Any, ypm: np.ndarray, known: np.ndarray) -> np.ndarray | None:
    """``pos_weight``'s (N, M) per-entry loss weights for labels ``ypm`` in {-1, +1} (None for
    "none")."""
    if pos_weight == "none":
        return None
    if pos_weight != "ratio":
        raise ValueError(f"pos_weight must be 'none' or 'ratio' (got {pos_weight!r})")
    import torch

    from apcnn.losses import entry_weights, positive_ratio_weights

    y, m = torch.as_tensor(ypm), torch.as_tensor(known)
    return entry_weights(y, m, *positive_ratio_weights(y, m)).numpy()


def _masked_accuracy(y: np.ndarray, pred: np.ndarray, known: np.ndarray) -> float:
    if not known.any():
        raise ValueError("Y has no labelled entry to score (every label is NaN or masked out)")
    return float((pred[known] == y[known]).mean())


def _true_pred(y_true: Any, y_pred: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    y, known, _ = _check_Y(y_true)
    pred = np.asarray(_to_numpy(y_pred), dtype=np.float64)
    if pred.size != y.size:
        raise ValueError(f"y_pred {pred.shape} and y_true {y.shape} must have the same shape")
    return y, pred.reshape(y.shape), known


def masked_accuracy(y_true: Any, y_pred: Any) -> float:
    """Accuracy over the labelled entries of ``y_true`` (NaN = missing, ignored).

    ``Σ_{(i, m) labelled} [y_pred(i, m) = y_true(i, m)] / #labelled``; ``(N, M)`` or ``(N,)``.
    """
    y, pred, known = _true_pred(y_true, y_pred)
    return _masked_accuracy(y, pred, known)


def masked_balanced_accuracy(y_true: Any, y_pred: Any) -> float:
    """Mean over attributes of the balanced accuracy on their labelled entries (the paper's mA).

    Per attribute ``m``: the mean, over the label values present in ``y_true[:, m]``, of the
    recall of that value (``(TPR + TNR) / 2`` with both classes); attributes without a labelled
    entry are left out of the mean. NaN in ``y_true`` = missing.
    """
    y, pred, known = _true_pred(y_true, y_pred)
    if not known.any():
        raise ValueError("Y has no labelled entry to score (every label is NaN or masked out)")
    per_attribute = []
    for m in range(y.shape[1]):
        t, p = y[known[:, m], m], pred[known[:, m], m]
        if t.size:
            per_attribute.append(np.mean([np.mean(p[t == v] == v) for v in np.unique(t)]))
    return float(np.mean(per_attribute))


#: ``make_scorer(masked_accuracy)``: ``scoring=`` for ``cross_val_score`` / ``GridSearchCV``
masked_accuracy_scorer = make_scorer(masked_accuracy)
#: ``make_scorer(masked_balanced_accuracy)``: mA, NaN labels ignored
masked_balanced_accuracy_scorer = make_scorer(masked_balanced_accuracy)
