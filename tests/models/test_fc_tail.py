"""The ``fc`` tail: identity start, batched equals per-attribute layers, gradients per attribute."""

from __future__ import annotations

import torch

from apcnn.models.fc_tail import StackedLinearTail


def test_identity_start_reproduces_pooled_features():
    tail = StackedLinearTail(16, 3)
    f = torch.rand(5, 16)  # pooled features are >= 0
    out = tail(f)
    assert out.shape == (5, 3, 16)
    for m in range(3):
        torch.testing.assert_close(out[:, m], f)


def test_batched_equals_unbatched_layers_and_gradients_are_separate():
    torch.manual_seed(0)
    tail = StackedLinearTail(8, 4)
    with torch.no_grad():
        tail.weight.add_(0.3 * torch.randn_like(tail.weight))
        tail.bias.add_(0.1 * torch.randn_like(tail.bias))
    f = torch.randn(6, 8, 1, 1)
    out = tail(f)
    for m in range(4):
        torch.testing.assert_close(out[:, m], tail.tail_module(m)(f), rtol=1e-5, atol=1e-6)
    out[:, 2].sum().backward()
    grads = tail.weight.grad.abs().sum(dim=(1, 2))
    assert grads[2] > 0 and grads[[0, 1, 3]].sum() == 0
