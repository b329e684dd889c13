"""Model selection: every hyperparameter a run chooses from data, above the fits.

- per-attribute ridge weights by inner cross-validation (:func:`per_attribute_ridge`,
  :func:`linear_probe`, :func:`ridge_cv`), and what is made of them: the task weights
  (``mtl.task_weights: auto``, :func:`task_weights_from_ridge`) and the L weight
  (``mtl.lam: auto``, :func:`pooled_ridge`);
- the group weight mu from a grid, on a validation split (:func:`choose_on_validation`);
- the scaling of per-sample penalties to eq. 2 (:func:`penalty_scale`, :func:`solver_penalties`):
  the only place where it happens.

Used by training (``apcnn.training``) and by ``apcnn reproduce`` (S-extract, M-extract). Features
``x`` are ``(N, D)`` shared or ``(N, M, D)`` attribute-specific; labels ``y`` ``(N, M)`` in
{-1, +1}; ``mask`` ``(N, M)`` bool. Penalties and ridge weights are *per labelled sample*, so one
grid suits any dataset size.

Class weights (``train.pos_weight: ratio``): every fit here takes ``sample_weights`` ``(N, M)``
(the per-entry loss weights of :func:`apcnn.losses.entry_weights`, None = all 1). With them the
per-sample penalties are per unit of loss weight (:func:`penalty_scale` counts the labels'
summed weights), so scaling all weights by one factor leaves every fit unchanged and the weights
only shift the balance between entries, not the overall regularisation; and the inner
cross-validation counts held-out labels right with the same weights.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, NamedTuple, TypeVar

import numpy as np

T = TypeVar("T")

RIDGE_LAMBDAS = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0)  #: per-sample ridge weights tried per attribute
INNER_FOLDS = 3


def scores(x: np.ndarray, W: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """(N, M) scores ``x_m(i)ᵀ w_m + b_m`` for shared (N, D) or attribute-specific (N, M, D) x,
    W (D, M), bias (M,): the linear layer on fixed features, written once for NumPy (the torch
    one is :class:`apcnn.models.latent.LatentTaskLayer`)."""
    return (x @ W if x.ndim == 2 else np.einsum("nmd,dm->nm", x, W)) + bias


def ridge_path(
    x: np.ndarray,
    y: np.ndarray,
    mask: np.ndarray,
    lambdas: Sequence[float],
    sample_weights: np.ndarray | None = None,
) -> Iterator[tuple[float, np.ndarray, np.ndarray]]:
    """Independent squared-hinge SVMs with bias for each per-sample ridge weight λ in
    ``lambdas``, strongest first: yields (λ, W (D, M), bias (M,)). ``sample_weights`` (N, M):
    per-entry loss weights (module docstring).

    The problem is separable over attributes, so one solve (``fit_latent`` with S = I, i.e.
    ``fit_independent``) fits all of them; each solve starts from the previous solution. A 1e-4
    relative KKT tolerance: decisions settle long before that (measured).
    """
    from .solvers import fit_latent

    eye = np.eye(y.shape[1], dtype=x.dtype)
    L, b = None, np.zeros(y.shape[1], dtype=x.dtype)
    for lam in sorted({float(v) for v in lambdas}, reverse=True):
        scaled = solver_penalties(mask, sample_weights=sample_weights, lam=lam)["lam"]
        L, b = fit_latent(
            x, y, eye, 0.0, scaled, mask, L0=L, bias=b, tol=1e-4, sample_weights=sample_weights
        )
        yield lam, L, b


def ridge_fit(
    x: np.ndarray,
    y: np.ndarray,
    mask: np.ndarray,
    lams: Sequence[float] | np.ndarray,
    sample_weights: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Attribute m's SVM with its own per-sample ridge weight ``lams[m]``: (W (D, M), bias);
    ``sample_weights`` (N, M) as in :func:`ridge_path`."""
    lams = np.asarray(lams, dtype=float)
    W = np.zeros((x.shape[-1], y.shape[1]), dtype=x.dtype)
    bias = np.zeros(y.shape[1], dtype=x.dtype)
    for lam, w, b in ridge_path(x, y, mask, lams, sample_weights):
        cols = lams == lam
        W[:, cols], bias[cols] = w[:, cols], b[cols]
    return W, bias


