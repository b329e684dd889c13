from __future__ import annotations

import numpy as np
import pytest
import torch

from apcnn import solvers as sv
from apcnn.models.latent import LatentTaskLayer

GROUPS = [[0, 1, 2], [3, 4], [5]]
D, K, M = 8, 3, 6


def test_forward_shapes_and_values():
    torch.manual_seed(0)
    layer = LatentTaskLayer(D, K, M)
    with torch.no_grad():
        layer.bias.copy_(torch.arange(M, dtype=torch.float32))
    x2 = torch.randn(5, D)
    x3 = torch.randn(5, M, D)
    torch.testing.assert_close(layer(x2), x2 @ layer.L @ layer.S + layer.bias)
    expected = torch.stack([x3[:, m] @ layer.W[:, m] for m in range(M)], 1) + layer.bias
    torch.testing.assert_close(layer(x3), expected)
    assert layer.W.shape == (D, M)
    with pytest.raises(ValueError, match=r"features must have shape \(B, 8\) or \(B, 6, 8\)"):
        layer(torch.randn(5, M + 1, D))
    assert "num_latent=3" in repr(layer)


@pytest.mark.parametrize("shared", [True, False])
def test_load_solution_reproduces_solver_scores(shared):
    rng = np.random.default_rng(1)
    X = rng.standard_normal((40, D)) if shared else rng.standard_normal((40, M, D))
    Y = np.where(rng.random((40, M)) < 0.5, -1.0, 1.0)
    res = sv.fit_alternating(X, Y, GROUPS, mu=1.0, gamma=0.1, lam=0.1, K=K, bias=True, max_outer=3)
    layer = LatentTaskLayer(D, K, M).double().load_solution(res.L, res.S, res.bias)
    scores = layer(torch.tensor(X)).detach()
    loss = (0.5 * torch.clamp(1 - torch.tensor(Y) * scores, min=0) ** 2).sum()
    pen = layer.penalty(GROUPS, 1.0, 0.1, 0.1).detach()
    assert float(loss + pen) == pytest.approx(res.history[-1], rel=1e-10)


def test_load_solution_checks_and_bias_handling():
    layer = LatentTaskLayer(D, K, M, bias=False)
    assert layer.bias is None
    with pytest.raises(ValueError, match="has no bias"):
        layer.load_solution(np.zeros((D, K)), np.zeros((K, M)), np.zeros(M))
    with pytest.raises(ValueError, match=r"L must have shape \(8, 3\)"):
        layer.load_solution(np.zeros((D, K + 1)), np.zeros((K, M)))
    with pytest.raises(ValueError, match="S contains NaN"):
        layer.load_solution(np.zeros((D, K)), np.full((K, M), np.nan))
    with_bias = LatentTaskLayer(D, K, M)
    with torch.no_grad():
        with_bias.bias.fill_(3.0)
    with_bias.load_solution(torch.ones(D, K), torch.ones(K, M))
    assert (with_bias.bias == 0).all() and (with_bias.L == 1).all()
    with pytest.raises(ValueError, match="num_latent must be a positive integer"):
        LatentTaskLayer(D, 0, M)


def test_penalty_is_differentiable_at_zero_groups():
    layer = LatentTaskLayer(D, K, M).double()
    with torch.no_grad():
        layer.S[:, 3:5] = 0.0
        layer.L[0] = 0.0
    pen = layer.penalty(GROUPS, 0.7, 0.2, 0.3)
    ref = sv.objective(
        np.zeros((1, D)),
        np.ones((1, M)),
        layer.L.detach().numpy(),
        layer.S.detach().numpy(),
        GROUPS,
        0.7,
        0.2,
        0.3,
        np.zeros((1, M), bool),
    )
    assert float(pen.detach()) == pytest.approx(ref, rel=1e-12)
    pen.backward()
    assert torch.isfinite(layer.S.grad).all() and torch.isfinite(layer.L.grad).all()
    assert (layer.S.grad[:, 3:5] == 0).all()
