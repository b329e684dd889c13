"""Solvers for the multi-task latent model of Abdulnabi et al. (IEEE TMM 2015), eq. 2.

With ``W = L S`` (``L``: ``(D, K)`` latent tasks, ``S``: ``(K, M)`` combinations) and scores
``f_m(i) = x_m(i)ᵀ L s_m (+ b_m)``::

    F(L, S) = Σ_m Σ_{i: mask[i, m]} ℓ(y_m(i) f_m(i))
              + μ Σ_k Σ_g ‖S[k, g]‖₂ + γ ‖L‖₁ + λ ‖L‖_F²

``ℓ(z) = ½ max(0, 1 − z)²`` by default (see :mod:`apcnn.losses`). ``X`` is ``(N, M, D)``
(attribute-specific features, one CNN per attribute) or ``(N, D)`` (shared features); ``Y`` is
``(N, M)`` in ``{−1, +1}``; ``mask`` ``(N, M)`` bool, True = labelled; ``groups`` a list of lists of
attribute indices (a partition of ``range(M)`` unless ``overlapping=True``).

Public functions take NumPy arrays or torch tensors; the result has the kind, dtype and device of
``X`` (computation in float64 for float64 input, float32 otherwise).

* :func:`objective` — ``F`` (optionally with a per-attribute bias).
* :func:`fit_combination` — step (a), ``S`` given ``L``: FISTA with exact block soft-thresholding
  (disjoint groups; per-group step sizes, monotone with adaptive restart) or SPGD (Nesterov
  smoothing of the group norm with continuation; needed for overlapping groups). The projections
  ``P_m = X_m L`` are computed once per call.
* :func:`fit_latent` — step (b), ``L`` given ``S``: monotone APG with ℓ1 prox, ``λ‖L‖_F²`` in the
  smooth part.
* :func:`fit_alternating` — Algorithm 1 (alternate (a) and (b) until the relative decrease of ``F``
  falls below ``tol``); :func:`fit_independent` and :func:`init_from_w` build the initialisation.
* :func:`optimality_gap_S`, :func:`optimality_gap_L` — KKT certificates (max violation of the
  subgradient optimality conditions).

``task_weights`` (every solver function, keyword): ``(M,)`` positive weights ``c_m`` multiplying
attribute m's loss term, ``Σ_m c_m Σ_i ℓ(…)``. Beyond eq. 2: with the shared penalties it gives
each attribute its own regularisation strength (for one attribute alone, ``c_m`` times the loss
is the same problem as the penalties divided by ``c_m``), e.g. from per-attribute validation.

``sample_weights`` (the same functions, keyword): ``(N, M)`` weights ``w_im ≥ 0`` multiplying
entry (i, m)'s loss term, ``Σ_m c_m Σ_{i: mask[i, m]} w_im ℓ(…)`` (ignored where ``mask`` is False;
``None`` = all 1, and all-ones weights give the unweighted iterates bit for bit), e.g. the class
weights of ``train.pos_weight: ratio`` (:func:`apcnn.losses.positive_ratio_weights`,
:func:`apcnn.losses.entry_weights`). They are rows of the data: under data parallelism each
process passes the rows of its own shard, like ``Y`` and ``mask``. The penalties are not rescaled
here (:func:`apcnn.selection.solver_penalties` scales per-sample penalties by the weighted count).

The proximal-gradient methods need a smooth loss: ``loss="hinge"`` is refused by the solvers
(``objective`` evaluates it).
"""

from __future__ import annotations

import functools
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from apcnn.features_store import FactoredFeatures
from apcnn.losses import CURVATURE, bregman, check_loss, elementwise, prepare_labels
from apcnn.regularizers import (
    GroupIndex,
    check_groups,
    frobenius_sq,
    group_norm,
    group_norms,
    prox_group,
    prox_l1,
    smoothed_group_norm,
    smoothing_gap_bound,
    smoothing_lipschitz,
)

__all__ = [
    "AlternatingResult",
    "SolverInfo",
    "SolverProgress",
    "fit_alternating",
    "fit_combination",
    "fit_independent",
    "fit_latent",
    "init_from_w",
    "objective",
    "optimality_gap_L",
    "optimality_gap_S",
]

METHODS = ("fista", "spgd")

#: Problems whose ``X`` has at most this many entries run on one CPU thread: their matrix
#: products are microseconds long, and intra-op threading only adds synchronisation (which costs
#: milliseconds per product on a loaded machine). The previous thread count is restored after.
SMALL_PROBLEM = 200_000

#: ``(N, M, D)`` arrays with more entries than this are never copied attribute-major (that copy
#: would double the memory): the L-step's products read them in chunks of rows of about
#: ``_CHUNK_BYTES`` instead. At most this size (every run of the Clothing recipe) the copy makes
#: those products faster and the results are those of earlier versions bit for bit.
COPY_LIMIT = 2**26
_CHUNK_BYTES = 64 * 2**20

#: Per-iteration shrink factor of the backtracked Lipschitz estimates (steps grow again where the
#: local curvature allows it; backtracking doubles them back when not).
_SHRINK = 0.9

#: Sums a tensor over the processes that hold the other rows of the data (an all-reduce, e.g.
#: :func:`apcnn.distributed.all_reduce_sum`); ``None`` when one process holds all rows.
SampleReduce = Callable[[Tensor], Tensor] | None


def _sum_samples(reduce: SampleReduce, local: list[Tensor]) -> list[Tensor]:
    """Per-process sums over samples -> sums over all samples, in one collective call.

    Everything else in the solvers (proximal steps, step sizes, stopping tests) is computed from
    these sums, so every process takes the same steps and ends with the same ``L``, ``S``.
    """
    if reduce is None:
        return local
    flat = reduce(torch.cat([t.reshape(-1) for t in local]))
    parts = flat.split([t.numel() for t in local])
    return [part.view_as(t) for part, t in zip(parts, local, strict=True)]


