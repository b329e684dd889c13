from __future__ import annotations

import numpy as np
import pytest
import torch

from apcnn import regularizers as R

GROUPS = [[0, 1, 2], [3, 4], [5]]
OVERLAP = [[0, 1, 2], [2, 3, 4], [4, 5, 0]]


def _S(seed: int = 0, K: int = 4, M: int = 6) -> torch.Tensor:
    return torch.randn(K, M, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _np_group_norm(S: np.ndarray, groups) -> float:
    return sum(np.linalg.norm(S[k, g]) for k in range(S.shape[0]) for g in groups)


@pytest.mark.parametrize("groups", [GROUPS, OVERLAP])
def test_group_norm_matches_numpy(groups):
    S = _S()
    assert float(R.group_norm(S, groups)) == pytest.approx(_np_group_norm(S.numpy(), groups))
    assert R.group_norms(S, groups).shape == (4, 3)


def test_norms_l1_frobenius():
    S = _S(1)
    assert float(R.l1_norm(S)) == pytest.approx(np.abs(S.numpy()).sum())
    assert float(R.frobenius_sq(S)) == pytest.approx((S.numpy() ** 2).sum())


def test_prox_group_closed_form_and_optimality():
    V = _S(2)
    V[1, [3, 4]] = 0.01  # a group under the threshold
    tau = 0.7
    U = R.prox_group(V, GROUPS, tau).numpy()
    Vn = V.numpy()
    for k in range(V.shape[0]):
        for g in GROUPS:
            n = np.linalg.norm(Vn[k, g])
            expected = Vn[k, g] * max(0.0, 1 - tau / n)
            np.testing.assert_allclose(U[k, g], expected, atol=1e-15)
            # optimality of argmin ½‖U − V‖² + τΩ(U)
            u = U[k, g]
            if np.linalg.norm(u) > 0:
                residual = u - Vn[k, g] + tau * u / np.linalg.norm(u)
                np.testing.assert_allclose(residual, 0, atol=1e-12)
            else:
                assert np.linalg.norm(Vn[k, g]) <= tau
    assert (U[1, [3, 4]] == 0).all()


def test_prox_group_per_group_thresholds():
    V = _S(3)
    taus = torch.tensor([0.1, 10.0, 0.0], dtype=torch.float64)
    U = R.prox_group(V, GROUPS, taus)
    assert (U[:, [3, 4]] == 0).all()
    torch.testing.assert_close(U[:, 5], V[:, 5])
    assert not torch.equal(U[:, :3], V[:, :3])


def test_prox_group_refuses_overlapping():
    with pytest.raises(ValueError, match="disjoint"):
        R.prox_group(_S(), OVERLAP, 0.1)


def test_prox_l1_closed_form():
    V = torch.tensor([-2.0, -0.5, 0.0, 0.3, 1.5], dtype=torch.float64)
    torch.testing.assert_close(
        R.prox_l1(V, 0.5), torch.tensor([-1.5, 0.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    )


@pytest.mark.parametrize("groups", [GROUPS, OVERLAP])
def test_smoothed_group_norm_value_gradient_and_bounds(groups):
    S = _S(4)
    S[0, :] = 1e-3  # groups inside the quadratic zone
    mu, eta = 0.8, 0.05
    value, grad = R.smoothed_group_norm(S, groups, eta, mu)
    # Huber form of the group norm
    norms = mu * R.group_norms(S, groups)
    huber = torch.where(norms >= eta, norms - eta / 2, norms**2 / (2 * eta)).sum()
    assert float(value) == pytest.approx(float(huber), rel=1e-12)
    s = S.clone().requires_grad_(True)
    R.smoothed_group_norm(s, groups, eta, mu)[0].backward()
    torch.testing.assert_close(grad, s.grad)
    exact = mu * float(R.group_norm(S, groups))
    bound = R.smoothing_gap_bound(S.shape[0], len(groups), eta)
    assert exact - bound <= float(value) <= exact


@pytest.mark.parametrize("groups", [GROUPS, OVERLAP])
def test_smoothing_lipschitz_bounds_gradient_changes(groups):
    mu, eta = 1.3, 0.1
    lip = R.smoothing_lipschitz(groups, 6, eta, mu)
    cmax = 2 if groups is OVERLAP else 1
    assert lip == pytest.approx(mu**2 * cmax / eta)
    worst = 0.0
    for seed in range(20):
        A, B = 0.05 * _S(seed), 0.05 * _S(seed + 100)
        ga = R.smoothed_group_norm(A, groups, eta, mu)[1]
        gb = R.smoothed_group_norm(B, groups, eta, mu)[1]
        ratio = float((ga - gb).norm() / (A - B).norm())
        assert ratio <= lip * (1 + 1e-12)
        worst = max(worst, ratio)
    assert worst > 0.2 * lip  # the bound is not vacuous


def test_group_norm_autograd_is_finite_at_zero():
    S = torch.zeros(2, 6, dtype=torch.float64, requires_grad=True)
    R.group_norm(S, GROUPS).backward()
    assert torch.isfinite(S.grad).all() and (S.grad == 0).all()


def test_group_index():
    gi = R.GroupIndex.from_groups(OVERLAP, 6)
    assert not gi.disjoint and gi.n_groups == 3 and gi.counts.tolist() == [2, 1, 2, 1, 2, 1]
    gd = R.GroupIndex.from_groups(GROUPS, 6)
    assert gd.disjoint and gd.column_group().tolist() == [0, 0, 0, 1, 1, 2]
    with pytest.raises(ValueError, match="outside range"):
        R.GroupIndex.from_groups([[0, 7]], 6)
    with pytest.raises(ValueError, match="eta must be > 0"):
        R.smoothed_group_norm(_S(), GROUPS, 0.0)
