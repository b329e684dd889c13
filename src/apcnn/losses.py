"""Per-sample attribute losses of the multi-task model (pure functions over torch tensors).

Every function takes

* ``scores``: ``(N, M)`` tensor, ``f_m(i) = x_m(i)ᵀ L s_m (+ b_m)``;
* ``Y``: ``(N, M)`` labels in ``{-1, +1}`` (entries where ``mask`` is False may hold anything,
  NaN included: they are never read);
* ``mask``: ``(N, M)`` bool (True = labelled) or ``None`` (everything labelled); or the float
  0/1 mask of :func:`prepare_labels` together with its cleaned labels; such a float mask may
  also hold non-negative weights (each entry's loss, derivative and Bregman term is multiplied by
  its weight: the solvers' ``task_weights`` and ``sample_weights``).

Class-imbalance weights (``train.pos_weight: ratio``): :func:`positive_ratio_weights` gives
DeepMAR's per-attribute weights of the positive and negative class, :func:`entry_weights` turns
them into the ``(N, M)`` per-entry weights that :func:`masked_squared_hinge` and the solvers take.

With the margin ``z = y f`` the losses are

* ``"squared_hinge"`` (the paper, eq. 2): ``ℓ(z) = ½ max(0, 1 − z)²``, ``ℓ'(z) = −max(0, 1 − z)``.
  Smooth, ``ℓ''(z) ≤ 1``.
* ``"hinge"``: ``ℓ(z) = max(0, 1 − z)``, subgradient ``−1[z < 1]``. **Non-smooth**: it is offered
  for evaluation and for stochastic (sub)gradient training of networks; the proximal-gradient
  solvers of :mod:`apcnn.solvers` (FISTA, APG, SPGD) need a Lipschitz gradient and refuse it
  (use ``"squared_hinge"``, the paper's loss, or ``"logistic"``).
* ``"logistic"``: ``ℓ(z) = log(1 + e^{−z})``, ``ℓ'(z) = −σ(−z)``. Smooth, ``ℓ''(z) ≤ ¼``.

The total loss is ``Σ_{(i, m): mask[i, m]} ℓ(y_m(i) f_m(i))``; unlabelled entries contribute
nothing to the value and zero to the gradient ``∂/∂f_m(i) = y_m(i) ℓ'(y_m(i) f_m(i))``.
"""

from __future__ import annotations

import torch
from torch import Tensor

LOSSES: tuple[str, ...] = ("squared_hinge", "hinge", "logistic")

#: Upper bound of ``ℓ''`` for the smooth losses: the Lipschitz constant of ``ℓ'``.
CURVATURE: dict[str, float] = {"squared_hinge": 1.0, "logistic": 0.25}


def check_loss(kind: str, *, smooth: bool = False) -> str:
    """Return ``kind`` if it names a loss (a smooth one when ``smooth``), else raise ValueError."""
    if kind not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES} (got {kind!r})")
    if smooth and kind not in CURVATURE:
        raise ValueError(
            f"loss={kind!r} is non-smooth and the proximal-gradient solvers need a smooth loss; "
            "use loss='squared_hinge' (the paper's) or loss='logistic'"
        )
    return kind