def _threads_by_size(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(X: Any, *args: Any, **kwargs: Any) -> Any:
        lazy = isinstance(X, Tensor | FactoredFeatures)
        n = X.numel() if lazy else np.size(X)
        on_cpu = not lazy or X.device.type == "cpu"
        old = torch.get_num_threads()
        if n > SMALL_PROBLEM or old == 1 or not on_cpu:
            return fn(X, *args, **kwargs)
        torch.set_num_threads(1)
        try:
            return fn(X, *args, **kwargs)
        finally:
            torch.set_num_threads(old)

    return wrapper


@dataclass
class SolverInfo:
    """What a sub-solver did.

    Attributes:
        n_iter: proximal-gradient iterations (all SPGD stages together).
        converged: the KKT violation fell below ``tol ×`` scale (for SPGD: the continuation ended
            with a smoothing error below ``tol`` relative) before ``max_iter``.
        objective: final objective of the sub-problem (eq. 2 terms that depend on the variable,
            with the loss over all attributes).
        gap: final KKT violation (absolute; for SPGD the gradient norm of the smoothed problem).
        scale: the gradient scale ``max(‖∇f(0)‖_∞, penalty)`` that ``tol`` is relative to.
        stages: SPGD continuation stages (1 for FISTA/APG).
        start_gap: KKT violation at the start point (absolute, like ``gap``).
        budget: ``"time"`` or ``"iterations"`` when the call's budget
            (:func:`fit_alternating`'s ``time_budget_s`` / ``iter_budget``) stopped it, else "".
    """

    n_iter: int
    converged: bool
    objective: float
    gap: float
    scale: float
    stages: int = 1
    start_gap: float = math.nan
    budget: str = ""

    @property
    def rel_gap(self) -> float:
        """``gap / scale``: the KKT violation relative to the gradient scale (``tol`` bounds it)."""
        return self.gap / self.scale if self.scale > 0 else math.inf


@dataclass
class AlternatingResult:
    """Result of :func:`fit_alternating`.

    Attributes:
        L: ``(D, K)`` latent task matrix.
        S: ``(K, M)`` combination matrix.
        bias: ``(M,)`` per-attribute bias, or None when fitted without bias.
        history: objective after initialisation (``history[0]``) and after each half-step
            ((a) then (b)); non-increasing.
        n_iter: outer iterations done.
        converged: the stopping rule (relative decrease over one outer iteration < ``tol``) fired
            before ``max_outer``.
        infos: per half-step :class:`SolverInfo`.
        stop: why it stopped: ``"tol"`` (the relative-decrease rule), ``"kkt"`` (``gap_tol``),
            ``"max_outer"``, ``"time_budget"``, ``"iter_budget"`` or ``"callback"``.
        seconds: wall time of the call.
    """

    L: Any
    S: Any
    bias: Any
    history: list[float]
    n_iter: int
    converged: bool
    infos: list[SolverInfo] = field(default_factory=list)
    stop: str = ""
    seconds: float = 0.0


@dataclass
class SolverProgress:
    """One progress report of :func:`fit_alternating` (its ``report`` hook).

    ``kind="outer"``: after outer iteration ``iteration`` (of at most ``max_outer``), with the
    objective ``F``, its relative decrease over the iteration, ``gap`` (the larger relative KKT
    violation of the two half-steps, each for its own sub-problem: ``SolverInfo.rel_gap``) and
    ``eta_s``, an estimate of the seconds left (None before the first iteration ends). The
    estimate assumes the relative decrease keeps shrinking by its last ratio until it reaches
    ``tol``, at the mean time per outer iteration so far, capped by ``max_outer`` and by the time
    budget. ``kind="inner"``: a heartbeat from inside a half-step that has run for a while
    (``phase`` = ``"S-step"``, ``"L-step"`` or ``"init"``, ``inner_iteration``, ``gap`` =
    its last relative KKT violation), at most every ``progress_every_s`` seconds.
    """

    kind: str
    iteration: int
    max_outer: int
    elapsed_s: float
    objective: float = math.nan
    rel_decrease: float = math.nan
    gap: float = math.nan
    eta_s: float | None = None
    phase: str = ""
    inner_iteration: int = 0
    inner_iterations: int = 0  # proximal-gradient iterations of this outer iteration

    def line(self) -> str:
        """One human-readable line (what :func:`apcnn.training.steps.fit_mtl` logs)."""
        if self.kind == "inner":
            return (
                f"outer {self.iteration}/{self.max_outer} {self.phase} iteration "
                f"{self.inner_iteration}: gap {self.gap:.2e}, {self.elapsed_s:.0f} s elapsed"
            )
        eta = "?" if self.eta_s is None else f"{self.eta_s:.0f} s"
        return (
            f"outer {self.iteration}/{self.max_outer}: objective {self.objective:.6g}, "
            f"rel. decrease {self.rel_decrease:.2e}, gap {self.gap:.2e}, "
            f"{self.inner_iterations} inner iterations, {self.elapsed_s:.0f} s elapsed, "
            f"about {eta} left"
        )


class _Budget:
    """The limits of one :func:`fit_alternating` call, shared by its sub-solvers.

    ``deadline``: ``time.monotonic()`` value after which every solver stops at its next
    iteration; ``iters_left``: proximal-gradient iterations left (None: unbounded);
    ``heartbeat(phase, iteration, gap)`` is called from inside the sub-solvers at most every
    ``every`` seconds. ``exhausted`` names the limit that stopped the call. Data parallel
    (``reduce``): whether time is up is summed over the processes at every check, so that all
    stop at the same iteration (one more tiny all-reduce per iteration, only with a deadline).
    """

    def __init__(
        self,
        deadline: float | None = None,
        iters: int | None = None,
        heartbeat: Callable[[str, int, float], Any] | None = None,
        every: float = 10.0,
        reduce: SampleReduce = None,
    ) -> None:
        self.deadline, self.iters_left = deadline, iters
        self.heartbeat, self.every = heartbeat, every
        self.reduce = reduce
        self.last = time.monotonic()
        self.phase = ""
        self.exhausted = ""

    def _time_up(self, now: float) -> bool:
        assert self.deadline is not None
        up = now >= self.deadline
        if self.reduce is not None:
            up = float(self.reduce(torch.tensor([float(up)], dtype=torch.float64))[0]) > 0
        if up:
            self.exhausted = self.exhausted or "time"
        return up

    def max_iter(self, max_iter: int) -> int:
        return max_iter if self.iters_left is None else max(1, min(max_iter, self.iters_left))

    def spend(self, n: int) -> None:
        if self.iters_left is not None:
            self.iters_left -= n
            if self.iters_left <= 0:
                self.exhausted = self.exhausted or "iterations"

    def out_of_time(self) -> bool:
        if self.deadline is not None and not self.exhausted:
            self._time_up(time.monotonic())
        return self.exhausted != ""

    def tick(self, it: int, gap: float, scale: float) -> bool:
        """Called once per sub-solver iteration: heartbeat when due; True = stop (time is up)."""
        now = time.monotonic()
        if self.heartbeat is not None and now - self.last >= self.every:
            self.last = now
            self.heartbeat(self.phase, it, gap / scale if scale > 0 else math.inf)
        return self.deadline is not None and self._time_up(now)


# ----------------------------------------------------------------------------- conversion


@dataclass
class _Ctx:
    """Array kind, dtype and device of the output (those of ``X``) and the working dtype."""

    torch_out: bool
    out_dtype: Any
    device: torch.device
    dtype: torch.dtype

    def t(self, a: Any, name: str, *, dtype: torch.dtype | None = None) -> Tensor:
        if isinstance(a, Tensor):
            t = a.detach()
        else:
            try:
                t = torch.as_tensor(np.asarray(a))
            except (TypeError, ValueError) as exc:
                raise TypeError(f"{name} must be a NumPy array or torch tensor ({exc})") from None
        if t.dtype == torch.bool and dtype is None:
            dtype = self.dtype
        return t.to(device=self.device, dtype=dtype or self.dtype)

    def out(self, t: Tensor | None) -> Any:
        if t is None:
            return None
        if self.torch_out:
            return t.to(self.out_dtype)
        return t.detach().cpu().numpy().astype(self.out_dtype, copy=False)


def _context(X: Any) -> tuple[_Ctx, Any]:
    if isinstance(X, FactoredFeatures):
        work = torch.float64 if X.dtype == torch.float64 else torch.float32
        out_dtype = {torch.float64: np.float64, torch.float32: np.float32}.get(X.dtype, np.float32)
        if X.numpy:
            ctx = _Ctx(False, np.dtype(out_dtype), X.device, work)
        else:
            ctx = _Ctx(True, X.dtype, X.device, work)
        return ctx, X.to(work)
    if isinstance(X, Tensor):
        x = X.detach()
        out = x.dtype if x.dtype.is_floating_point else torch.float64
        work = torch.float64 if x.dtype == torch.float64 else torch.float32
        if not x.dtype.is_floating_point:
            work = torch.float64
        ctx = _Ctx(True, out, x.device, work)
    else:
        a = np.asarray(X)
        if a.dtype == object or not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
            raise TypeError(
                f"X must be a numeric NumPy array or torch tensor (got dtype {a.dtype})"
            )
        out = a.dtype if np.issubdtype(a.dtype, np.floating) else np.dtype(np.float64)
        work = torch.float32 if a.dtype in (np.float32, np.float16) else torch.float64
        ctx = _Ctx(False, out, torch.device("cpu"), work)
        x = torch.as_tensor(a)
    return ctx, x.to(ctx.dtype)


# ----------------------------------------------------------------------------- validation


def _finite(t: Tensor, name: str, fix: str = "remove or impute them") -> None:
    # a finite sum proves there is no NaN/inf (fast path); otherwise check entrywise
    if t.numel() and not math.isfinite(float(t.sum())) and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or inf; {fix}")


def _penalty(value: Any, name: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number >= 0 (got {value!r})") from None
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"{name} must be a finite number >= 0 (got {value!r})")
    return v


def _positive(value: Any, name: str, *, integer: bool = False) -> Any:
    bad = isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating)
    if bad or not value > 0 or (integer and int(value) != value):
        kind = "a positive integer" if integer else "a number > 0"
        raise ValueError(f"{name} must be {kind} (got {value!r})")
    return int(value) if integer else float(value)


