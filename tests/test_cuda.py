"""CUDA paths, skipped without a GPU (``scripts/device_run.sh`` runs them on a lent one; this
module needs no test-only package, since that machine has none): the solvers on CUDA tensors,
training on the GPU under autocast, and its checkpoints evaluated again."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from _tiny import tiny_config  # noqa: E402  (tests/ is on sys.path)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


@pytest.fixture(autouse=True)
def _feature_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("APCNN_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def _totals(out) -> dict[str, float]:
    methods = json.loads((out / "metrics.json").read_text())["methods"]
    return {name: block["total"] for name, block in methods.items()}


@pytest.fixture(scope="module")
def cpu_totals(tmp_path_factory) -> dict[str, float]:
    """The tiny run on the CPU, once for every autocast variant compared with it."""
    from apcnn.training import train

    base = tmp_path_factory.mktemp("cpu")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("APCNN_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        train(tiny_config(base / "run", "train.device=cpu"))
    return _totals(base / "run")


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_cuda_training_under_autocast_agrees_with_cpu(tmp_path, amp, cpu_totals):
    from apcnn.inference import evaluate_checkpoint
    from apcnn.training import train

    train(tiny_config(tmp_path / "gpu", "train.device=cuda", f"train.amp={amp}"))
    cpu, gpu = cpu_totals, _totals(tmp_path / "gpu")
    assert set(gpu) == set(cpu)
    for method, total in cpu.items():
        # the same data and seed: only rounding differs (autocast, GPU kernels)
        assert gpu[method] == pytest.approx(total, abs=0.05), method
    evaluated = evaluate_checkpoint(tmp_path / "gpu" / "checkpoints" / "MG-CNN")
    assert evaluated["metrics"]["accuracy"]["total"] == pytest.approx(gpu["MG-CNN"], abs=0.02)


def test_solvers_keep_cuda_tensors_and_agree_with_cpu():
    from apcnn import solvers as sv

    rng = np.random.default_rng(14)
    n, m, d, k = 40, 6, 8, 4
    groups = [[0, 1, 2], [3, 4], [5]]
    X = rng.standard_normal((n, m, d))  # a feature per attribute, as the paper's CNNs give
    scores = np.einsum("nmd,dm->nm", X, rng.standard_normal((d, m)))
    Y = np.sign(scores + 0.5 * rng.standard_normal((n, m)) + 0.3)
    mask = rng.random((n, m)) >= 0.2
    L = rng.standard_normal((d, k))
    Xc, Yc, mc, Lc = (torch.tensor(a, device="cuda") for a in (X, Y, mask, L))
    S = sv.fit_combination(Xc, Yc, Lc, groups, 3.0, mc)
    assert S.device.type == "cuda"
    np.testing.assert_allclose(
        S.cpu().numpy(), sv.fit_combination(X, Y, L, groups, 3.0, mask), atol=1e-8
    )
    res = sv.fit_alternating(Xc, Yc, groups, mu=1.0, gamma=0.5, lam=0.5, K=k, mask=mc, bias=True)
    assert res.L.device.type == "cuda" and np.all(np.diff(res.history) <= 0)
