"""Attribute-specific features of ``fc`` tails as an operator, never as an (N, M, D) array.

With ``tail="fc"`` (:mod:`apcnn.models.fc_tail`) attribute m's feature of image i is

    x_m(i) = relu(u_m(i)),    u_m(i) = A_m h(i) + c_m,    A_m (D, Dh), c_m (D,), h(i) ∈ R^Dh

with h the shared trunk feature. Since ``relu(u) = u + relu(−u)``, ``x_m(i) = A_m h(i) + c_m +
r_m(i)`` with ``r_m(i) = relu(−u_m(i)) ≥ 0`` nonzero only where the pre-activation is negative.
:class:`FactoredFeatures` stores h (N, Dh), the M small matrices and r as a sparse list of its
nonzeros, and gives the solvers (:mod:`apcnn.solvers`) the three products they need, exactly:

* ``scores(W)`` ``(N, M)``: ``z[i, m] = x_m(i)ᵀ w_m = h(i)ᵀ (A_mᵀ w_m) + c_mᵀ w_m + r_m(i)ᵀ w_m``;
* ``XtG(G)`` ``(D, M)``: column m ``Σ_i G[i, m] x_m(i) = A_m (hᵀ G[:, m]) + c_m Σ_i G[i, m] +
  Σ_i G[i, m] r_m(i)``;
* ``project(L)`` ``(M, N, K)``: ``P_m = X_m L = h (A_mᵀ L) + 1 (c_mᵀ L) + R_m L``.

Memory: h (N·Dh), the matrices (M·D·Dh) and 10 bytes per nonzero of r in float32 (value, int32
row, int16 column), instead of N·M·D floats (plus the solvers' attribute-major copy). The
correction is what grows with N once SGD has moved the tails away from the identity: with a
fraction q of negative pre-activations it is 10·q·N·M·D bytes (q = 0.2 to 0.3 on the CUB
replica after one epoch, docs/benchmarks.md "Scale"), smaller than the dense array while
q < 0.4. Time per ``scores``/``XtG``: one (N, Dh) × (Dh, M)
GEMM instead of a memory-bound pass over N·M·D entries. ``r`` is found at construction, by
rows in chunks, only for the entries (m, d) whose pre-activation can be negative: with ``h ≥ 0``
and ``h ≤ h_max`` entrywise, ``u ≥ c + min(A, 0) h_max``; where that bound is ``≥ 0`` (e.g. the
fc tails' identity initialisation) there is nothing to compute. ``relu=False``: plain affine
features ``x_m = A_m h + c_m``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["FactoredFeatures"]

#: rows per chunk when scanning pre-activations, and nonzeros per chunk of the sparse products
_CHUNK_BYTES = 64 * 2**20


def _tensor(a: Any, name: str) -> Tensor:
    if isinstance(a, Tensor):
        return a.detach()
    try:
        return torch.as_tensor(np.asarray(a))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be a NumPy array or torch tensor ({exc})") from None


def _all_finite(t: Tensor) -> bool:
    """No NaN or inf in ``t``, checked by chunks of its first dimension: ``torch.isfinite`` on
    the whole (M, D, Dh) tail matrices would allocate temporaries larger than them (at M = 312,
    D = Dh = 1280 the matrices are 2.0 GB and the check peaked at 3.3 GB more)."""
    if t.ndim == 0 or t.numel() == 0:
        return t.numel() == 0 or bool(torch.isfinite(t))
    row = max(1, t[0].numel() * t.element_size())
    step = max(1, _CHUNK_BYTES // row)
    return all(bool(torch.isfinite(t[s : s + step]).all()) for s in range(0, t.shape[0], step))


class FactoredFeatures:
    """``x_m(i) = relu(A_m h(i) + c_m)`` for all i, m, as an operator (see the module docstring).

    Args:
        h: ``(N, Dh)`` shared trunk features.
        weight: ``(M, D, Dh)`` the tails' matrices ``A_m`` (``StackedLinearTail.weight``).
        bias: ``(M, D)`` the tails' offsets ``c_m`` (``StackedLinearTail.bias``); None: zeros.
        relu: the fc tails' ReLU (default); False: affine features.

    Accepted by every function of :mod:`apcnn.solvers` in place of ``X`` (N, M, D); results
    are NumPy arrays when ``h`` is one, else tensors (the solvers' rule for ``X``).
    """

    def __init__(self, h: Any, weight: Any, bias: Any = None, *, relu: bool = True) -> None:
        ht, wt = _tensor(h, "h"), _tensor(weight, "weight")
        self.numpy = not isinstance(h, Tensor)
        if ht.ndim != 2 or wt.ndim != 3 or wt.shape[2] != ht.shape[1]:
            raise ValueError(
                f"h must be (N, Dh) and weight (M, D, Dh); got {tuple(ht.shape)} and "
                f"{tuple(wt.shape)}"
            )
        if not ht.dtype.is_floating_point:
            ht = ht.double()
        wt = wt.to(ht)
        ct = torch.zeros(wt.shape[:2], dtype=ht.dtype) if bias is None else _tensor(bias, "bias")
        ct = ct.to(ht)
        if tuple(ct.shape) != tuple(wt.shape[:2]):
            raise ValueError(f"bias must be (M, D) = {tuple(wt.shape[:2])}; got {tuple(ct.shape)}")
        for t, name in ((ht, "h"), (wt, "weight"), (ct, "bias")):
            if not _all_finite(t):
                raise ValueError(f"{name} contains NaN or inf")
        self.h, self.A, self.c, self.relu = ht, wt, ct, bool(relu)
        self.N, self.Dh = ht.shape
        self.M, self.D = wt.shape[:2]
        empty = torch.zeros(0, dtype=torch.long, device=ht.device)
        self.rows, self.cols, self.vals = empty, empty, torch.zeros(0, dtype=ht.dtype)
        if self.relu:
            self.rows, self.cols, self.vals = self._negative_parts()

    @classmethod
    def from_tail(cls, h: Any, tail: Any) -> FactoredFeatures:
        """From a :class:`apcnn.models.fc_tail.StackedLinearTail` (its ReLU included)."""
        return cls(h, tail.weight, tail.bias, relu=True)

    # ------------------------------------------------------------------------- construction
    def _negative_parts(self) -> tuple[Tensor, Tensor, Tensor]:
        """The nonzeros of ``r = relu(−u)``: flat row ``i·M + m``, column ``d``, value.

        Scanned by blocks of the (m, d) entries that can be negative (rows of the flattened
        tail matrices, at most ``_CHUNK_BYTES`` of them copied at a time, none when all can be)
        and, within a block, by chunks of samples. Indices are stored compactly (int32 rows
        while N·M < 2³¹, int16 columns while D < 2¹⁵: 10 bytes per nonzero in float32)."""
        M, D = self.M, self.D
        flat_A = self.A.reshape(M * D, self.Dh)
        flat_c = self.c.reshape(M * D)
        block = max(1, _CHUNK_BYTES // (self.h.element_size() * self.Dh))  # rows of flat_A
        maybe: Tensor | None = None  # None: every entry can be negative
        if bool((self.h >= 0).all()):  # u ≥ c + min(A, 0) h_max: entries that are never < 0
            h_max = self.h.amax(0)
            low = torch.cat(
                [flat_A[s : s + block].clamp(max=0) @ h_max for s in range(0, M * D, block)]
            )
            maybe = torch.nonzero(low + flat_c < 0).flatten()
            if maybe.numel() == M * D:
                maybe = None
        total = M * D if maybe is None else maybe.numel()
        row_type = torch.int32 if self.N * M < 2**31 else torch.long
        col_type = torch.int16 if D < 2**15 else torch.int32
        rows, cols, vals = [], [], []
        for a in range(0, total, block):
            if maybe is None:  # a view, no copy
                idx = torch.arange(a, min(a + block, total), device=self.h.device)
                A_, c_ = flat_A[a : a + block], flat_c[a : a + block]
            else:
                idx = maybe[a : a + block]
                A_, c_ = flat_A[idx], flat_c[idx]
            step = max(1, _CHUNK_BYTES // (self.h.element_size() * idx.numel()))
            for s in range(0, self.N, step):
                u = self.h[s : s + step] @ A_.T + c_
                i, j = torch.nonzero(u < 0, as_tuple=True)
                md = idx[j]
                rows.append(((i + s) * M + md // D).to(row_type))
                cols.append((md % D).to(col_type))
                vals.append(-u[i, j])
        if not any(v.numel() for v in vals):
            return self.rows, self.cols, self.vals
        out = []
        for parts in (rows, cols, vals):  # one concatenation at a time: the lists are freed
            out.append(torch.cat(parts))
            parts.clear()
        return out[0], out[1], out[2]

    # ------------------------------------------------------------------------- the array view
    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.N, self.M, self.D)

    ndim = 3

    @property
    def dtype(self) -> torch.dtype:
        return self.h.dtype

    @property
    def device(self) -> torch.device:
        return self.h.device

    @property
    def nnz(self) -> int:
        """Nonzeros of the ReLU correction r (0 where every pre-activation is ≥ 0)."""
        return int(self.vals.numel())

    @property
    def correction_nbytes(self) -> int:
        """Bytes of the ReLU correction (its values and indices): the part that grows with N."""
        return sum(x.numel() * x.element_size() for x in (self.rows, self.cols, self.vals))

    def numel(self) -> int:
        return self.N * self.M * self.D

    @property
    def nbytes(self) -> int:
        """Bytes held (h, the matrices and the correction), vs ``4·N·M·D`` for the dense array."""
        t = (self.h, self.A, self.c, self.rows, self.cols, self.vals)
        return sum(x.numel() * x.element_size() for x in t)

    def to(self, dtype: torch.dtype | None = None, device: Any = None) -> FactoredFeatures:
        """A copy in another dtype/device (self when nothing changes)."""
        dtype = dtype or self.dtype
        device = torch.device(device) if device is not None else self.device
        if dtype == self.dtype and device == self.device:
            return self
        new = object.__new__(FactoredFeatures)
        new.__dict__.update(self.__dict__)
        new.h, new.A, new.c, new.vals = (
            t.to(device=device, dtype=dtype) for t in (self.h, self.A, self.c, self.vals)
        )
        new.rows, new.cols = self.rows.to(device), self.cols.to(device)
        return new

    def dense(self) -> Tensor:
        """``(N, M, D)``: the array itself (for tests and small problems)."""
        u = (self.h @ self.A.reshape(self.M * self.D, self.Dh).T).view(self.N, self.M, self.D)
        u = u + self.c
        return torch.relu(u) if self.relu else u

    # ------------------------------------------------------------------------- the products
    def _nnz_chunks(self, width: int) -> Any:
        step = max(1, _CHUNK_BYTES // (self.vals.element_size() * max(width, 1)))
        for s in range(0, self.nnz, step):  # indices as int64 for index_add_ and indexing
            r, d = self.rows[s : s + step].long(), self.cols[s : s + step].long()
            yield r, d, self.vals[s : s + step]

    def scores(self, W: Tensor) -> Tensor:
        """``(N, M)``: ``x_m(i)ᵀ w_m`` for ``W`` ``(D, M)``."""
        V = torch.bmm(W.T.unsqueeze(1), self.A).squeeze(1)  # (M, Dh): row m is (A_mᵀ w_m)ᵀ
        z = self.h @ V.T + (self.c * W.T).sum(1)
        if self.nnz:
            zf = z.view(-1)
            for r, d, v in self._nnz_chunks(1):
                zf.index_add_(0, r, v * W[d, r % self.M])
        return z

    def XtG(self, G: Tensor) -> Tensor:
        """``(D, M)``: column m is ``Σ_i G[i, m] x_m(i)``."""
        H = self.h.T @ G  # (Dh, M)
        out = torch.bmm(self.A, H.T.unsqueeze(-1)).squeeze(-1) + self.c * G.sum(0)[:, None]
        if self.nnz:
            of, gf = out.view(-1), G.reshape(-1)
            for r, d, v in self._nnz_chunks(1):
                of.index_add_(0, (r % self.M) * self.D + d, v * gf[r])
        return out.T

    def project(self, L: Tensor) -> Tensor:
        """``(M, N, K)``: ``P_m = X_m L``, filled by chunks of rows."""
        K = L.shape[1]
        B = torch.bmm(L.T.expand(self.M, -1, -1), self.A)  # (M, K, Dh): (A_mᵀ L)ᵀ
        Bf = B.permute(2, 0, 1).reshape(self.Dh, self.M * K)
        cL = self.c @ L  # (M, K)
        P = torch.empty(self.M, self.N, K, dtype=L.dtype, device=L.device)
        step = max(1, _CHUNK_BYTES // (L.element_size() * self.M * K))
        for s in range(0, self.N, step):
            part = (self.h[s : s + step] @ Bf).view(-1, self.M, K) + cL
            P[:, s : s + step] = part.transpose(0, 1)
        if self.nnz:
            Pf = P.view(self.M * self.N, K)
            for r, d, v in self._nnz_chunks(K):
                # flat row i·M + m of r -> row m·N + i of P
                Pf.index_add_(0, (r % self.M) * self.N + r // self.M, v[:, None] * L[d])
        return P

    def __repr__(self) -> str:
        return (
            f"FactoredFeatures(N={self.N}, M={self.M}, D={self.D}, Dh={self.Dh}, "
            f"relu={self.relu}, nnz={self.nnz}, {self.nbytes / 1e6:.1f} MB)"
        )