@dataclass
class _Data:
    """Validated problem data on the working device/dtype.

    ``X`` is ``(N, D)`` (shared), ``(N, M, D)``, or a :class:`FactoredFeatures` (its own
    products). For ``(N, M, D)`` up to :data:`COPY_LIMIT` entries, the attribute-major copy
    ``(M, N, D)`` that the L-step's batched products want is made on first use (:meth:`xm`);
    larger arrays are read in place, by chunks of rows (no copy).
    """

    X: Any
    Y: Tensor
    mask: Tensor
    shared: bool
    N: int
    M: int
    D: int
    empty: Tensor
    yc: Tensor  # labels with +1 where unlabelled (losses.prepare_labels)
    mf: Tensor  # mask as 0/1 floats
    reduce: SampleReduce = None  # sums over the processes holding other rows (None: one process)
    _xm: Tensor | None = None

    def xm(self) -> Tensor:
        if self._xm is None:
            self._xm = self.X.permute(1, 0, 2).contiguous()
        return self._xm

    def _chunks(self) -> Any:
        step = max(1, _CHUNK_BYTES // (self.X.element_size() * self.M * self.D))
        return (slice(s, s + step) for s in range(0, self.N, step))

    def scores_W(self, W: Tensor) -> Tensor:
        """``(N, M)`` scores ``x_m(i)ᵀ w_m`` for ``W`` ``(D, M)``."""
        if self.shared:
            return self.X @ W
        if isinstance(self.X, FactoredFeatures):
            return self.X.scores(W)
        if self.X.numel() > COPY_LIMIT:
            return torch.cat([torch.einsum("nmd,dm->nm", self.X[c], W) for c in self._chunks()])
        return torch.bmm(self.xm(), W.T.unsqueeze(-1)).squeeze(-1).T

    def XtG(self, G: Tensor) -> Tensor:
        """``(D, M)``: column m is ``Σ_i G[i, m] x_m(i)``."""
        if self.shared:
            return self.X.T @ G
        if isinstance(self.X, FactoredFeatures):
            return self.X.XtG(G)
        if self.X.numel() > COPY_LIMIT:
            return sum(torch.einsum("nm,nmd->dm", G[c], self.X[c]) for c in self._chunks())
        return torch.bmm(G.T.unsqueeze(1), self.xm()).squeeze(1).T  # row-vector form

    def project(self, L: Tensor) -> Tensor:
        """``P_m = X_m L``: ``(N, K)`` (shared) or ``(M, N, K)`` (attribute-specific); one GEMM."""
        if self.shared:
            return self.X @ L
        if isinstance(self.X, FactoredFeatures):
            return self.X.project(L)
        N, M, D = self.X.shape
        P = (self.X.reshape(N * M, D) @ L).reshape(N, M, L.shape[1])
        return P.permute(1, 0, 2).contiguous()


def _task_weights(ctx: _Ctx, weights: Any, M: int) -> Tensor:
    c = ctx.t(weights, "task_weights")
    if c.shape != (M,):
        raise ValueError(f"task_weights must have shape (M,) = ({M},); got {tuple(c.shape)}")
    if not bool(torch.isfinite(c).all()) or not bool((c > 0).all()):
        raise ValueError("task_weights must be finite and > 0 (one weight per attribute)")
    return c


def _sample_weights(ctx: _Ctx, weights: Any, m: Tensor) -> Tensor:
    """``(N, M)`` per-entry loss weights, checked where ``m`` (the boolean mask) is True and set
    to 0 elsewhere (never read there, NaN included)."""
    w = ctx.t(weights, "sample_weights")
    if tuple(w.shape) != tuple(m.shape):
        raise ValueError(
            f"sample_weights must have the shape of Y (N, M) = {tuple(m.shape)} (this process's "
            f"rows); got {tuple(w.shape)}"
        )
    w = torch.where(m, w, torch.zeros((), dtype=w.dtype, device=w.device))
    bad = ~torch.isfinite(w) | (w < 0)
    if bool(bad.any()):
        i, j = (int(v) for v in torch.nonzero(bad)[0])
        raise ValueError(
            f"sample_weights[{i}, {j}] = {float(w[i, j])}: sample weights must be finite and "
            ">= 0 where mask is True (e.g. apcnn.losses.entry_weights)"
        )
    return w


def _data(
    ctx: _Ctx,
    x: Tensor,
    Y: Any,
    mask: Any,
    reduce: SampleReduce = None,
    task_weights: Any = None,
    sample_weights: Any = None,
) -> _Data:
    if x.ndim not in (2, 3):
        raise ValueError(
            "X must be (N, D) shared or (N, M, D) attribute-specific features; "
            f"got shape {tuple(x.shape)}"
        )
    if not isinstance(x, FactoredFeatures):  # checked when it was built
        _finite(x, "X", "clean or impute the features")
    y = ctx.t(Y, "Y")
    if y.ndim != 2 or y.shape[0] != x.shape[0] or (x.ndim == 3 and y.shape[1] != x.shape[1]):
        want = (
            f"(N, M) = ({x.shape[0]}, {x.shape[1]})"
            if x.ndim == 3
            else f"(N, M) with N = {x.shape[0]}"
        )
        raise ValueError(
            f"Y must have shape {want} to match X {tuple(x.shape)}; got {tuple(y.shape)}"
        )
    N, M = y.shape
    if mask is None:
        m = torch.ones(N, M, dtype=torch.bool, device=ctx.device)
    else:
        mt = mask.detach() if isinstance(mask, Tensor) else torch.as_tensor(np.asarray(mask))
        mt = mt.to(ctx.device)
        if tuple(mt.shape) != (N, M):
            raise ValueError(f"mask must have the shape of Y {(N, M)}; got {tuple(mt.shape)}")
        if mt.dtype != torch.bool:
            if not bool(((mt == 0) | (mt == 1)).all()):  # NaN fails this too
                raise ValueError("mask must be boolean (True = labelled) or 0/1")
            mt = mt != 0
        m = mt
    ok = (y == 1) | (y == -1) | ~m
    if not bool(ok.all()):
        i, j = (int(v) for v in torch.nonzero(~ok)[0])
        raise ValueError(
            f"Y[{i}, {j}] = {float(y[i, j])} is not in {{-1, +1}} where mask is True; encode "
            "labels as -1/+1 and mark missing labels False in mask"
        )
    # an attribute is empty when no process has a label for it
    empty = _sum_samples(reduce, [m.sum(0).to(ctx.dtype)])[0] == 0
    yc, mf = prepare_labels(y, m, ctx.dtype)
    if task_weights is not None:
        # attribute m's loss counts c_m times: mf holds c_m on its labelled entries
        mf = mf * _task_weights(ctx, task_weights, M)
    if sample_weights is not None:
        # entry (i, m)'s loss counts w_im times (times c_m): mf holds c_m w_im where labelled
        mf = mf * _sample_weights(ctx, sample_weights, m)
    return _Data(x, y, m, x.ndim == 2, N, M, x.shape[-1], empty, yc, mf, reduce)


def _total_loss(data: _Data, z: Tensor, kind: str) -> Tensor:
    """``Σ_{labelled i, m} ℓ(y z)`` over the rows of every process (0-dim)."""
    lo, _ = elementwise(z, data.yc, data.mf, kind)
    return _sum_samples(data.reduce, [lo.sum().reshape(1)])[0][0]


def _matrix(ctx: _Ctx, a: Any, name: str, shape: tuple[int, int], what: str) -> Tensor:
    t = ctx.t(a, name)
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} must have shape {what} = {shape}; got {tuple(t.shape)}")
    _finite(t, name)
    return t


def _groups(groups: Any, M: int, overlapping: bool, device: torch.device) -> GroupIndex:
    if groups is None:
        raise ValueError("groups must be a list of lists of attribute indices (got None)")
    if isinstance(groups, GroupIndex):
        if not overlapping and not groups.disjoint:
            raise ValueError("groups overlap; pass overlapping=True (with method='spgd')")
        return groups.to(device)
    return GroupIndex.from_groups(check_groups(groups, M, overlapping=overlapping), M, device)


def _warn_empty(data: _Data, stacklevel: int = 3) -> None:
    if bool(data.empty.any()):
        idx = torch.nonzero(data.empty).flatten().tolist()
        warnings.warn(
            f"attribute(s) {idx} have no labelled sample (mask column all False); their columns "
            "of S (and bias) are set to zero",
            UserWarning,
            stacklevel=stacklevel,
        )


def _bias_arg(ctx: _Ctx, bias: Any, M: int) -> Tensor | None:
    """None/False: no bias; True: start from zeros; array: start from it."""
    if bias is None or bias is False:
        return None
    if bias is True:
        return torch.zeros(M, dtype=ctx.dtype, device=ctx.device)
    t = ctx.t(bias, "bias")
    if tuple(t.shape) != (M,):
        raise ValueError(
            f"bias must be True, None or an array of shape (M,) = ({M},); got {tuple(t.shape)}"
        )
    _finite(t, "bias")
    return t


def _fixed_bias(ctx: _Ctx, bias: Any, M: int) -> Tensor | None:
    """A given bias (objective, certificates): None/False or an ``(M,)`` array."""
    if bias is True:
        raise ValueError("bias must be None or an array of shape (M,) here (got True)")
    return _bias_arg(ctx, bias, M)


def _method(method: str, gi: GroupIndex) -> str:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS} (got {method!r})")
    if method == "fista" and not gi.disjoint:
        raise ValueError(
            "overlapping groups need method='spgd' (FISTA's block soft-thresholding prox is exact "
            "only for disjoint groups)"
        )
    return method


# ----------------------------------------------------------------------------- APG engine


@dataclass
class _Problem:
    """``min_x Σ_b [loss_b(A x) + extra_b(x) + penalty_b(x)]``, separable over blocks ``b``.

    ``x`` is a list of tensors; ``A`` (``forward``) is linear, mapping ``x`` to ``(N, M)`` scores;
    each score column belongs to one block (``col_block``); ``block_map[j]`` maps the entries of
    ``x[j]`` to blocks (broadcastable index tensor). ``extra`` is a smooth convex term with a known
    Lipschitz constant ``extra_lip`` (``λ‖L‖_F²``: ``2λ``; ``μΩ_η``: ``μ² max_m #{g ∋ m}/η``).
    """

    forward: Callable[[list[Tensor]], Tensor]
    adjoint: Callable[[Tensor], list[Tensor]]
    Y: Tensor
    mask: Tensor
    kind: str
    col_block: Tensor
    n_blocks: int
    block_map: list[Tensor]
    block_sum: Callable[[list[Tensor]], Tensor]
    prox: Callable[[list[Tensor], Tensor], list[Tensor]]
    penalty: Callable[[list[Tensor]], Tensor]
    kkt: Callable[[list[Tensor], list[Tensor]], float]
    extra: Callable[[list[Tensor]], tuple[Tensor, list[Tensor]]] | None = None
    extra_lip: float = 0.0
    reduce: SampleReduce = None  # see _sum_samples


def _smooth(
    pb: _Problem, z: Tensor, x: list[Tensor], need_grad: bool
) -> tuple[Tensor, list[Tensor] | None]:
    lo, dz = elementwise(z, pb.Y, pb.mask, pb.kind)
    # sums over samples (columns' losses and the gradient): one all-reduce across processes
    local = [lo.sum(0), *pb.adjoint(dz)] if need_grad else [lo.sum(0)]
    summed = _sum_samples(pb.reduce, local)
    vals = torch.zeros(pb.n_blocks, dtype=z.dtype, device=z.device)
    vals.index_add_(0, pb.col_block, summed[0])
    grad = summed[1:] if need_grad else None
    if pb.extra is not None:
        ev, eg = pb.extra(x)
        vals = vals + ev
        if grad is not None:
            grad = [g + e for g, e in zip(grad, eg, strict=True)]
    return vals, grad


def _grad_scale(pb: _Problem, like: list[Tensor], weight: float) -> float:
    """``max(‖∇f(0)‖_∞, weight)``: the scale the KKT tolerance is relative to."""
    zeros = [torch.zeros_like(t) for t in like]
    _, g = _smooth(pb, pb.forward(zeros), zeros, True)
    gmax = max(float(t.abs().max()) if t.numel() else 0.0 for t in g)
    return max(gmax, weight, torch.finfo(like[0].dtype).tiny)


