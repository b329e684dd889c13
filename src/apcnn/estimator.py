"""scikit-learn style multi-task attribute classifier on fixed features (the M-extract model).

:class:`MultiTaskAttributeClassifier` fits ``W = L S`` by minimising (Abdulnabi et al. 2015, eq. 2,
plus an optional unpenalised bias ``b``)::

    Σ_m Σ_{i labelled for m} ½ max(0, 1 − y_m(i) (x_m(i)ᵀ L s_m + b_m))²
        + μ Σ_k Σ_g ‖S[k, g]‖₂ + γ ‖L‖₁ + λ ‖L‖_F²

with :func:`apcnn.solvers.fit_alternating` (Algorithm 1). ``X`` is ``(N, D)`` shared features or
``(N, M, D)`` attribute-specific ones; ``Y`` is ``(N, M)`` with labels in ``{−1, +1}`` or
``{0, 1}`` and NaN for a missing label.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.validation import check_is_fitted

from apcnn.solvers import fit_alternating


def _as_float_array(X: Any, name: str) -> np.ndarray:
    if hasattr(X, "detach"):
        X = X.detach().cpu().numpy()
    a = np.asarray(X)
    if a.dtype == object or not np.issubdtype(a.dtype, np.number):
        raise TypeError(f"{name} must be a numeric array (got dtype {a.dtype})")
    return a if a.dtype in (np.float32, np.float64) else a.astype(np.float64)


class MultiTaskAttributeClassifier(ClassifierMixin, BaseEstimator):
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

    Fitted attributes: ``L_`` ``(D, K)``, ``S_`` ``(K, M)``, ``coef_ = L_ S_`` ``(D, M)``,
    ``intercept_`` ``(M,)``, ``classes_`` (the label coding seen in ``fit``: ``[-1, 1]`` or
    ``[0, 1]``), ``n_iter_``, ``objective_history_``, ``n_features_in_`` (``D``),
    ``n_attributes_`` (``M``), ``converged_``.
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

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = False
        tags.input_tags.three_d_array = True
        tags.classifier_tags.multi_label = True
        return tags

    # ------------------------------------------------------------------ labels

    def _encode(self, Y: Any, mask: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        y = _as_float_array(Y, "Y").astype(np.float64)
        if y.ndim == 1:
            y = y[:, None]
        if y.ndim != 2:
            raise ValueError(f"Y must have shape (N, M); got {y.shape}")
        known = ~np.isnan(y)
        if mask is not None:
            m = np.asarray(mask.detach().cpu().numpy() if hasattr(mask, "detach") else mask)
            if m.shape != y.shape:
                raise ValueError(f"mask must have the shape of Y {y.shape}; got {m.shape}")
            known &= m.astype(bool)
        values = set(np.unique(y[known]).tolist())
        if not values <= {-1.0, 1.0} and not values <= {0.0, 1.0}:
            raise ValueError(
                "Y must hold labels in {-1, +1} or {0, 1} (NaN = missing); "
                f"found {sorted(values)}"
            )
        classes = np.array([0, 1]) if 0.0 in values else np.array([-1, 1])
        ypm = np.where(known & (y == 1), 1.0, -1.0)
        return ypm, known, classes

    # ------------------------------------------------------------------ fit / predict

    def fit(self, X: Any, Y: Any, mask: Any = None) -> MultiTaskAttributeClassifier:
        """Fit on features ``X`` ``(N, D)`` or ``(N, M, D)`` and labels ``Y`` ``(N, M)``.

        ``Y`` in ``{−1, +1}`` or ``{0, 1}``, NaN = missing; ``mask`` (optional, True = labelled)
        further excludes entries. Returns ``self``.
        """
        x = _as_float_array(X, "X")
        ypm, known, classes = self._encode(Y, mask)
        M = ypm.shape[1]
        groups = [list(range(M))] if self.groups is None else self.groups
        seed = int(np.random.RandomState(self.random_state).randint(2**31 - 1))
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
        self._one_d = np.ndim(Y) == 1
        return self

    def decision_function(self, X: Any) -> np.ndarray:
        """Scores ``x_m(i)ᵀ w_m + b_m``, ``(N, M)`` (``(N,)`` if ``Y`` was 1-D in ``fit``)."""
        check_is_fitted(self, "coef_")
        x = _as_float_array(X, "X")
        from .selection import scores

        D, M = self.coef_.shape
        if not (x.ndim == 2 and x.shape[1] == D) and not (x.ndim == 3 and x.shape[1:] == (M, D)):
            raise ValueError(
                f"X must have shape (N, {D}) or (N, {M}, {D}) like the features seen in fit; "
                f"got {x.shape}"
            )
        s = scores(x, self.coef_, self.intercept_)
        return s[:, 0] if self._one_d else s

    def predict(self, X: Any) -> np.ndarray:
        """Decisions in the label coding seen in ``fit`` (``classes_[1]`` where the score > 0)."""
        s = self.decision_function(X)
        return np.where(s > 0, self.classes_[1], self.classes_[0])

    def score(self, X: Any, Y: Any, mask: Any = None, sample_weight: Any = None) -> float:
        """Mean accuracy over the labelled entries (NaN in ``Y`` or ``mask`` False excluded)."""
        if sample_weight is not None:
            raise ValueError("sample_weight is not supported; pass mask to exclude entries")
        pred = self.predict(X)
        y = _as_float_array(Y, "Y").astype(np.float64)
        known = ~np.isnan(y)
        if mask is not None:
            known &= np.asarray(mask).astype(bool)
        if not known.any():
            raise ValueError("Y has no labelled entry to score")
        return float((pred[known] == y[known]).mean())
