"""The factored fc-tail features (apcnn.features_store) against the dense (N, M, D) path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from apcnn import solvers as sv
from apcnn.features_store import FactoredFeatures
from apcnn.models.fc_tail import StackedLinearTail

N, M, D, DH, K = 50, 5, 7, 6, 3
GROUPS = [[0, 1], [2, 3, 4]]


def make(seed: int = 0, relu: bool = True):
    rng = np.random.default_rng(seed)
    h = np.abs(rng.standard_normal((N, DH)))  # pooled features are >= 0
    A = rng.standard_normal((M, D, DH)) * 0.6 + np.eye(D, DH)  # many negative pre-activations
    c = 0.3 * rng.standard_normal((M, D))
    F = FactoredFeatures(h, A, c, relu=relu)
    X = F.dense().numpy()
    W = rng.standard_normal((D, M))
    Y = np.sign(np.einsum("nmd,dm->nm", X, W) - np.median(np.einsum("nmd,dm->nm", X, W)))
    Y[Y == 0] = 1
    mask = rng.random((N, M)) > 0.15
    return F, X, Y, mask


@pytest.mark.parametrize("relu", [True, False])
def test_products_equal_the_dense_ones(relu):
    F, X, _, _ = make(relu=relu)
    assert F.shape == X.shape
    if relu:
        assert F.nnz > 0  # the ReLU correction is exercised
    rng = np.random.default_rng(1)
    Xt = torch.as_tensor(X)
    W = torch.as_tensor(rng.standard_normal((D, M)))
    G = torch.as_tensor(rng.standard_normal((N, M)))
    L = torch.as_tensor(rng.standard_normal((D, K)))
    torch.testing.assert_close(F.scores(W), torch.einsum("nmd,dm->nm", Xt, W))
    torch.testing.assert_close(F.XtG(G), torch.einsum("nm,nmd->dm", G, Xt))
    torch.testing.assert_close(F.project(L), torch.einsum("nmd,dk->mnk", Xt, L))


def test_identity_tails_need_no_correction():
    rng = np.random.default_rng(0)
    h = np.abs(rng.standard_normal((N, D)))
    tail = StackedLinearTail(D, M).double()
    F = FactoredFeatures.from_tail(h, tail)
    assert F.nnz == 0
    np.testing.assert_array_equal(F.dense().numpy(), np.repeat(h[:, None], M, 1))
    with torch.no_grad():
        tail.weight.add_(0.3 * torch.randn(M, D, D, dtype=torch.float64))
        F = FactoredFeatures.from_tail(h, tail)
        torch.testing.assert_close(F.dense(), tail(torch.as_tensor(h)))
    assert F.nbytes < 8 * N * M * D + 8 * M * D * D + 20 * F.nnz + 8 * N * D + 8 * M * D


def test_objective_and_solutions_match_the_dense_path():
    F, X, Y, mask = make()
    kw = dict(mu=0.3, gamma=0.01, lam=0.1, K=K, bias=True, max_outer=30, tol=1e-9)
    kw.update(inner_tol=1e-10, max_iter=3000)
    dense = sv.fit_alternating(X, Y, GROUPS, mask=mask, **kw)
    fact = sv.fit_alternating(F, Y, GROUPS, mask=mask, **kw)
    assert isinstance(fact.L, np.ndarray) and fact.L.dtype == np.float64
    np.testing.assert_allclose(fact.history, dense.history, rtol=1e-6)
    for a, b in ((fact.L, dense.L), (fact.S, dense.S), (fact.bias, dense.bias)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6 * np.abs(b).max())
    args = (Y, dense.L, dense.S, GROUPS, 0.3, 0.01, 0.1, mask)
    f_dense = sv.objective(X, *args, bias=dense.bias)
    f_fact = sv.objective(F, *args, bias=dense.bias)
    assert f_fact == pytest.approx(f_dense, rel=1e-12)
    g = sv.optimality_gap_L(F, Y, dense.L, dense.S, 0.01, 0.1, mask, bias=dense.bias)
    assert g == pytest.approx(
        sv.optimality_gap_L(X, Y, dense.L, dense.S, 0.01, 0.1, mask, bias=dense.bias), rel=1e-9
    )


def test_torch_in_torch_out():
    F, X, Y, mask = make()
    Ft = FactoredFeatures(torch.as_tensor(F.h).float(), F.A.float(), F.c.float())
    S = sv.fit_combination(Ft, Y, np.ones((D, K)), GROUPS, 0.3, mask, max_iter=50)
    assert isinstance(S, torch.Tensor) and S.dtype == torch.float32


def test_large_dense_arrays_are_not_copied(monkeypatch):
    """Above COPY_LIMIT the L-step reads X in chunks of rows: same results, no (M, N, D) copy."""
    _, X, Y, mask = make()
    kw = dict(mu=0.3, gamma=0.01, lam=0.1, K=K, bias=True, max_outer=5)
    ref = sv.fit_alternating(X, Y, GROUPS, mask=mask, **kw)
    monkeypatch.setattr(sv, "COPY_LIMIT", 0)
    monkeypatch.setattr(sv, "_CHUNK_BYTES", 8 * M * D * 7)  # 7 rows per chunk
    made: list[bool] = []
    orig = sv._Data.xm
    monkeypatch.setattr(sv._Data, "xm", lambda self: made.append(True) or orig(self))
    res = sv.fit_alternating(X, Y, GROUPS, mask=mask, **kw)
    assert not made
    np.testing.assert_allclose(res.history, ref.history, rtol=1e-10)
    np.testing.assert_allclose(res.L, ref.L, rtol=1e-8, atol=1e-10)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="weight"):
        FactoredFeatures(np.ones((3, 4)), np.ones((2, 5, 3)))
    with pytest.raises(ValueError, match="bias"):
        FactoredFeatures(np.ones((3, 4)), np.ones((2, 5, 4)), np.ones((5, 2)))


@pytest.mark.parametrize("signed_h", [False, True])
def test_scan_by_blocks_with_compact_indices(monkeypatch, signed_h):
    """Blocks of 3 tail rows and a few samples at a time (a bound that prunes entries, or none
    with signed h): the same nonzeros and products, int32 rows and int16 columns."""
    import apcnn.features_store as fs

    monkeypatch.setattr(fs, "_CHUNK_BYTES", 8 * DH * 3)
    rng = np.random.default_rng(3)
    h = rng.standard_normal((N, DH)) if signed_h else np.abs(rng.standard_normal((N, DH)))
    A = np.eye(D, DH) + 0.4 * rng.standard_normal((M, D, DH)) * (rng.random((M, D, 1)) < 0.5)
    c = 0.2 * rng.random((M, D))
    F = FactoredFeatures(h, A, c)
    u = np.einsum("nk,mdk->nmd", h, A) + c
    assert F.nnz == int((u < 0).sum()) > 0
    assert F.rows.dtype == torch.int32 and F.cols.dtype == torch.int16
    assert F.nbytes == 8 * (h.size + A.size + c.size) + (4 + 2 + 8) * F.nnz
    Xt = torch.as_tensor(np.maximum(u, 0))
    W = torch.as_tensor(rng.standard_normal((D, M)))
    G = torch.as_tensor(rng.standard_normal((N, M)))
    L = torch.as_tensor(rng.standard_normal((D, K)))
    torch.testing.assert_close(F.scores(W), torch.einsum("nmd,dm->nm", Xt, W))
    torch.testing.assert_close(F.XtG(G), torch.einsum("nm,nmd->dm", G, Xt))
    torch.testing.assert_close(F.project(L), torch.einsum("nmd,dk->mnk", Xt, L))


def test_non_finite_tails_are_refused_in_any_chunk(monkeypatch):
    import apcnn.features_store as fs

    monkeypatch.setattr(fs, "_CHUNK_BYTES", 8 * D * DH)  # one attribute's matrix per chunk
    A = np.ones((M, D, DH))
    A[-1, -1, -1] = np.inf  # in the last chunk
    with pytest.raises(ValueError, match="weight contains NaN or inf"):
        FactoredFeatures(np.ones((3, DH)), A)


def test_factored_features_need_fc_tails_in_the_config():
    from apcnn.config import ConfigError, TrainConfig, load_config

    with pytest.raises(ConfigError, match=r"mtl.features.*model.tail=fc.*'head'"):
        load_config(TrainConfig, None, ["mtl.features=factored", "model.tail=head"])
    cfg = load_config(TrainConfig, None, ["mtl.features=factored", "model.tail=fc"])
    assert cfg.mtl.features == "factored"