def _apg(
    pb: _Problem,
    x0: list[Tensor],
    lip: Tensor,
    tol: float,
    max_iter: int,
    scale: float,
    check_every: int = 10,
    budget: _Budget | None = None,
) -> tuple[list[Tensor], SolverInfo]:
    """Monotone FISTA with per-block step sizes, backtracking and adaptive restart.

    Per block ``b``: ``x⁺ = prox(y − ∇f(y)/L_b)`` with ``L_b = L_b^loss + extra_lip``.
    ``L_b^loss`` starts from ``lip`` (power-iteration estimate), shrinks by ``_SHRINK`` every
    iteration and doubles until the loss's Bregman divergence ``D_ℓ(x⁺, y) ≤ L_b^loss ‖x⁺ − y‖²/2``
    (computed entrywise in score space, accurate near the optimum); the momentum follows
    ``t_{k+1}(t_{k+1} − 1) = (L_{k+1}/L_k) t_k²`` for varying steps (Scheinberg, Goldfarb & Bai
    2014). A step that increases the block objective is rejected (``x`` kept, momentum reset) and
    momentum restarts when ``⟨y − x⁺, x⁺ − x⟩ > 0`` (O'Donoghue & Candès 2015), so the objective
    never increases. Scores are linear in ``x`` and carried along: an iteration costs one
    ``forward`` and one ``adjoint`` (plus one ``forward`` per backtracking step). Stops when the
    KKT violation (checked every ``check_every`` iterations) is ``≤ tol · scale``, or when it has
    not improved for 30 checks (rounding level), or when ``budget`` says time is up (checked
    every iteration; a heartbeat goes out from there). The end point is compared with the start
    and the better one is returned.
    """
    dtype = x0[0].dtype
    eps = torch.finfo(dtype).eps
    thr = max(tol, 100 * eps) * scale
    x = [t.clone() for t in x0]
    zx = pb.forward(x)
    fx, gx = _smooth(pb, zx, x, True)
    Fx = fx + pb.penalty(x)
    F_start = float(Fx.sum())
    gap = gap0 = best_gap = pb.kkt(x, gx)
    if gap <= thr:
        return x, SolverInfo(0, True, F_start, gap, scale, start_gap=gap0)
    patience = 30
    Lb = lip.clone()
    floor = lip * 1e-4
    t = torch.ones(pb.n_blocks, dtype=dtype, device=zx.device)
    y, zy, gy = x, zx, gx
    stall, converged, it = 0, False, 0
    for it in range(1, max_iter + 1):
        L_prev = Lb + pb.extra_lip
        Lb = torch.maximum(Lb * _SHRINK, floor)
        for _ in range(64):
            Lt = Lb + pb.extra_lip
            steps = [(1.0 / Lt)[bm] for bm in pb.block_map]
            xn = pb.prox([a - s * g for a, s, g in zip(y, steps, gy, strict=True)], Lt)
            zn = pb.forward(xn)
            dist = pb.block_sum([(a - b) ** 2 for a, b in zip(xn, y, strict=True)])
            div_cols = _sum_samples(pb.reduce, [bregman(zn, zy, pb.Y, pb.mask, pb.kind).sum(0)])
            div = torch.zeros_like(Lb).index_add_(0, pb.col_block, div_cols[0])
            bad = div > 0.5 * Lb * dist * (1 + 1e-9)
            if not bool(bad.any()):
                break
            Lb = torch.where(bad, 2 * Lb, Lb)
        Lt = Lb + pb.extra_lip
        fn, _ = _smooth(pb, zn, xn, False)
        Fn = fn + pb.penalty(xn)
        worse = Fn > Fx + 4 * eps * Fx.abs()  # rounding-level increases are not rejections
        turn = pb.block_sum([(a - b) * (b - c) for a, b, c in zip(y, xn, x, strict=True)]) > 0
        restart = worse | turn
        x_new = [torch.where(worse[bm], a, b) for bm, a, b in zip(pb.block_map, x, xn, strict=True)]
        z_new = torch.where(worse[pb.col_block], zx, zn)
        t_next = (1 + torch.sqrt(1 + 4 * (Lt / L_prev) * t * t)) / 2
        beta = torch.where(restart, torch.zeros_like(t), (t - 1) / t_next)
        t = torch.where(restart, torch.ones_like(t), t_next)
        y = [a + beta[bm] * (a - b) for bm, a, b in zip(pb.block_map, x_new, x, strict=True)]
        zy = z_new + beta[pb.col_block] * (z_new - zx)
        x, zx, Fx = x_new, z_new, torch.where(worse, Fx, Fn)
        _, gy = _smooth(pb, zy, y, True)
        if it % check_every == 0 or it == max_iter:
            gx = gy if bool((beta == 0).all()) else _smooth(pb, zx, x, True)[1]
            gap = pb.kkt(x, gx)
            if gap <= thr:
                converged = True
                break
            stall = stall + 1 if gap >= 0.999 * best_gap else 0
            best_gap = min(best_gap, gap)
            if stall >= patience:  # no progress at rounding level: give up
                break
        if budget is not None and budget.tick(it, gap, scale):
            break
    stopped = budget.exhausted if budget is not None and not converged else ""
    F_end = float(Fx.sum())
    if F_end > F_start:  # only rounding can get here: return the start, never worse
        info = SolverInfo(it, False, F_start, gap0, scale, start_gap=gap0, budget=stopped)
        return [t.clone() for t in x0], info
    return x, SolverInfo(it, converged, F_end, gap, scale, start_gap=gap0, budget=stopped)


def _power(
    forward: Callable[[list[Tensor]], Tensor],
    adjoint: Callable[[Tensor], list[Tensor]],
    mask: Tensor,
    like: list[Tensor],
    reduce: Callable[[list[Tensor]], Tensor],
    n_iter: int = 8,
    seed: int = 0,
    sample_reduce: SampleReduce = None,
) -> Tensor:
    """Power iteration for the largest eigenvalue of ``Aᵀ diag(mask) A`` per unit.

    ``reduce`` maps a list of entrywise tensors to per-unit sums: ``(M,)`` per attribute (the
    S-step is separable over columns) or ``(1,)`` for one global estimate. Returns the Rayleigh
    quotients (lower bounds that backtracking corrects).
    """
    gen = torch.Generator().manual_seed(seed)
    v = [torch.randn(t.shape, generator=gen, dtype=t.dtype).to(t.device) for t in like]
    maskf = mask.to(like[0].dtype)
    lam = reduce([torch.zeros_like(a) for a in v])
    for _ in range(n_iter):
        nv = reduce([a * a for a in v]).sqrt()
        nv = torch.where(nv > 0, nv, torch.ones_like(nv))
        v = [a / (nv if nv.numel() == 1 or a.ndim == 1 else nv.unsqueeze(0)) for a in v]
        w = _sum_samples(sample_reduce, adjoint(forward(v) * maskf))
        lam = reduce([a * b for a, b in zip(v, w, strict=True)])  # Rayleigh quotient
        v = w
    return torch.clamp(lam, min=0.0)


# ----------------------------------------------------------------------------- KKT


def _kkt_group(S: Tensor, gS: Tensor, gi: GroupIndex, mu: float, zero_tol: float = 0.0) -> float:
    norms = group_norms(S, gi)
    gnorm = group_norms(gS, gi)
    nz = norms > zero_tol
    safe = torch.where(nz, norms, torch.ones_like(norms))
    R = gS.clone()
    R[:, gi.idx] = gS[:, gi.idx] + mu * S[:, gi.idx] / safe[:, gi.gid]
    viol = torch.where(nz, group_norms(R, gi), torch.clamp(gnorm - mu, min=0.0))
    return float(viol.max()) if viol.numel() else 0.0


def _kkt_l1(L: Tensor, gL: Tensor, gamma: float, zero_tol: float = 0.0) -> float:
    nz = L.abs() > zero_tol
    viol = torch.where(
        nz, (gL + gamma * torch.sign(L)).abs(), torch.clamp(gL.abs() - gamma, min=0.0)
    )
    return float(viol.max()) if viol.numel() else 0.0


def _bias_viol(g: list[Tensor]) -> float:
    return float(g[1].abs().max()) if len(g) > 1 and g[1].numel() else 0.0


# ----------------------------------------------------------------------------- S-step


def _s_ops(
    data: _Data, P: Tensor, with_bias: bool
) -> tuple[Callable[[list[Tensor]], Tensor], Callable[[Tensor], list[Tensor]]]:
    if data.shared:

        def lin(S: Tensor) -> Tensor:
            return P @ S

        def lin_t(G: Tensor) -> Tensor:
            return P.T @ G
    else:

        def lin(S: Tensor) -> Tensor:
            return torch.bmm(P, S.T.unsqueeze(-1)).squeeze(-1).T

        def lin_t(G: Tensor) -> Tensor:
            return torch.bmm(G.T.unsqueeze(1), P).squeeze(1).T

    if with_bias:

        def forward(x: list[Tensor]) -> Tensor:
            return lin(x[0]) + x[1]

        def adjoint(G: Tensor) -> list[Tensor]:
            return [lin_t(G), G.sum(0)]
    else:

        def forward(x: list[Tensor]) -> Tensor:
            return lin(x[0])

        def adjoint(G: Tensor) -> list[Tensor]:
            return [lin_t(G)]

    return forward, adjoint


def _zero_empty(x: list[Tensor], empty: Tensor) -> list[Tensor]:
    if not bool(empty.any()):
        return x
    out = [x[0].masked_fill(empty.unsqueeze(0), 0.0)]
    if len(x) > 1:
        out.append(x[1].masked_fill(empty, 0.0))
    return out


