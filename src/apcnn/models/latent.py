"""The multi-task latent layer ``W = L S`` as a torch module (the last layer of MG-CNN).

Scores ``f_m(i) = x_m(i)ᵀ L s_m + b_m`` for attribute-specific features ``x`` ``(B, M, D)`` (one
CNN per attribute) or shared features ``(B, D)``. The solver output of
:func:`apcnn.solvers.fit_alternating` is copied in with :meth:`LatentTaskLayer.load_solution`; the
penalty of eq. 2 is available for back-propagation with :meth:`LatentTaskLayer.penalty`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from apcnn.regularizers import frobenius_sq, group_norm


class LatentTaskLayer(nn.Module):
    """``W = L S`` with ``L`` ``(D, K)``, ``S`` ``(K, M)`` and an optional bias ``(M,)``.

    Args:
        in_features: ``D``, the feature size.
        num_latent: ``K``, the number of latent tasks.
        num_attributes: ``M``.
        bias: learn a per-attribute bias.
    """

    def __init__(
        self, in_features: int, num_latent: int, num_attributes: int, *, bias: bool = True
    ) -> None:
        super().__init__()
        for name, v in (
            ("in_features", in_features),
            ("num_latent", num_latent),
            ("num_attributes", num_attributes),
        ):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer (got {v!r})")
        self.in_features = in_features
        self.num_latent = num_latent
        self.num_attributes = num_attributes
        self.L = nn.Parameter(torch.empty(in_features, num_latent))
        self.S = nn.Parameter(torch.empty(num_latent, num_attributes))
        if bias:
            self.bias = nn.Parameter(torch.empty(num_attributes))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``L ~ N(0, 1/D)``, ``S ~ N(0, 1/K)``, bias 0 (unit-variance scores for unit inputs)."""
        with torch.no_grad():
            self.L.normal_(0.0, 1.0 / math.sqrt(self.in_features))
            self.S.normal_(0.0, 1.0 / math.sqrt(self.num_latent))
            if self.bias is not None:
                self.bias.zero_()

    @property
    def W(self) -> Tensor:
        """``L S``, ``(D, M)``."""
        return self.L @ self.S

    def forward(self, x: Tensor) -> Tensor:
        """``(B, D)`` or ``(B, M, D)`` features → ``(B, M)`` scores."""
        D, M = self.in_features, self.num_attributes
        if x.ndim == 2 and x.shape[1] == D:
            out = (x @ self.L) @ self.S
        elif x.ndim == 3 and x.shape[1] == M and x.shape[2] == D:
            out = torch.einsum("bmd,dm->bm", x, self.W)
        else:
            raise ValueError(
                f"features must have shape (B, {D}) or (B, {M}, {D}); got {tuple(x.shape)}"
            )
        return out + self.bias if self.bias is not None else out

    def load_solution(self, L: Any, S: Any, bias: Any = None) -> LatentTaskLayer:
        """Copy a solver solution (NumPy or torch) into the parameters; returns ``self``.

        ``bias=None`` sets the layer's bias (if any) to zero; a bias for a layer built with
        ``bias=False`` is an error.
        """

        def tensor(a: Any, name: str, shape: tuple[int, ...]) -> Tensor:
            t = a.detach() if isinstance(a, Tensor) else torch.as_tensor(np.asarray(a))
            if tuple(t.shape) != shape:
                raise ValueError(
                    f"{name} must have shape {shape} for this layer; got {tuple(t.shape)}"
                )
            if not bool(torch.isfinite(t).all()):
                raise ValueError(f"{name} contains NaN or inf")
            return t

        Lt = tensor(L, "L", (self.in_features, self.num_latent))
        St = tensor(S, "S", (self.num_latent, self.num_attributes))
        if bias is not None and self.bias is None:
            raise ValueError("this layer has no bias; build it with bias=True or pass bias=None")
        with torch.no_grad():
            self.L.copy_(Lt)
            self.S.copy_(St)
            if self.bias is not None:
                if bias is None:
                    self.bias.zero_()
                else:
                    self.bias.copy_(tensor(bias, "bias", (self.num_attributes,)))
        return self

    def penalty(
        self, groups: Sequence[Sequence[int]], mu: float, gamma: float, lam: float
    ) -> Tensor:
        """``μ Σ_k Σ_g ‖S[k, g]‖₂ + γ‖L‖₁ + λ‖L‖_F²`` (differentiable; subgradient 0 at 0)."""
        L = self.L
        return mu * group_norm(self.S, groups) + gamma * L.abs().sum() + lam * frobenius_sq(L)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, num_latent={self.num_latent}, "
            f"num_attributes={self.num_attributes}, bias={self.bias is not None}"
        )