def prepare_labels(Y: Tensor, mask: Tensor | None, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """``(y, m)``: labels with unlabelled entries set to +1 and the mask as 0/1 floats.

    Passing the pair back to the functions below as ``(Y, mask)`` skips their per-call
    preparation (a floating ``mask`` is taken to come with such clean labels), which matters in
    iterative solvers.
    """
    if mask is None:
        return Y.to(dtype), torch.ones(Y.shape, dtype=dtype, device=Y.device)
    m = mask.bool()
    return torch.where(m, Y.to(dtype), torch.ones((), dtype=dtype, device=Y.device)), m.to(dtype)


def _prepare(scores: Tensor, Y: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """Margins ``z = y f`` with unlabelled entries' labels replaced by +1, and a float mask."""
    if mask is not None and mask.dtype == scores.dtype and Y.dtype == scores.dtype:
        return Y, mask  # prepared by prepare_labels
    if mask is None:
        m = torch.ones_like(scores)
        y = Y.to(scores.dtype)
    else:
        m = mask.to(scores.dtype)
        y = torch.where(mask.bool(), Y.to(scores.dtype), torch.ones_like(scores))
    return y, m


def elementwise(
    scores: Tensor, Y: Tensor, mask: Tensor | None = None, kind: str = "squared_hinge"
) -> tuple[Tensor, Tensor]:
    """Per-entry losses and their derivatives w.r.t. the scores.

    Returns ``(losses, dscores)``, both ``(N, M)``: ``losses[i, m] = ℓ(y f)`` and
    ``dscores[i, m] = y ℓ'(y f)``, both exactly zero where ``mask`` is False.
    """
    check_loss(kind)
    y, m = _prepare(scores, Y, mask)
    z = y * scores
    if kind == "squared_hinge":
        # linear in m, so a weighted mask (solvers' task_weights) weights the loss
        r = torch.clamp(1.0 - z, min=0.0)
        rm = r * m
        return 0.5 * rm * r, -y * rm
    if kind == "hinge":
        r = 1.0 - z
        return torch.clamp(r, min=0.0) * m, -y * (r > 0).to(scores.dtype) * m
    # logistic: softplus(-z) is stable for large |z|; σ(−z) = 1 − σ(z)
    return torch.nn.functional.softplus(-z) * m, -y * torch.sigmoid(-z) * m


def loss_value(
    scores: Tensor, Y: Tensor, mask: Tensor | None = None, kind: str = "squared_hinge"
) -> Tensor:
    """Total loss ``Σ_{mask} ℓ(y f)`` as a 0-dim tensor."""
    return elementwise(scores, Y, mask, kind)[0].sum()


def loss_and_grad(
    scores: Tensor, Y: Tensor, mask: Tensor | None = None, kind: str = "squared_hinge"
) -> tuple[Tensor, Tensor]:
    """Total loss and its gradient w.r.t. the scores.

    Returns ``(value, dscores)``: ``value = Σ_{mask} ℓ(y f)`` (0-dim tensor) and
    ``dscores = ∂value/∂scores`` (``(N, M)``, zero on unlabelled entries; for ``"hinge"`` the
    subgradient with ``ℓ'(1) = 0``).
    """
    losses, d = elementwise(scores, Y, mask, kind)
    return losses.sum(), d


def squared_hinge(scores: Tensor, Y: Tensor, mask: Tensor | None = None) -> Tensor:
    """``Σ_{mask} ½ max(0, 1 − y f)²`` (the paper's loss)."""
    return loss_value(scores, Y, mask, "squared_hinge")


def hinge(scores: Tensor, Y: Tensor, mask: Tensor | None = None) -> Tensor:
    """``Σ_{mask} max(0, 1 − y f)``."""
    return loss_value(scores, Y, mask, "hinge")


def logistic(scores: Tensor, Y: Tensor, mask: Tensor | None = None) -> Tensor:
    """``Σ_{mask} log(1 + exp(−y f))``."""
    return loss_value(scores, Y, mask, "logistic")


def bregman(
    z_new: Tensor, z_old: Tensor, Y: Tensor, mask: Tensor | None = None, kind: str = "squared_hinge"
) -> Tensor:
    """Entrywise Bregman divergence ``ℓ(y z') − ℓ(y z) − y ℓ'(y z)(z' − z)`` (``(N, M)``, ≥ 0).

    Computed without the cancellation of subtracting loss values, so that it stays accurate when
    ``z' − z`` is tiny (the backtracking test of the solvers near an optimum). With
    ``a = 1 − y z'``, ``b = 1 − y z``, the squared hinge gives ``½(a₊ − b₊)² + b₊ max(0, −a)``;
    the logistic loss uses ``½ s(1−s) Δ² + s(1−s)(1−2s) Δ³/6`` (``s = σ(y z)``, ``Δ = y(z' − z)``)
    when ``|Δ| < 10⁻³`` and the direct formula otherwise. Zero where ``mask`` is False.
    """
    check_loss(kind)
    y, m = _prepare(z_old, Y, mask)
    if kind == "squared_hinge":
        a = 1.0 - y * z_new
        b = torch.clamp(1.0 - y * z_old, min=0.0)
        d = 0.5 * (torch.clamp(a, min=0.0) - b) ** 2 + b * torch.clamp(-a, min=0.0)
        return d * m
    mo, mn = y * z_old, y * z_new
    delta = mn - mo
    if kind == "hinge":
        d = torch.clamp(1.0 - mn, min=0.0) - torch.clamp(1.0 - mo, min=0.0) + (mo < 1) * delta
        return torch.clamp(d, min=0.0) * m
    s = torch.sigmoid(mo)
    curv = s * (1 - s)
    taylor = 0.5 * curv * delta**2 + curv * (1 - 2 * s) * delta**3 / 6
    sp = torch.nn.functional.softplus
    direct = sp(-mn) - sp(-mo) + torch.sigmoid(-mo) * delta
    d = torch.where(delta.abs() < 1e-3, taylor, direct)
    return torch.clamp(d, min=0.0) * m


def masked_squared_hinge(
    scores: Tensor,
    y: Tensor,
    mask: Tensor,
    n_labelled: Tensor | None = None,
    task_weights: Tensor | None = None,
    sample_weights: Tensor | None = None,
) -> Tensor:
    """Σ_{labelled} c_m w_im 1/2 max(0, 1 - y f)^2 / n_labelled. scores, y, mask: (B, M); c: (M,)
    ``task_weights`` (default 1); w: (B, M) ``sample_weights`` (default 1, e.g. the class
    weights of :func:`entry_weights`).

    ``n_labelled`` defaults to ``mask.sum()`` (the mean over this batch's labelled entries), or
    with ``sample_weights`` to their sum over the labelled entries (a weighted mean, so that the
    gradients keep the scale of the unweighted loss whatever the weights' scale); a
    data-parallel rank passes the count (or weight sum) of its whole global batch instead, so
    that the ranks' losses add up to the one-process loss.
    """
    weights = mask.to(scores.dtype)
    count = mask.sum()
    if sample_weights is not None:
        weights = weights * sample_weights.to(scores.dtype)
        count = weights.sum()
    if n_labelled is not None:
        count = n_labelled
    if task_weights is not None:
        weights = weights * task_weights  # elementwise is linear in a float mask
    total = loss_value(scores, y, weights, "squared_hinge")
    return total / torch.where(count > 0, count, torch.ones_like(count))  # an empty batch: 0


def positive_ratio_weights(Y: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """DeepMAR's class weights (Li, Chen & Huang, ACPR 2015; σ = 1): ``(pos_w, neg_w)``, both
    ``(M,)`` float64.

    With ``p_m`` the share of +1 among attribute m's labelled entries of ``Y`` ``(N, M)``
    (``{-1, +1}``; entries where ``mask`` ``(N, M)`` is False are never read)::

        pos_w[m] = exp(1 − p_m),   neg_w[m] = exp(p_m)

    so a rare positive class counts up to ``e`` times, a common negative one about 1. An
    attribute without labels gets ``pos_w = neg_w = 1``. Compute them on the training split's
    labels (all of them, not one process's shard) and expand with :func:`entry_weights`.
    """
    m = torch.ones(Y.shape, dtype=torch.bool, device=Y.device) if mask is None else mask.bool()
    pos = ((Y > 0) & m).sum(0).to(torch.float64)
    n = m.sum(0).to(torch.float64)
    has = n > 0
    p = torch.where(has, pos / n.clamp(min=1), torch.zeros_like(n))
    one = torch.ones_like(p)
    return torch.where(has, torch.exp(1.0 - p), one), torch.where(has, torch.exp(p), one)


def entry_weights(
    Y: Tensor, mask: Tensor | None, pos_w: Tensor, neg_w: Tensor, dtype: torch.dtype | None = None
) -> Tensor:
    """Per-entry weights ``(N, M)``: ``pos_w[m]`` where ``Y[i, m] = +1``, ``neg_w[m]`` where it is
    −1, and 0 where ``mask`` is False (unlabelled). ``pos_w``, ``neg_w``: ``(M,)`` (e.g. from
    :func:`positive_ratio_weights`); the result has ``dtype`` (default ``pos_w``'s) and lives on
    ``Y``'s device. These are the solvers' and :func:`masked_squared_hinge`'s ``sample_weights``.
    """
    dtype = dtype or pos_w.dtype
    pw, nw = pos_w.to(Y.device, dtype), neg_w.to(Y.device, dtype)
    w = torch.where(Y > 0, pw, nw)
    if mask is None:
        return w
    return torch.where(mask.bool(), w, torch.zeros((), dtype=dtype, device=Y.device))