def _s_problem_fista(
    data: _Data, P: Tensor, gi: GroupIndex, mu: float, kind: str, with_bias: bool
) -> _Problem:
    forward, adjoint = _s_ops(data, P, with_bias)
    col_block = gi.column_group()
    G = gi.n_groups

    def block_sum(ts: list[Tensor]) -> Tensor:
        col = ts[0].sum(0) + (ts[1] if len(ts) > 1 else 0)
        return torch.zeros(G, dtype=col.dtype, device=col.device).index_add_(0, col_block, col)

    def prox(v: list[Tensor], Lb: Tensor) -> list[Tensor]:
        out = [prox_group(v[0], gi, mu / Lb), *v[1:]]
        return _zero_empty(out, data.empty)

    def penalty(x: list[Tensor]) -> Tensor:
        return mu * group_norms(x[0], gi).sum(0)

    def kkt(x: list[Tensor], g: list[Tensor]) -> float:
        return max(_kkt_group(x[0], g[0], gi, mu), _bias_viol(g))

    return _Problem(
        forward,
        adjoint,
        data.yc,
        data.mf,
        kind,
        col_block,
        G,
        [col_block] * (2 if with_bias else 1),
        block_sum,
        prox,
        penalty,
        kkt,
        reduce=data.reduce,
    )


