"""Penalties of eq. 2 and their proximal operators / smoothings (torch tensors).

* group norm ``Ω(S) = Σ_k Σ_g ‖S[k, g]‖₂`` for ``S`` of shape ``(K, M)``, ``S[k, g]`` the entries of
  row ``k`` in the columns of group ``g`` (groups: lists of attribute indices);
* ``‖L‖₁ = Σ |L_dk|`` and ``‖L‖_F² = Σ L_dk²``.

Proximal operators (``prox_{τ h}(V) = argmin_U ½‖U − V‖² + τ h(U)``):

* :func:`prox_group` — block soft-thresholding, exact for *disjoint* groups:
  ``U[k, g] = V[k, g] · max(0, 1 − τ_g / ‖V[k, g]‖₂)``;
* :func:`prox_l1` — soft-thresholding ``U = sign(V) max(0, |V| − τ)``.

Nesterov smoothing for general (also overlapping) groups, as in the smoothing proximal gradient
method (SPGD) of Chen, Lin, Kim, Carbonell, Xing, "Smoothing proximal gradient method for general
structured sparse regression", Ann. Appl. Stat. 6(2), 2012. Write ``μΩ(S) = max_{α ∈ Q} ⟨C S, α⟩``
with ``C`` stacking the weighted selections ``μ S[k, g]`` and ``Q`` the product of unit ℓ2 balls
``‖α_{k,g}‖ ≤ 1``. The smoothed penalty is

    μΩ_η(S) = max_{α ∈ Q} ⟨C S, α⟩ − (η/2) ‖α‖²,

attained at ``α*_{k,g} = Π_ball(μ S[k, g] / η)`` (projection onto the unit ball), with gradient
``∇ μΩ_η(S) = Cᵀ α*`` (so ``μ α*_{k,g}`` added to the entries of ``S[k, g]``) and Lipschitz
constant ``‖C‖² / η = μ² · max_m #{g : m ∈ g} / η``. It satisfies
``μΩ(S) − η K G / 2 ≤ μΩ_η(S) ≤ μΩ(S)`` (:func:`smoothing_gap_bound`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class GroupIndex:
    """Flat incidence representation of groups over ``M`` attributes.

    Attributes:
        idx: ``(T,)`` long, attribute index of each (group, member) incidence.
        gid: ``(T,)`` long, group index of each incidence.
        n_groups: ``G``.
        n_attributes: ``M``.
        counts: ``(M,)`` long, number of groups containing each attribute.
        disjoint: True when no attribute is in two groups.
    """

    idx: Tensor
    gid: Tensor
    n_groups: int
    n_attributes: int
    counts: Tensor
    disjoint: bool

    @classmethod
    def from_groups(
        cls, groups: Sequence[Sequence[int]], n_attributes: int, device: torch.device | str = "cpu"
    ) -> GroupIndex:
        """Build from a list of lists of attribute indices (no validation beyond range checks)."""
        idx = [int(a) for g in groups for a in g]
        gid = [j for j, g in enumerate(groups) for _ in g]
        idx_t = torch.tensor(idx, dtype=torch.long, device=device)
        if idx_t.numel() and (idx_t.min() < 0 or idx_t.max() >= n_attributes):
            raise ValueError(f"groups index attributes outside range(M) with M = {n_attributes}")
        counts = (
            torch.bincount(idx_t, minlength=n_attributes)
            if idx
            else torch.zeros(n_attributes, dtype=torch.long, device=device)
        )
        return cls(
            idx=idx_t,
            gid=torch.tensor(gid, dtype=torch.long, device=device),
            n_groups=len(groups),
            n_attributes=n_attributes,
            counts=counts,
            disjoint=bool((counts <= 1).all()),
        )

    def to(self, device: torch.device | str) -> GroupIndex:
        """The same index on ``device``."""
        return GroupIndex(
            self.idx.to(device),
            self.gid.to(device),
            self.n_groups,
            self.n_attributes,
            self.counts.to(device),
            self.disjoint,
        )

    def column_group(self) -> Tensor:
        """``(M,)`` long, the group of each attribute (disjoint groups; −1 = in no group)."""
        out = torch.full((self.n_attributes,), -1, dtype=torch.long, device=self.idx.device)
        out[self.idx] = self.gid
        return out


def check_groups(
    groups: Sequence[Sequence[int]], M: int, *, overlapping: bool = False
) -> list[list[int]]:
    """``groups`` as a list of lists of ints, checked: every group non-empty, listed once,
    without repeated attributes, indices in ``range(M)``, every attribute in a group, and (unless
    ``overlapping``) no attribute in two groups, i.e. a partition. The one group check of the
    package: ValueError / TypeError naming the offending group and the fix."""
    try:
        gl = [[int(a) for a in g] for g in groups]
    except (TypeError, ValueError):
        raise TypeError("groups must be a list of lists of integer attribute indices") from None
    seen: dict[int, int] = {}
    firsts: dict[tuple[int, ...], int] = {}
    for j, g in enumerate(gl):
        if not g:
            raise ValueError(f"groups[{j}] is empty; remove it")
        key = tuple(sorted(g))
        if key in firsts:
            raise ValueError(
                f"groups[{firsts[key]}] and groups[{j}] are the same group; list it once"
            )
        firsts[key] = j
        if len(set(g)) != len(g):
            dup = next(a for a in g if g.count(a) > 1)
            raise ValueError(f"groups[{j}] lists attribute {dup} twice; list it once")
        for a in g:
            if not 0 <= a < M:
                raise ValueError(
                    f"groups[{j}] contains attribute index {a}, out of range for M = {M} attributes"
                )
            if a in seen and not overlapping:
                raise ValueError(
                    f"attribute {a} is in groups[{seen[a]}] and groups[{j}]; groups must be a "
                    "partition (pass overlapping=True and method='spgd' for overlapping groups)"
                )
            seen.setdefault(a, j)
    missing = [a for a in range(M) if a not in seen]
    if missing:
        raise ValueError(
            f"attribute {missing[0]} is in no group; add it to a group (a singleton group "
            f"[{missing[0]}] is fine)"
        )
    return gl


def as_group_index(
    groups: Sequence[Sequence[int]] | GroupIndex,
    n_attributes: int,
    device: torch.device | str = "cpu",
) -> GroupIndex:
    """Accept a list of lists or a :class:`GroupIndex`."""
    if isinstance(groups, GroupIndex):
        return groups.to(device)
    return GroupIndex.from_groups(groups, n_attributes, device)


def group_norms(S: Tensor, groups: Sequence[Sequence[int]] | GroupIndex) -> Tensor:
    """``(K, G)`` tensor of ``‖S[k, g]‖₂`` (autograd-safe: subgradient 0 at a zero group)."""
    gi = as_group_index(groups, S.shape[1], S.device)
    sq = torch.zeros(S.shape[0], gi.n_groups, dtype=S.dtype, device=S.device)
    sq = sq.index_add(1, gi.gid, S[:, gi.idx] ** 2)
    pos = sq > 0
    return torch.where(pos, torch.where(pos, sq, torch.ones_like(sq)).sqrt(), torch.zeros_like(sq))


def group_norm(S: Tensor, groups: Sequence[Sequence[int]] | GroupIndex) -> Tensor:
    """``Ω(S) = Σ_k Σ_g ‖S[k, g]‖₂`` (0-dim tensor)."""
    return group_norms(S, groups).sum()


def l1_norm(L: Tensor) -> Tensor:
    """``‖L‖₁ = Σ |L|``."""
    return L.abs().sum()


def frobenius_sq(L: Tensor) -> Tensor:
    """``‖L‖_F² = Σ L²``."""
    return (L * L).sum()


def prox_group(
    V: Tensor, groups: Sequence[Sequence[int]] | GroupIndex, threshold: float | Tensor
) -> Tensor:
    """Block soft-thresholding: the exact prox of ``τ Ω`` for disjoint groups.

    ``U[k, g] = V[k, g] · max(0, 1 − τ_g / ‖V[k, g]‖₂)``; ``threshold`` is ``τ`` (scalar) or a
    ``(G,)`` tensor of per-group ``τ_g``. Columns in no group are returned unchanged.
    Raises ValueError for overlapping groups (their prox has no closed form: smooth them with
    :func:`smoothed_group_norm`).
    """
    gi = as_group_index(groups, V.shape[1], V.device)
    if not gi.disjoint:
        raise ValueError(
            "prox_group needs disjoint groups; use smoothed_group_norm for overlapping ones"
        )
    norms = group_norms(V, gi)  # (K, G)
    tau = torch.as_tensor(threshold, dtype=V.dtype, device=V.device)
    safe = torch.where(norms > 0, norms, torch.ones_like(norms))
    factor = torch.clamp(1.0 - tau / safe, min=0.0)  # (K, G)
    factor = torch.where(norms > 0, factor, torch.zeros_like(factor))
    U = V.clone()
    U[:, gi.idx] = V[:, gi.idx] * factor[:, gi.gid]
    return U


def prox_l1(V: Tensor, threshold: float | Tensor) -> Tensor:
    """Soft-thresholding, the prox of ``τ‖·‖₁``: ``sign(V) · max(0, |V| − τ)``."""
    tau = torch.as_tensor(threshold, dtype=V.dtype, device=V.device)
    return torch.sign(V) * torch.clamp(V.abs() - tau, min=0.0)


def smoothed_group_norm(
    S: Tensor, groups: Sequence[Sequence[int]] | GroupIndex, eta: float, weight: float = 1.0
) -> tuple[Tensor, Tensor]:
    """Nesterov-smoothed weighted group norm ``μΩ_η(S)`` and its gradient (``μ`` = ``weight``).

    For each (k, g): ``u = μ S[k, g]``, ``α = u / max(η, ‖u‖)`` (the projection of ``u/η`` on the
    unit ball), value ``⟨α, u⟩ − η‖α‖²/2`` — i.e. ``‖u‖ − η/2`` if ``‖u‖ ≥ η`` else
    ``‖u‖²/(2η)`` (a Huber function of the group norm) — and gradient ``μ α`` scattered back onto
    ``S[k, g]`` (summed over the groups containing an attribute). Works for overlapping groups.
    Returns ``(value (0-dim), grad (K, M))``.
    """
    if eta <= 0:
        raise ValueError(f"eta must be > 0 (got {eta})")
    gi = as_group_index(groups, S.shape[1], S.device)
    U = weight * S[:, gi.idx]  # (K, T)
    sq = torch.zeros(S.shape[0], gi.n_groups, dtype=S.dtype, device=S.device)
    sq.index_add_(1, gi.gid, U * U)
    norms = sq.sqrt()
    denom = torch.clamp(norms, min=eta)
    alpha = U / denom[:, gi.gid]
    value = (alpha * U).sum() - 0.5 * eta * (alpha * alpha).sum()
    grad = torch.zeros_like(S)
    grad.index_add_(1, gi.idx, weight * alpha)
    return value, grad


def smoothing_lipschitz(
    groups: Sequence[Sequence[int]] | GroupIndex,
    n_attributes: int,
    eta: float,
    weight: float = 1.0,
) -> float:
    """Lipschitz constant of ``∇ μΩ_η``: ``‖C‖²/η = μ² max_m #{g ∋ m} / η``."""
    gi = as_group_index(groups, n_attributes)
    cmax = int(gi.counts.max()) if gi.counts.numel() else 0
    return weight * weight * cmax / eta


def smoothing_gap_bound(n_rows: int, n_groups: int, eta: float) -> float:
    """``max_{α∈Q} ‖α‖²/2 · η = η K G / 2``: bound on ``μΩ(S) − μΩ_η(S)`` for every ``S``."""
    return eta * n_rows * n_groups / 2.0