def per_attribute_ridge(
    x: np.ndarray,
    y: np.ndarray,
    mask: np.ndarray,
    lambdas: Sequence[float] = RIDGE_LAMBDAS,
    *,
    seed: int = 0,
    sample_weights: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Independent squared-hinge SVMs, each attribute with its own ridge weight.

    For every per-sample weight λ in ``lambdas`` the attributes are fitted (:func:`ridge_path`)
    on ``INNER_FOLDS - 1`` inner folds of ``x`` and scored on the held-out one; attribute m keeps
    the λ_m with the most held-out labels right (ties: the larger λ), and is refitted on all of
    ``x`` with it. Returns (W (D, M), bias (M,), λ (M,)). With ``sample_weights`` (N, M) the
    fits weight each entry's loss and "most labels right" is the largest summed weight of the
    held-out labels right.
    """
    from .data.splits import kfold_indices

    lambdas = tuple(sorted(float(v) for v in lambdas))
    correct = np.zeros((len(lambdas), y.shape[1]))
    for train_rows, held_rows in kfold_indices(len(x), INNER_FOLDS, seed):
        tr, ho = np.asarray(train_rows), np.asarray(held_rows)
        sw_tr = None if sample_weights is None else sample_weights[tr]
        for lam, w, b in ridge_path(x[tr], y[tr], mask[tr], lambdas, sw_tr):
            right = (np.sign(scores(x[ho], w, b)) == y[ho]) & mask[ho]
            if sample_weights is not None:
                right = right * sample_weights[ho]
            correct[lambdas.index(lam)] += right.sum(axis=0)
    # the last maximum: among equally good weights the strongest regularisation
    best = np.asarray(lambdas)[len(lambdas) - 1 - np.argmax(correct[::-1], axis=0)]
    W, bias = ridge_fit(x, y, mask, best, sample_weights)
    return W, bias, best


def task_weights_from_ridge(lams: np.ndarray) -> np.ndarray:
    """c_m = (geometric mean of λ) / λ_m: under penalties of one shared strength, attribute m's
    loss weighted by c_m behaves as if regularised by its own λ_m (mean weight about 1)."""
    lams = np.asarray(lams, dtype=float)
    return pooled_ridge(lams) / lams


def check_task_weights(weights: Sequence[float], names: Sequence[str]) -> list[float]:
    """``mtl.task_weights`` as a list of floats, one per attribute of ``names`` (ConfigError
    naming the count otherwise)."""
    m = len(names)
    if len(weights) != m:
        from .config import ConfigError

        shown = ", ".join(names[:5]) + (", ..." if m > 5 else "")
        raise ConfigError(
            f"'mtl.task_weights' has {len(weights)} values; the dataset has {m} attributes "
            f"({shown})"
        )
    return [float(w) for w in weights]


def pooled_ridge(lams: np.ndarray, scale: float = 1.0) -> float:
    """One ridge weight for the shared L from per-attribute ones (``mtl.lam: auto``): the
    geometric mean of λ_m times ``scale``², λ_m having been chosen on features divided by
    ``scale`` (:func:`feature_scale`)."""
    return float(np.exp(np.log(np.asarray(lams, dtype=float)).mean())) * scale**2


def feature_scale(x: np.ndarray) -> float:
    """Mean over feature columns of their standard deviation (1.0 for constant features): the
    solvers and the λ grids expect ``x / feature_scale(x)``, features of unit scale."""
    return float(x.reshape(len(x), -1).std(axis=0).mean()) or 1.0


def linear_probe(
    x: np.ndarray,
    y: np.ndarray,
    mask: np.ndarray,
    *,
    seed: int = 0,
    lams: np.ndarray | None = None,
    sample_weights: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Independent squared-hinge SVMs on fixed features, each attribute with its own ridge
    weight (:func:`per_attribute_ridge`, or ``lams`` (M,) when given): (W (D, M), bias (M,),
    λ (M,)), W for the features as given.

    The λ grid is per labelled sample on features scaled to unit mean standard deviation, so one
    grid suits any backbone; W is scaled back. Identical per-attribute features (``(N, M, D)``
    with all x_m equal, e.g. fc tails at their identity start) are solved as shared ``(N, D)``.
    ``sample_weights`` (N, M): per-entry loss weights (module docstring).
    """
    if x.ndim == 3 and all(np.array_equal(x[:, 0], x[:, m]) for m in range(1, x.shape[1])):
        x = x[:, 0]
    scale = feature_scale(x)
    if lams is None:
        W, bias, lams = per_attribute_ridge(
            x / scale, y, mask, seed=seed, sample_weights=sample_weights
        )
    else:
        W, bias = ridge_fit(x / scale, y, mask, lams, sample_weights)
    return W / scale, bias, np.asarray(lams, dtype=float)


class RidgeCV(NamedTuple):
    """Per-attribute SVMs by cross-validated ridge weight (:func:`ridge_cv`)."""

    lams: np.ndarray  #: (M,) chosen per-sample ridge weights (features of unit scale)
    scale: float  #: the features' scale (:func:`feature_scale`)
    weights: np.ndarray  #: (D, M) SVM weights for the unscaled features
    bias: np.ndarray  #: (M,)


def ridge_cv(
    x: np.ndarray,
    y: np.ndarray,
    mask: np.ndarray,
    *,
    seed: int = 0,
    sample_weights: np.ndarray | None = None,
) -> RidgeCV:
    """:func:`linear_probe` on features ``x`` with the features' scale kept beside it: what
    training's ``mtl.lam: auto``, ``mtl.task_weights: auto`` and ``train.linear_probe`` use
    (with ``train.pos_weight: ratio``, weighted by the class weights ``sample_weights``)."""
    W, bias, lams = linear_probe(x, y, mask, seed=seed, sample_weights=sample_weights)
    return RidgeCV(lams=lams, scale=feature_scale(x), weights=W, bias=bias)


def _numpy(a: Any) -> np.ndarray:
    return np.asarray(a.cpu() if hasattr(a, "cpu") else a)


def penalty_scale(mask: Any, sample_weights: Any = None) -> float:
    """n = the mean number of labelled samples per attribute, for ``mask`` (N, M) (NumPy or
    torch). Configured penalties are per sample; eq. 2 sums its loss over samples, so the solvers
    get ``penalty * n``. With ``sample_weights`` (N, M) the loss sums weighted terms and n is
    the mean over attributes of the labelled entries' summed weights (equal to the plain count
    for all-one weights): penalties per unit of loss weight."""
    labelled = _numpy(mask)
    if sample_weights is None:
        return float(labelled.sum(axis=0).mean())
    weights = np.where(labelled.astype(bool), _numpy(sample_weights).astype(np.float64), 0.0)
    return float(weights.sum(axis=0).mean())


def solver_penalties(
    mask: Any, *, sample_weights: Any = None, **per_sample: float
) -> dict[str, float]:
    """Per-sample penalties (e.g. ``mu=, gamma=, lam=``) scaled to eq. 2 for the labels of
    ``mask`` (and their ``sample_weights``, passed to the solvers too): each times
    :func:`penalty_scale`. The only place where that scaling happens. Give the labels of every
    process's rows (the whole training split), not one shard's."""
    n = penalty_scale(mask, sample_weights)
    return {name: float(value) * n for name, value in per_sample.items()}


class Choice(NamedTuple):
    """The winner of :func:`choose_on_validation`."""

    score: float  #: its validation score
    candidate: Any  #: the hyperparameter value
    result: Any  #: what ``fit`` returned for it


def choose_on_validation(
    candidates: Iterable[T],
    fit: Callable[[T], Any],
    validate: Callable[[T, Any], float],
) -> Choice:
    """Fit every candidate (e.g. each mu of ``mtl.mu_grid``) and keep the one whose fit
    ``validate`` scores highest (ties: the first). ``validate(candidate, result)`` must
    score on data the fit never saw."""
    best: Choice | None = None
    for candidate in candidates:
        result = fit(candidate)
        score = float(validate(candidate, result))
        if best is None or score > best.score:
            best = Choice(score, candidate, result)
    if best is None:
        raise ValueError("choose_on_validation needs at least one candidate")
    return best


def auto_task_weights(
    x: np.ndarray,
    y: np.ndarray,
    mask: np.ndarray,
    *,
    seed: int = 0,
    sample_weights: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``mtl.task_weights: auto``: (weights c (M,), chosen λ (M,)) from the ridge weights of
    :func:`linear_probe` (:func:`task_weights_from_ridge`)."""
    _, _, lams = linear_probe(x, y, mask, seed=seed, sample_weights=sample_weights)
    return task_weights_from_ridge(lams), lams