def _s_problem_smoothed(
    data: _Data, P: Tensor, gi: GroupIndex, mu: float, kind: str, with_bias: bool, eta: float
) -> _Problem:
    forward, adjoint = _s_ops(data, P, with_bias)
    zero = torch.zeros(1, dtype=torch.long, device=data.Y.device)

    def block_sum(ts: list[Tensor]) -> Tensor:
        return sum(t.sum() for t in ts).reshape(1)  # type: ignore[union-attr]

    def extra(x: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        v, g = smoothed_group_norm(x[0], gi, eta, mu)
        return v.reshape(1), [g, *(torch.zeros_like(t) for t in x[1:])]

    def prox(v: list[Tensor], Lb: Tensor) -> list[Tensor]:
        return _zero_empty(v, data.empty)

    def penalty(x: list[Tensor]) -> Tensor:
        return torch.zeros(1, dtype=x[0].dtype, device=x[0].device)

    def kkt(x: list[Tensor], g: list[Tensor]) -> float:
        return max(float(t.abs().max()) for t in g)

    return _Problem(
        forward,
        adjoint,
        data.yc,
        data.mf,
        kind,
        torch.zeros_like(data.empty, dtype=torch.long),
        1,
        [zero] * (2 if with_bias else 1),
        block_sum,
        prox,
        penalty,
        kkt,
        extra,
        smoothing_lipschitz(gi, data.M, eta, mu),
        data.reduce,
    )


def _col_lipschitz(data: _Data, P: Tensor, x0: list[Tensor], kind: str) -> Tensor:
    """Per-attribute Lipschitz bounds ``ℓ'' · ‖[P_m 1]_{labelled rows}‖₂²`` (power iteration)."""
    forward, adjoint = _s_ops(data, P, len(x0) > 1)
    lam = _power(forward, adjoint, data.mf, x0, _colsum, sample_reduce=data.reduce)
    return CURVATURE[kind] * lam * 1.02


def _colsum(ts: list[Tensor]) -> Tensor:
    return ts[0].sum(0) + (ts[1] if len(ts) > 1 else 0)


def _solve_S(
    data: _Data,
    L: Tensor,
    gi: GroupIndex,
    mu: float,
    S0: Tensor,
    b0: Tensor | None,
    tol: float,
    max_iter: int,
    method: str,
    kind: str,
    budget: _Budget | None = None,
) -> tuple[Tensor, Tensor | None, SolverInfo]:
    P = data.project(L)  # once per call
    x0 = _zero_empty([S0, b0] if b0 is not None else [S0], data.empty)
    lip_col = _col_lipschitz(data, P, x0, kind)
    tiny = torch.finfo(L.dtype).tiny
    if method == "fista":
        pb = _s_problem_fista(data, P, gi, mu, kind, b0 is not None)
        lipg = torch.zeros(gi.n_groups, dtype=L.dtype, device=L.device)
        lipg.scatter_reduce_(0, pb.col_block, lip_col, reduce="amax")
        lipg = torch.clamp(lipg, min=max(float(lipg.max()) * 1e-6, tiny * 1e6))
        x, info = _apg(pb, x0, lipg, tol, max_iter, _grad_scale(pb, x0, mu), budget=budget)
    else:
        x, info = _spgd(data, P, gi, mu, kind, x0, lip_col, tol, max_iter, budget)
    return x[0], (x[1] if len(x) > 1 else None), info


def _s_true_objective(
    data: _Data, P: Tensor, gi: GroupIndex, mu: float, kind: str, x: list[Tensor]
) -> float:
    forward, _ = _s_ops(data, P, len(x) > 1)
    return float(_total_loss(data, forward(x), kind) + mu * group_norm(x[0], gi))


def _spgd(
    data: _Data,
    P: Tensor,
    gi: GroupIndex,
    mu: float,
    kind: str,
    x0: list[Tensor],
    lip_col: Tensor,
    tol: float,
    max_iter: int,
    budget: _Budget | None = None,
) -> tuple[list[Tensor], SolverInfo]:
    """SPGD: FISTA on ``f + μΩ_η`` with continuation ``η ← η/10`` (warm starts).

    ``η₀`` makes the smoothing error bound ``η K G / 2`` equal to 1% of ``F(x₀)``; the
    continuation stops when the bound falls below ``tol · F`` or one stage improves the true
    objective by less than ``tol · F``. After every stage the groups still in the quadratic
    (Huber) zone ``μ‖S[k, g]‖ < η`` are tried at exactly zero; the best iterate in the true
    objective (the start included) is returned.
    """
    K = x0[0].shape[0]
    best = [t.clone() for t in x0]
    F_best = _s_true_objective(data, P, gi, mu, kind, best)
    if mu == 0:
        pb = _s_problem_fista(
            data,
            P,
            GroupIndex.from_groups([list(range(data.M))], data.M, data.Y.device),
            0.0,
            kind,
            len(x0) > 1,
        )
        lip = torch.clamp(lip_col.max(), min=torch.finfo(P.dtype).tiny * 1e6).reshape(1)
        x, info = _apg(pb, x0, lip, tol, max_iter, _grad_scale(pb, x0, 0.0), budget=budget)
        return x, info
    Dq = smoothing_gap_bound(K, gi.n_groups, 1.0)
    scale_F = max(abs(F_best), torch.finfo(P.dtype).tiny)
    eta = 1e-2 * scale_F / Dq
    eps = torch.finfo(P.dtype).eps
    x, n_used, stages, converged, gap, scale = x0, 0, 0, False, float("inf"), 0.0
    F_prev, start_gap, stopped = F_best, math.nan, ""
    while n_used < max_iter:
        pb = _s_problem_smoothed(data, P, gi, mu, kind, len(x0) > 1, eta)
        lip = torch.clamp(lip_col.max(), min=torch.finfo(P.dtype).tiny * 1e6).reshape(1)
        rel = eta * Dq / scale_F
        x, info = _apg(
            pb,
            x,
            lip,
            max(tol, 0.1 * rel),
            max_iter - n_used,
            _grad_scale(pb, x, mu),
            budget=budget,
        )
        n_used += max(info.n_iter, 1)
        stages += 1
        gap, scale, stopped = info.gap, info.scale, info.budget
        start_gap = info.start_gap if stages == 1 else start_gap
        cands = [x]
        norms = group_norms(x[0], gi)
        small = mu * norms < eta
        if bool(small.any()):
            keep = (~small).to(x[0].dtype)[:, gi.gid]
            S2 = x[0].clone()
            S2[:, gi.idx] = x[0][:, gi.idx] * keep
            cands.append([S2, *x[1:]])
        for c in cands:
            Fc = _s_true_objective(data, P, gi, mu, kind, c)
            if Fc < F_best:
                best, F_best = [t.clone() for t in c], Fc
        if rel <= max(tol, 10 * eps) or (stages > 1 and F_prev - F_best <= tol * abs(F_best)):
            converged = info.converged or rel <= max(tol, 10 * eps)
            break
        if stopped:
            break
        F_prev = F_best
        eta /= 10.0
    info = SolverInfo(n_used, converged, F_best, gap, scale, stages, start_gap, stopped)
    return best, info


# ----------------------------------------------------------------------------- L-step


def _l_problem(
    data: _Data, S: Tensor, gamma: float, lam: float, kind: str, with_bias: bool
) -> _Problem:
    zero = torch.zeros(1, dtype=torch.long, device=S.device)

    def forward(x: list[Tensor]) -> Tensor:
        z = data.scores_W(x[0] @ S)
        return z + x[1] if with_bias else z

    def adjoint(G: Tensor) -> list[Tensor]:
        gL = data.XtG(G) @ S.T
        return [gL, G.sum(0)] if with_bias else [gL]

    def block_sum(ts: list[Tensor]) -> Tensor:
        return sum(t.sum() for t in ts).reshape(1)  # type: ignore[union-attr]

    def extra(x: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        grads = [2 * lam * x[0], *(torch.zeros_like(t) for t in x[1:])]
        return (lam * frobenius_sq(x[0])).reshape(1), grads

    def prox(v: list[Tensor], Lb: Tensor) -> list[Tensor]:
        return [prox_l1(v[0], gamma / Lb[0]), *v[1:]]

    def penalty(x: list[Tensor]) -> Tensor:
        return (gamma * x[0].abs().sum()).reshape(1)

    def kkt(x: list[Tensor], g: list[Tensor]) -> float:
        return max(_kkt_l1(x[0], g[0], gamma), _bias_viol(g))

    return _Problem(
        forward,
        adjoint,
        data.yc,
        data.mf,
        kind,
        torch.zeros(data.M, dtype=torch.long, device=S.device),
        1,
        [zero] * (2 if with_bias else 1),
        block_sum,
        prox,
        penalty,
        kkt,
        extra,
        2 * lam,
        data.reduce,
    )


def _solve_L(
    data: _Data,
    S: Tensor,
    gamma: float,
    lam: float,
    L0: Tensor,
    b0: Tensor | None,
    tol: float,
    max_iter: int,
    kind: str,
    budget: _Budget | None = None,
) -> tuple[Tensor, Tensor | None, SolverInfo]:
    pb = _l_problem(data, S, gamma, lam, kind, b0 is not None)
    x0 = [L0, b0] if b0 is not None else [L0]
    lam_max = _power(pb.forward, pb.adjoint, data.mf, x0, pb.block_sum, sample_reduce=data.reduce)
    lip = CURVATURE[kind] * lam_max * 1.02
    lip = torch.clamp(lip, min=torch.finfo(S.dtype).tiny * 1e6)
    x, info = _apg(pb, x0, lip, tol, max_iter, _grad_scale(pb, x0, gamma), budget=budget)
    return x[0], (x[1] if len(x) > 1 else None), info


# ----------------------------------------------------------------------------- public API


def _scores(data: _Data, L: Tensor, S: Tensor, b: Tensor | None) -> Tensor:
    z = data.scores_W(L @ S)
    return z + b if b is not None else z


def objective(
    X: Any,
    Y: Any,
    L: Any,
    S: Any,
    groups: Sequence[Sequence[int]],
    mu: float,
    gamma: float,
    lam: float,
    mask: Any = None,
    *,
    loss: str = "squared_hinge",
    bias: Any = None,
    overlapping: bool = False,
    task_weights: Any = None,
    sample_weights: Any = None,
) -> float:
    """Eq. 2: ``Σ_mask ℓ(y xᵀ L s (+ b)) + μ Σ_k Σ_g ‖S[k, g]‖ + γ‖L‖₁ + λ‖L‖_F²``.

    ``bias=None`` is eq. 2 exactly; a ``(M,)`` bias is added to the scores (unpenalised).
    """
    check_loss(loss)
    ctx, x = _context(X)
    data = _data(ctx, x, Y, mask, task_weights=task_weights, sample_weights=sample_weights)
    mu, gamma, lam = _penalty(mu, "mu"), _penalty(gamma, "gamma"), _penalty(lam, "lam")
    Lt = _lmat(ctx, L, data.D)
    St = _matrix(ctx, S, "S", (Lt.shape[1], data.M), "(K, M)")
    gi = _groups(groups, data.M, overlapping, ctx.device)
    b = _fixed_bias(ctx, bias, data.M)
    lo, _ = elementwise(_scores(data, Lt, St, b), data.yc, data.mf, loss)
    val = lo.sum() + mu * group_norm(St, gi) + gamma * Lt.abs().sum() + lam * frobenius_sq(Lt)
    return float(val)


def _lmat(ctx: _Ctx, L: Any, D: int) -> Tensor:
    t = ctx.t(L, "L")
    if t.ndim != 2 or t.shape[0] != D:
        raise ValueError(
            f"L must have shape (D, K) with D = {D} (the feature size of X); got {tuple(t.shape)}"
        )
    if t.shape[1] < 1:
        raise ValueError("L must have K >= 1 columns")
    _finite(t, "L")
    return t


def _smat(ctx: _Ctx, S: Any, M: int) -> Tensor:
    t = ctx.t(S, "S")
    if t.ndim != 2 or t.shape[1] != M:
        raise ValueError(
            f"S must have shape (K, M) with M = {M} (the columns of Y); got {tuple(t.shape)}"
        )
    if t.shape[0] < 1:
        raise ValueError("S must have K >= 1 rows")
    _finite(t, "S")
    return t


@_threads_by_size
def fit_combination(
    X: Any,
    Y: Any,
    L: Any,
    groups: Sequence[Sequence[int]],
    mu: float,
    mask: Any = None,
    tol: float = 1e-8,
    max_iter: int = 5000,
    *,
    S0: Any = None,
    method: str = "fista",
    overlapping: bool = False,
    loss: str = "squared_hinge",
    bias: Any = None,
    return_info: bool = False,
    task_weights: Any = None,
    sample_weights: Any = None,
) -> Any:
    """Step (a): ``min_S Σ_mask ℓ(y x_mᵀ L s_m (+ b_m)) + μ Σ_k Σ_g ‖S[k, g]‖₂``.

    Args:
        X, Y, mask: data (see module docstring). L: ``(D, K)``, fixed.
        groups: list of lists of attribute indices; a partition unless ``overlapping=True``.
        mu: group penalty ``μ ≥ 0``.
        tol: relative KKT tolerance (violation ``≤ tol · max(‖∇f(0)‖_∞, μ)``).
        max_iter: proximal-gradient iterations (all SPGD stages together).
        S0: ``(K, M)`` warm start (default zeros); the result is never worse than it.
        method: ``"fista"`` (exact block soft-thresholding; disjoint groups) or ``"spgd"``
            (Nesterov smoothing with continuation; required for overlapping groups).
        loss: ``"squared_hinge"`` (default, the paper) or ``"logistic"``.
        bias: None/False = no bias (eq. 2); True = fit an unpenalised ``(M,)`` bias from zero;
            an array = fit it starting from that array.
        return_info: also return a :class:`SolverInfo`.

    Returns:
        ``S`` — or ``(S, bias)`` when a bias is fitted — then ``info`` if ``return_info``.
        The projections ``P_m = X_m L`` are computed once per call.
    """
    check_loss(loss, smooth=True)
    ctx, x = _context(X)
    data = _data(ctx, x, Y, mask, task_weights=task_weights, sample_weights=sample_weights)
    mu = _penalty(mu, "mu")
    tol = _positive(tol, "tol")
    max_iter = _positive(max_iter, "max_iter", integer=True)
    Lt = _lmat(ctx, L, data.D)
    K = Lt.shape[1]
    gi = _groups(groups, data.M, overlapping, ctx.device)
    method = _method(method, gi)
    St = (
        torch.zeros(K, data.M, dtype=ctx.dtype, device=ctx.device)
        if S0 is None
        else _matrix(ctx, S0, "S0", (K, data.M), "(K, M)")
    )
    b0 = _bias_arg(ctx, bias, data.M)
    _warn_empty(data)
    S, b, info = _solve_S(data, Lt, gi, mu, St, b0, tol, max_iter, method, loss)
    out: tuple[Any, ...] = (ctx.out(S),) + ((ctx.out(b),) if b0 is not None else ())
    out += (info,) if return_info else ()
    return out[0] if len(out) == 1 else out


@_threads_by_size
def fit_latent(
    X: Any,
    Y: Any,
    S: Any,
    gamma: float,
    lam: float,
    mask: Any = None,
    tol: float = 1e-8,
    max_iter: int = 5000,
    *,
    L0: Any = None,
    loss: str = "squared_hinge",
    bias: Any = None,
    return_info: bool = False,
    task_weights: Any = None,
    sample_weights: Any = None,
) -> Any:
    """Step (b): ``min_L Σ_mask ℓ(y x_mᵀ L s_m (+ b_m)) + γ‖L‖₁ + λ‖L‖_F²`` (APG, ℓ1 prox).

    The gradient of the smooth part is ``Σ_m (Σ_i G[i, m] x_m(i)) s_mᵀ + 2λL`` with ``G`` the
    score derivatives: ``Xᵀ G Sᵀ`` for shared ``X``, a batched product (no loop over ``M``) for
    attribute-specific ``X``. ``L0``: ``(D, K)`` warm start (default zeros). ``bias``, ``tol``,
    ``max_iter``, ``loss``, ``return_info`` as in :func:`fit_combination`.

    Returns ``L`` — or ``(L, bias)`` — then ``info`` if ``return_info``.
    """
    check_loss(loss, smooth=True)
    ctx, x = _context(X)
    data = _data(ctx, x, Y, mask, task_weights=task_weights, sample_weights=sample_weights)
    gamma, lam = _penalty(gamma, "gamma"), _penalty(lam, "lam")
    tol = _positive(tol, "tol")
    max_iter = _positive(max_iter, "max_iter", integer=True)
    St = _smat(ctx, S, data.M)
    K = St.shape[0]
    Lt = (
        torch.zeros(data.D, K, dtype=ctx.dtype, device=ctx.device)
        if L0 is None
        else _matrix(ctx, L0, "L0", (data.D, K), "(D, K)")
    )
    b0 = _bias_arg(ctx, bias, data.M)
    L, b, info = _solve_L(data, St, gamma, lam, Lt, b0, tol, max_iter, loss)
    out: tuple[Any, ...] = (ctx.out(L),) + ((ctx.out(b),) if b0 is not None else ())
    out += (info,) if return_info else ()
    return out[0] if len(out) == 1 else out


@_threads_by_size
def fit_independent(
    X: Any,
    Y: Any,
    mask: Any = None,
    lam: float = 1.0,
    *,
    bias: bool = False,
    loss: str = "squared_hinge",
    tol: float = 1e-6,
    max_iter: int = 2000,
    task_weights: Any = None,
    sample_weights: Any = None,
) -> Any:
    """Single-task solutions ``w_m = argmin Σ_{i labelled} ℓ(y x_m(i)ᵀ w (+ b_m)) + λ‖w‖²``.

    One column per attribute (the S-extract baseline and the paper's initialisation of ``W``);
    solved jointly as :func:`fit_latent` with ``S = I_M``, ``γ = 0``. Returns ``W`` ``(D, M)``
    or ``(W, bias)`` when ``bias=True``.
    """
    check_loss(loss, smooth=True)
    ctx, x = _context(X)
    data = _data(ctx, x, Y, mask, task_weights=task_weights, sample_weights=sample_weights)
    lam = _penalty(lam, "lam")
    W, b = _independent(data, lam, bias, loss, tol, max_iter)
    return (ctx.out(W), ctx.out(b)) if bias else ctx.out(W)


def _independent(
    data: _Data,
    lam: float,
    bias: bool,
    kind: str,
    tol: float,
    max_iter: int,
    budget: _Budget | None = None,
) -> tuple[Tensor, Tensor | None]:
    eye = torch.eye(data.M, dtype=data.Y.dtype, device=data.Y.device)
    L0 = torch.zeros(data.D, data.M, dtype=eye.dtype, device=eye.device)
    b0 = torch.zeros(data.M, dtype=eye.dtype, device=eye.device) if bias else None
    W, b, info = _solve_L(data, eye, 0.0, lam, L0, b0, tol, max_iter, kind, budget)
    if budget is not None:
        budget.spend(info.n_iter)
    return W, b


def init_from_w(
    W: Any,
    K: int,
    seed: int = 0,
    *,
    fill: str = "random",
    scale: float | None = None,
    s_init: str = "svd",
) -> tuple[Any, Any]:
    """Factor ``W`` ``(D, M)`` into ``L`` ``(D, K)``, ``S`` ``(K, M)`` from its SVD.

    With ``W = U Σ Vᵀ`` of rank ``r``: ``L[:, :r'] = U Σ^{1/2}``, ``S[:r'] = Σ^{1/2} Vᵀ`` with
    ``r' = min(r, K)`` (so ``L S = W`` when ``K ≥ r``, else the best rank-``K`` approximation).
    When ``K > r`` the other ``K − r`` columns of ``L`` are (``fill="random"``, default) random
    directions orthonormal to each other and to ``U_r`` (as far as ``D`` allows), each of norm
    ``scale`` (default ``1e-2 · √σ₁``), with zero rows in ``S`` — so ``L S = W`` still holds and
    the extra latent tasks can be switched on by the S-step (an all-zero column of ``L`` never
    would: its gradient stays zero); or zeros (``fill="zeros"``). ``s_init="random"`` replaces
    ``S`` by a Gaussian matrix of the same Frobenius norm (the paper: "S random").
    """
    K = _positive(K, "K", integer=True)
    if fill not in ("random", "zeros"):
        raise ValueError(f"fill must be 'random' or 'zeros' (got {fill!r})")
    if s_init not in ("svd", "random"):
        raise ValueError(f"s_init must be 'svd' or 'random' (got {s_init!r})")
    ctx, w = _context(W)
    if w.ndim != 2:
        raise ValueError(f"W must have shape (D, M); got {tuple(w.shape)}")
    _finite(w, "W")
    L, S = _init_from_w(w, K, seed, fill, scale, s_init)
    return ctx.out(L), ctx.out(S)


def _init_from_w(
    W: Tensor, K: int, seed: int, fill: str, scale: float | None, s_init: str
) -> tuple[Tensor, Tensor]:
    D, M = W.shape
    U, sig, Vh = torch.linalg.svd(W.double(), full_matrices=False)
    smax = float(sig[0]) if sig.numel() else 0.0
    r = int((sig > max(D, M) * torch.finfo(torch.float64).eps * smax).sum()) if smax > 0 else 0
    r = min(r, K)
    L = torch.zeros(D, K, dtype=torch.float64)
    S = torch.zeros(K, M, dtype=torch.float64)
    root = sig[:r].sqrt()
    L[:, :r] = U[:, :r] * root
    S[:r] = root[:, None] * Vh[:r]
    gen = torch.Generator().manual_seed(int(seed))
    if K > r and fill == "random":
        norm = scale if scale is not None else 1e-2 * math.sqrt(smax if smax > 0 else 1.0)
        R = torch.randn(D, K - r, generator=gen, dtype=torch.float64)
        if r:
            R = R - U[:, :r] @ (U[:, :r].T @ R)
        n_orth = min(K - r, max(D - r, 0))
        if n_orth:
            Q, _ = torch.linalg.qr(R[:, :n_orth])
            R[:, :n_orth] = Q
        R = R / R.norm(dim=0, keepdim=True).clamp_min(1e-300)
        L[:, r:] = norm * R
    if s_init == "random":
        Sr = torch.randn(K, M, generator=gen, dtype=torch.float64)
        S = Sr * (S.norm() / Sr.norm() if float(S.norm()) > 0 else 1.0)
    return L.to(W.dtype).to(W.device), S.to(W.dtype).to(W.device)


@_threads_by_size
def fit_alternating(
    X: Any,
    Y: Any,
    groups: Sequence[Sequence[int]],
    *,
    mu: float,
    gamma: float,
    lam: float,
    K: int,
    mask: Any = None,
    W0: Any = None,
    L0: Any = None,
    S0: Any = None,
    max_outer: int = 50,
    tol: float = 1e-5,
    method: str = "fista",
    loss: str = "squared_hinge",
    bias: bool = False,
    seed: int = 0,
    progress: bool = False,
    callback: Callable[[int, Any, Any, Any, float], Any] | None = None,
    overlapping: bool = False,
    max_iter: int = 2000,
    inner_tol: float = 1e-7,
    init_lam: float | None = None,
    sample_reduce: SampleReduce = None,
    task_weights: Any = None,
    sample_weights: Any = None,
    time_budget_s: float | None = None,
    iter_budget: int | None = None,
    gap_tol: float | None = None,
    report: Callable[[SolverProgress], Any] | None = None,
    progress_every_s: float = 10.0,
) -> AlternatingResult:
    """Algorithm 1: alternate step (a) (:func:`fit_combination`) and (b) (:func:`fit_latent`).

    Initialisation: ``L0``/``S0`` if given; otherwise :func:`init_from_w` of ``W0``, itself
    :func:`fit_independent` (ridge ``init_lam``, default ``lam`` — or 1 when ``lam`` is 0) when
    not given. Each half-step is warm-started at the current iterate and returns an iterate no
    worse than it, so ``history`` never increases (a rounding-level increase keeps the previous
    iterate). The sub-solvers' tolerance starts at ``max(inner_tol, 1e-3)`` and tightens to
    ``max(inner_tol, 0.1 × last relative decrease)`` (by 100× when an outer iteration made no
    progress). Stops when the relative decrease over one outer iteration is below ``tol`` with
    sub-solver tolerance at most ``max(inner_tol, tol)`` (``converged=True``) or after
    ``max_outer`` outer iterations.
    ``callback(outer_iteration, L, S, bias, objective)`` is called after each outer iteration
    (torch tensors); returning True stops early. ``max_iter``/``inner_tol`` go to the sub-solvers.

    Budgets (all optional; without them the iterates are exactly those of an unbudgeted call):

    * ``time_budget_s``: wall seconds for the whole call. Every sub-solver checks the clock at
      each iteration and stops when it is up; the call then returns its current iterate (never
      worse than the start), possibly after an (a) half-step only, with ``stop="time_budget"``.
    * ``iter_budget``: proximal-gradient iterations of all sub-solvers together (initial
      ridge fit included); ``stop="iter_budget"``.
    * ``gap_tol``: also stop (``converged=True``, ``stop="kkt"``) when one iterate satisfies
      both blocks' KKT conditions to ``gap_tol`` relative (``SolverInfo.rel_gap``): the (a)
      half-step starts within ``gap_tol`` at the iterate the previous (b) half-step left within
      ``gap_tol``. Penalties are separable in ``L`` and ``S``, so this is a stationarity
      certificate of eq. 2 itself (for ``method="spgd"`` the S gap is that of the smoothed
      problem).

    Progress: ``report(SolverProgress)`` gets one ``kind="outer"`` report per outer iteration
    (objective, relative decrease, gap, estimated seconds left) and ``kind="inner"`` heartbeats
    from inside long half-steps every ``progress_every_s`` seconds; ``progress=True`` shows a
    progress bar with the same figures (:func:`apcnn.runlog.progress`).

    Data parallel: when each process holds some rows of ``X``, ``Y``, ``mask`` and
    ``sample_weights`` (the same ``groups``, penalties, ``W0``/``L0``/``S0``, seed on all),
    ``sample_reduce`` sums a tensor over the processes (:func:`apcnn.distributed.all_reduce_sum`).
    The loss values and gradients of the smooth part are all-reduced and every process applies
    the same proximal steps, so all end with the same ``L``, ``S`` and bias: those of one process
    holding all rows, up to rounding. A time budget stops all processes at the same iteration
    (any one out of time stops all).
    """
    t0 = time.monotonic()
    check_loss(loss, smooth=True)
    ctx, x = _context(X)
    data = _data(ctx, x, Y, mask, sample_reduce, task_weights, sample_weights)
    mu, gamma, lam = _penalty(mu, "mu"), _penalty(gamma, "gamma"), _penalty(lam, "lam")
    K = _positive(K, "K", integer=True)
    max_outer = _positive(max_outer, "max_outer", integer=True)
    tol = _positive(tol, "tol")
    if time_budget_s is not None:
        time_budget_s = _positive(time_budget_s, "time_budget_s")
    if iter_budget is not None:
        iter_budget = _positive(iter_budget, "iter_budget", integer=True)
    if gap_tol is not None:
        gap_tol = _positive(gap_tol, "gap_tol")
    progress_every_s = _positive(progress_every_s, "progress_every_s")
    gi = _groups(groups, data.M, overlapping, ctx.device)
    method = _method(method, gi)
    _warn_empty(data)
    outer = [0]  # the outer iteration under way, for the heartbeats

    def heartbeat(phase: str, it: int, gap: float) -> None:
        assert report is not None
        elapsed = time.monotonic() - t0
        report(
            SolverProgress(
                "inner", outer[0], max_outer, elapsed, gap=gap, phase=phase, inner_iteration=it
            )
        )

    budget = _Budget(
        None if time_budget_s is None else t0 + time_budget_s,
        iter_budget,
        heartbeat if report is not None else None,
        progress_every_s,
        sample_reduce,
    )
    b = torch.zeros(data.M, dtype=ctx.dtype, device=ctx.device) if bias else None
    if L0 is None:
        if W0 is None:
            ridge = init_lam if init_lam is not None else (lam if lam > 0 else 1.0)
            budget.phase = "init"
            Wt, bw = _independent(
                data,
                _penalty(ridge, "init_lam"),
                bool(bias),
                loss,
                1e-6,
                budget.max_iter(1000),
                budget,
            )
            if bias and bw is not None:
                b = bw
        else:
            Wt = _matrix(ctx, W0, "W0", (data.D, data.M), "(D, M)")
        Lt, S_init = _init_from_w(Wt, K, seed, "random", None, "svd")
    else:
        Lt, S_init = _matrix(ctx, L0, "L0", (data.D, K), "(D, K)"), None
    if S0 is not None:
        St = _matrix(ctx, S0, "S0", (K, data.M), "(K, M)")
    else:
        St = (
            S_init
            if S_init is not None
            else torch.zeros(K, data.M, dtype=ctx.dtype, device=ctx.device)
        )
    St = _zero_empty([St], data.empty)[0]

    def F(L_: Tensor, S_: Tensor, b_: Tensor | None) -> float:
        return float(
            _total_loss(data, _scores(data, L_, S_, b_), loss)
            + mu * group_norm(S_, gi)
            + gamma * L_.abs().sum()
            + lam * frobenius_sq(L_)
        )

    history = [F(Lt, St, b)]
    infos: list[SolverInfo] = []
    converged, n, stop = False, 0, "max_outer"
    bar = None
    if progress:
        from .runlog import progress as progress_bar

        bar = progress_bar(total=max_outer, desc="alternating")
    sub_tol = max(inner_tol, 1e-3)
    l_gap = math.inf  # relative KKT gap of L at the current iterate (from the last (b) step)
    rels: list[float] = []
    for n in range(1, max_outer + 1):
        if budget.out_of_time():
            n -= 1
            break
        outer[0] = n
        budget.phase = "S-step"
        S_new, b_new, info = _solve_S(
            data, Lt, gi, mu, St, b, sub_tol, budget.max_iter(max_iter), method, loss, budget
        )
        budget.spend(info.n_iter)
        s_start = info.start_gap / info.scale if info.scale > 0 else math.inf
        kkt_ok = gap_tol is not None and max(s_start, l_gap) <= gap_tol
        f = F(Lt, S_new, b_new)
        if f <= history[-1]:
            St, b = S_new, b_new
        else:  # rounding-level increase: keep the previous iterate
            f = history[-1]
        history.append(f)
        infos.append(info)
        if budget.exhausted:
            break
        budget.phase = "L-step"
        L_new, b_new, info = _solve_L(
            data, St, gamma, lam, Lt, b, sub_tol, budget.max_iter(max_iter), loss, budget
        )
        budget.spend(info.n_iter)
        f = F(L_new, St, b_new)
        if f <= history[-1]:
            Lt, b = L_new, b_new
            l_gap = info.rel_gap
        else:
            f = history[-1]
            l_gap = math.inf  # the certificate belongs to the rejected iterate
        history.append(f)
        infos.append(info)
        rel = (history[-3] - history[-1]) / max(abs(history[-1]), torch.finfo(ctx.dtype).tiny)
        rels.append(rel)
        gap = max(infos[-2].rel_gap, infos[-1].rel_gap)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(objective=f"{f:.6g}", gap=f"{gap:.1e}")
        if report is not None:
            budget.last = time.monotonic()  # the next heartbeat is due progress_every_s later
            elapsed = budget.last - t0
            report(
                SolverProgress(
                    "outer",
                    n,
                    max_outer,
                    elapsed,
                    objective=f,
                    rel_decrease=rel,
                    gap=gap,
                    eta_s=_eta(rels, tol, n, max_outer, elapsed, budget.deadline),
                    inner_iterations=infos[-2].n_iter + infos[-1].n_iter,
                )
            )
        stop_cb = callback(n, Lt, St, b, f) if callback is not None else False
        if rel <= tol and sub_tol <= max(inner_tol, tol):
            converged, stop = True, "tol"
            break
        if kkt_ok:
            converged, stop = True, "kkt"
            break
        if rel <= tol:
            # little progress only because the sub-solvers stopped at a tolerance looser than
            # tol (they may accept their start): not convergence, so tighten them and go on
            sub_tol = max(inner_tol, 0.01 * sub_tol)
        else:
            sub_tol = max(inner_tol, min(sub_tol, 0.1 * rel))  # tighten as the loop settles
        if stop_cb:
            stop = "callback"
            break
        if budget.exhausted:
            break
    if budget.exhausted and not converged and stop != "callback":
        stop = "time_budget" if budget.exhausted == "time" else "iter_budget"
    if bar is not None:
        bar.close()
    seconds = time.monotonic() - t0
    return AlternatingResult(
        ctx.out(Lt), ctx.out(St), ctx.out(b), history, n, converged, infos, stop, seconds
    )


def _eta(
    rels: list[float], tol: float, n: int, max_outer: int, elapsed: float, deadline: float | None
) -> float:
    """Seconds left: outer iterations until the relative decrease reaches ``tol`` if it keeps
    shrinking by its last ratio (at most ``max_outer − n``), at the mean time per iteration."""
    left = max_outer - n
    rel = rels[-1]
    if rel <= tol:
        left = min(left, 1)
    elif len(rels) > 1 and 0 < rel < rels[-2]:
        left = min(left, math.ceil(math.log(tol / rel) / math.log(rel / rels[-2])))
    eta = left * elapsed / max(n, 1)
    if deadline is not None:
        eta = min(eta, max(deadline - time.monotonic(), 0.0))
    return eta


def optimality_gap_S(
    X: Any,
    Y: Any,
    L: Any,
    S: Any,
    groups: Sequence[Sequence[int]],
    mu: float,
    mask: Any = None,
    *,
    loss: str = "squared_hinge",
    bias: Any = None,
    zero_tol: float = 0.0,
    task_weights: Any = None,
    sample_weights: Any = None,
) -> float:
    """KKT certificate of step (a) (disjoint groups): the largest violation of

    * ``‖∇_{k,g} f‖₂ ≤ μ`` for every zero group ``S[k, g]`` (norm ``≤ zero_tol``),
    * ``∇_{k,g} f + μ S[k, g]/‖S[k, g]‖₂ = 0`` (ℓ2 norm of the residual) for every other group,
    * ``∇_b f = 0`` for a fitted bias,

    with ``f`` the loss term. Absolute (same units as the gradient); 0 at an exact optimum.
    """
    check_loss(loss, smooth=True)
    ctx, x = _context(X)
    data = _data(ctx, x, Y, mask, task_weights=task_weights, sample_weights=sample_weights)
    mu = _penalty(mu, "mu")
    Lt = _lmat(ctx, L, data.D)
    St = _matrix(ctx, S, "S", (Lt.shape[1], data.M), "(K, M)")
    gi = _groups(groups, data.M, False, ctx.device)
    b = _fixed_bias(ctx, bias, data.M)
    P = data.project(Lt)
    forward, adjoint = _s_ops(data, P, b is not None)
    xs = [St, b] if b is not None else [St]
    _, dz = elementwise(forward(xs), data.yc, data.mf, loss)
    g = adjoint(dz)
    return max(_kkt_group(St, g[0], gi, mu, zero_tol), _bias_viol(g))


def optimality_gap_L(
    X: Any,
    Y: Any,
    L: Any,
    S: Any,
    gamma: float,
    lam: float,
    mask: Any = None,
    *,
    loss: str = "squared_hinge",
    bias: Any = None,
    zero_tol: float = 0.0,
    task_weights: Any = None,
    sample_weights: Any = None,
) -> float:
    """KKT certificate of step (b): the largest violation of the ℓ1 optimality conditions

    ``|∇_dk f| ≤ γ`` where ``L_dk = 0`` (``|L_dk| ≤ zero_tol``), ``∇_dk f + γ sign(L_dk) = 0``
    elsewhere, and ``∇_b f = 0`` for a fitted bias; ``f`` = loss ``+ λ‖L‖_F²``. Absolute.
    """
    check_loss(loss, smooth=True)
    ctx, x = _context(X)
    data = _data(ctx, x, Y, mask, task_weights=task_weights, sample_weights=sample_weights)
    gamma, lam = _penalty(gamma, "gamma"), _penalty(lam, "lam")
    Lt = _lmat(ctx, L, data.D)
    St = _matrix(ctx, S, "S", (Lt.shape[1], data.M), "(K, M)")
    b = _fixed_bias(ctx, bias, data.M)
    pb = _l_problem(data, St, gamma, lam, loss, b is not None)
    xs = [Lt, b] if b is not None else [Lt]
    _, g = _smooth(pb, pb.forward(xs), xs, True)
    assert g is not None
    return max(_kkt_l1(Lt, g[0], gamma, zero_tol), _bias_viol(g))
