"""Budgets and progress reports of ``fit_alternating`` (time, iterations, KKT gap)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from apcnn import solvers as sv
from apcnn.config import MTLConfig

GROUPS = [[0, 1, 2], [3, 4], [5]]


def problem(n: int = 60, m: int = 6, d: int = 10, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, m, d))
    W = rng.standard_normal((d, m))
    Y = np.sign(np.einsum("nmd,dm->nm", X, W) + 0.5 * rng.standard_normal((n, m)) + 0.2)
    mask = rng.random((n, m)) > 0.1
    return X, Y, mask


KW = dict(mu=0.5, gamma=0.01, lam=0.1, K=4, bias=True, max_outer=15, tol=1e-7, inner_tol=1e-8)


def test_report_does_not_change_the_iterates():
    X, Y, mask = problem()
    plain = sv.fit_alternating(X, Y, GROUPS, mask=mask, **KW)
    reports: list[sv.SolverProgress] = []
    # heartbeats as often as possible: every sub-solver iteration goes through the budget clock
    seen = sv.fit_alternating(
        X, Y, GROUPS, mask=mask, report=reports.append, progress_every_s=1e-9, **KW
    )
    np.testing.assert_array_equal(plain.L, seen.L)
    np.testing.assert_array_equal(plain.S, seen.S)
    assert plain.history == seen.history
    outer = [r for r in reports if r.kind == "outer"]
    assert [r.iteration for r in outer] == list(range(1, seen.n_iter + 1))
    assert any(r.kind == "inner" for r in reports)
    for r in outer:
        assert r.eta_s is not None and r.eta_s >= 0
        assert r.gap >= 0 and np.isfinite(r.objective)
        assert "objective" in r.line() and "left" in r.line()
    assert [r.objective for r in outer] == seen.history[2::2]
    assert seen.stop in ("tol", "max_outer") and seen.seconds > 0


def test_iteration_budget_bounds_the_work():
    X, Y, mask = problem()
    res = sv.fit_alternating(X, Y, GROUPS, mask=mask, iter_budget=25, W0=np.ones((10, 6)), **KW)
    assert sum(i.n_iter for i in res.infos) <= 25
    assert res.stop == "iter_budget" and not res.converged
    assert all(b <= a for a, b in zip(res.history, res.history[1:], strict=False))


def test_time_budget_stops_a_long_solve():
    X, Y, mask = problem(n=3000, m=12, d=64)
    groups = [list(range(6)), list(range(6, 12))]
    kw = {**KW, "max_outer": 200, "tol": 1e-12, "inner_tol": 1e-12}
    W0 = np.full((64, 12), 0.01)
    start = time.monotonic()
    res = sv.fit_alternating(X, Y, groups, mask=mask, W0=W0, time_budget_s=1.0, **kw)
    took = time.monotonic() - start
    assert res.stop == "time_budget" and not res.converged and res.n_iter >= 1
    assert took < 1.0 + 3.0  # one sub-solver iteration (and the call's set-up) past the budget
    assert all(b <= a for a, b in zip(res.history, res.history[1:], strict=False))
    assert res.history[-1] < res.history[0]


def test_gap_tol_certifies_and_stops_early():
    X, Y, mask = problem()
    kw = {**KW, "max_outer": 60}
    tight = sv.fit_alternating(X, Y, GROUPS, mask=mask, **kw)
    res = sv.fit_alternating(X, Y, GROUPS, mask=mask, gap_tol=1e-2, **kw)
    assert res.converged and res.stop == "kkt"
    assert res.n_iter < tight.n_iter
    # the certificate: the last (a) step started within gap_tol of its KKT conditions, at the
    # iterate the (b) step before it left within gap_tol of its own
    s_info, l_info = res.infos[-2], res.infos[-3]
    assert s_info.start_gap / s_info.scale <= 1e-2 and l_info.rel_gap <= 1e-2
    assert res.history[-1] <= tight.history[-1] * 1.05


def test_budget_arguments_are_checked():
    X, Y, mask = problem()
    for bad in ({"time_budget_s": 0}, {"iter_budget": 1.5}, {"gap_tol": -1}):
        with pytest.raises(ValueError):
            sv.fit_alternating(X, Y, GROUPS, mask=mask, **{**KW, **bad})


@pytest.mark.parametrize("key", ["time_budget", "iter_budget", "gap_tol"])
def test_mtl_config_budgets(key):
    assert getattr(MTLConfig(), key) is None
    MTLConfig(**{key: 5})
    with pytest.raises(ValueError, match=f"mtl.{key}"):
        MTLConfig(**{key: 0})


@pytest.fixture
def _feature_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("APCNN_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.mark.slow
@pytest.mark.usefixtures("_feature_cache")
def test_training_with_factored_features_and_budgets(tmp_path):
    """mtl.features=factored solves the same problem as the dense array (float64: the same
    objective values); the log gets a line per outer iteration and the budget's stop."""
    from _tiny import tiny_config  # tests/ is on sys.path
    from apcnn.training import train

    common = [
        "model.tail=fc",
        "train.precision=float64",
        "train.methods=[S-CNN, MG-CNN]",
        "train.epochs_single=1",
        "train.epochs_joint=1",
        "train.rounds=2",
    ]
    histories = {}
    for features in ("dense", "factored"):
        out = train(tiny_config(tmp_path / features, *common, f"mtl.features={features}"))
        histories[features] = out["histories"]["MG-CNN"]
    for a, b in zip(histories["dense"], histories["factored"], strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-6)
    out = tmp_path / "budget"
    train(tiny_config(out, *common, "mtl.iter_budget=7", "train.rounds=1"))
    assert "stopped by mtl.iter_budget=7" in (out / "train.log").read_text()
    text = (tmp_path / "factored" / "train.log").read_text()
    assert "MG-CNN solve (mu=0.01): outer 1/3: objective" in text and "left" in text
    assert "factored tail features" in text


def test_factored_features_need_fc_tails(tmp_path):
    from _tiny import tiny_config
    from apcnn.training import train

    with pytest.raises(ValueError, match="model.tail=fc"):
        train(tiny_config(tmp_path, "mtl.features=factored", "train.methods=[S-CNN, M-CNN]"))
