from __future__ import annotations

import numpy as np
import pytest
import torch

from apcnn import losses


def _data(seed: int = 0, N: int = 20, M: int = 5):
    g = torch.Generator().manual_seed(seed)
    scores = 2 * torch.randn(N, M, generator=g, dtype=torch.float64)
    Y = torch.where(torch.rand(N, M, generator=g) < 0.5, -1.0, 1.0).double()
    mask = torch.rand(N, M, generator=g) < 0.7
    return scores, Y, mask


def _reference(kind: str, z: np.ndarray) -> np.ndarray:
    if kind == "squared_hinge":
        return 0.5 * np.maximum(0, 1 - z) ** 2
    if kind == "hinge":
        return np.maximum(0, 1 - z)
    return np.log1p(np.exp(-z))


@pytest.mark.parametrize("kind", losses.LOSSES)
def test_value_matches_closed_form_and_ignores_unlabelled(kind):
    scores, Y, mask = _data()
    Yn = Y.clone()
    Yn[~mask] = float("nan")  # never read
    value, d = losses.loss_and_grad(scores, Yn, mask, kind)
    z = (Y * scores).numpy()
    expected = (_reference(kind, z) * mask.numpy()).sum()
    assert float(value) == pytest.approx(expected, rel=1e-12)
    assert torch.isfinite(d).all()
    assert (d[~mask] == 0).all()


@pytest.mark.parametrize("kind", ["squared_hinge", "logistic"])
def test_gradient_matches_autograd(kind):
    scores, Y, mask = _data(1)
    s = scores.clone().requires_grad_(True)
    losses.loss_value(s, Y, mask, kind).backward()
    _, d = losses.loss_and_grad(scores, Y, mask, kind)
    torch.testing.assert_close(d, s.grad)


def test_hinge_subgradient():
    scores = torch.tensor([[0.5, 2.0, -1.0]], dtype=torch.float64)
    Y = torch.tensor([[1.0, 1.0, -1.0]], dtype=torch.float64)
    _, d = losses.loss_and_grad(scores, Y, None, "hinge")
    torch.testing.assert_close(d, torch.tensor([[-1.0, 0.0, 0.0]], dtype=torch.float64))


def test_mask_none_means_all_labelled():
    scores, Y, _ = _data(2)
    a = losses.squared_hinge(scores, Y)
    b = losses.squared_hinge(scores, Y, torch.ones_like(Y, dtype=torch.bool))
    assert float(a) == float(b)
    assert float(losses.hinge(scores, Y)) >= 0 and float(losses.logistic(scores, Y)) > 0


def test_logistic_is_stable_for_large_margins():
    scores = torch.tensor([[1e4, -1e4]], dtype=torch.float64)
    Y = torch.tensor([[1.0, 1.0]], dtype=torch.float64)
    value, d = losses.loss_and_grad(scores, Y, None, "logistic")
    assert float(value) == pytest.approx(1e4)
    torch.testing.assert_close(d, torch.tensor([[0.0, -1.0]], dtype=torch.float64))


def test_check_loss_errors():
    with pytest.raises(ValueError, match="loss must be one of"):
        losses.check_loss("squared")
    with pytest.raises(ValueError, match="non-smooth"):
        losses.check_loss("hinge", smooth=True)
    assert losses.check_loss("logistic", smooth=True) == "logistic"
