from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from apcnn.models.tails import StackedBatchNorm2d, StackedConv2d, StackedTail, stack_module

M = 3


@pytest.fixture(scope="module")
def lite0():
    import timm

    torch.manual_seed(0)
    return timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()


def _blocks(model):
    return [b for stage in model.blocks for b in stage]


def _perturb(tail: StackedTail, seed: int = 0) -> None:
    """Make every copy different: noise on all parameters and running statistics."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in tail.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
        for name, b in tail.named_buffers():
            if name.endswith("running_mean"):
                b.add_(0.1 * torch.randn(b.shape, generator=g))
            elif name.endswith("running_var"):
                b.mul_(1 + torch.rand(b.shape, generator=g))


def _tails(model):
    blocks = _blocks(model)
    head = [model.conv_head, model.bn2]
    return {
        "head": (head, 320, 5),
        "last_block": ([blocks[-1], *head], 192, 5),  # no skip: shared dense first conv
        "skip_block": ([blocks[-2], blocks[-1], *head], 192, 5),  # first block has a skip
        "stride2_same_pad": ([*blocks[-6:], *head], 112, 9),  # Conv2dSame, stride 2
    }


_WHICH = ("head", "last_block", "skip_block", "stride2_same_pad")
_CASES = [
    *[(which, train, None) for which in _WHICH for train in (False, True)],
    ("head", True, 2),
    ("skip_block", True, 2),
    ("stride2_same_pad", False, 2),
]


@pytest.mark.parametrize("which,train,chunk_size", _CASES)
def test_batched_equals_unbatched_copies(lite0, which, train, chunk_size):
    layers, c, h = _tails(lite0)[which]
    tail = StackedTail(layers, M, chunk_size=chunk_size)
    _perturb(tail)
    tail.train(train)
    x = torch.randn(4, c, h, h, generator=torch.Generator().manual_seed(1))
    singles = [tail.unstacked(m).train(train) for m in range(M)]
    out = tail(x)
    assert out.shape == (4, M, 1280)
    for m in range(M):
        torch.testing.assert_close(singles[m](x), out[:, m], atol=1e-5, rtol=1e-5)
    # copies really differ after the perturbation
    assert (out[:, 0] - out[:, 1]).abs().max() > 1e-3


def test_shared_input_only_when_safe(lite0):
    t = _tails(lite0)
    assert not StackedTail(*t["head"][:1], M).expand_input
    assert not StackedTail(t["last_block"][0], M).expand_input
    assert StackedTail(t["skip_block"][0], M).expand_input


def test_all_copies_start_equal_to_the_original(lite0):
    layers, c, h = _tails(lite0)["last_block"]
    tail = StackedTail(layers, M).eval()
    ref = nn.Sequential(*copy.deepcopy(layers), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    x = torch.randn(2, c, h, h)
    out = tail(x)
    for m in range(M):
        torch.testing.assert_close(out[:, m], ref(x), atol=1e-5, rtol=1e-5)
    # the original modules are untouched and not shared
    assert all(p.data_ptr() != q.data_ptr() for p in tail.parameters() for q in ref.parameters())


@pytest.mark.parametrize("chunk_size", [None, 1, 2])
def test_gradients_reach_only_their_copy(lite0, chunk_size):
    layers, c, h = _tails(lite0)["last_block"]
    tail = StackedTail(layers, M, chunk_size=chunk_size).train()
    x = torch.randn(4, c, h, h)
    tail(x)[:, 1].square().sum().backward()
    for mod in tail.modules():
        if isinstance(mod, (StackedConv2d, StackedBatchNorm2d)):
            for p in (mod.weight, mod.bias):
                if p is None:
                    continue
                n = p.shape[0] // M
                grads = p.grad.reshape(M, n, -1).abs().sum((1, 2))
                assert grads[1] > 0
                assert grads[0] == 0 and grads[2] == 0


@pytest.mark.parametrize("chunk_size", [None, 2])
def test_train_mode_bn_statistics_are_per_copy(lite0, chunk_size):
    layers, c, h = _tails(lite0)["last_block"]
    tail = StackedTail(layers, M, chunk_size=chunk_size)
    _perturb(tail)
    singles = [tail.unstacked(m).train() for m in range(M)]
    tail.train()
    x = torch.randn(4, c, h, h)
    tail(x)
    for m, single in enumerate(singles):
        single(x)
        after = tail.unstacked(m)
        for (n1, b1), (n2, b2) in zip(single.named_buffers(), after.named_buffers(), strict=True):
            assert n1 == n2
            torch.testing.assert_close(b1, b2, atol=1e-6, rtol=1e-5)
    # eval mode uses the running statistics: batch size 1 works and matches the singles
    tail.eval()
    x1 = x[:1]
    for m, single in enumerate(singles):
        torch.testing.assert_close(single.eval()(x1), tail(x1)[:, m], atol=1e-5, rtol=1e-5)


def test_single_copy(lite0):
    layers, c, h = _tails(lite0)["head"]
    tail = StackedTail(layers, 1)
    x = torch.randn(2, c, h, h)
    torch.testing.assert_close(tail(x)[:, 0], tail.unstacked(0).train()(x))


def test_load_copy_roundtrip(lite0):
    layers, c, h = _tails(lite0)["last_block"]
    tail = StackedTail(layers, M)
    _perturb(tail)
    donor = tail.unstacked(2)
    tail.load_copy(0, donor)
    tail.eval()
    x = torch.randn(2, c, h, h)
    out = tail(x)
    torch.testing.assert_close(out[:, 0], out[:, 2])
    with pytest.raises(IndexError):
        tail.unstacked(M)


def test_squeeze_excite_blocks():
    import timm

    torch.manual_seed(0)
    model = timm.create_model("efficientnet_b0", pretrained=False)
    block = _blocks(model)[-2]  # InvertedResidual with SqueezeExcite and a skip
    assert not isinstance(block.se, nn.Identity)
    tail = StackedTail([block], M)
    _perturb(tail)
    tail.train()
    x = torch.randn(3, block.conv_pw.in_channels, 4, 4)
    out = tail(x)
    for m in range(M):
        torch.testing.assert_close(tail.unstacked(m).train()(x), out[:, m], atol=1e-5, rtol=1e-5)


def test_unsupported_layers_raise():
    with pytest.raises(NotImplementedError, match="Linear"):
        stack_module(nn.Sequential(nn.Conv2d(3, 4, 1), nn.Linear(4, 4)), 2)
    with pytest.raises(ValueError):
        StackedTail([nn.ReLU()], 2)
    with pytest.raises(ValueError):
        StackedTail([nn.Conv2d(3, 4, 1)], 0)


def test_chunking_does_not_change_results_or_counters(lite0):
    layers, c, h = _tails(lite0)["last_block"]
    ref = StackedTail(layers, 5, chunk_size=None)
    _perturb(ref)
    x = torch.randn(4, c, h, h)
    init = copy.deepcopy(ref)
    ref_out = ref.train()(x)
    for chunk in (1, 2, 3, 5, 8):
        tail = copy.deepcopy(init).train()
        tail.chunk_size = chunk
        torch.testing.assert_close(tail(x), ref_out, atol=1e-5, rtol=1e-5)
        for (name, a), b in zip(tail.state_dict().items(), ref.state_dict().values(), strict=True):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=name)
    counters = [b for n, b in ref.named_buffers() if n.endswith("num_batches_tracked")]
    assert counters and all(int(b) == 1 for b in counters)


def test_auto_chunk_size(lite0):
    from apcnn.models import tails as tails_mod

    layers, c, _ = _tails(lite0)["head"]
    tail = StackedTail(layers, 23)
    assert tail.chunk_size == "auto"
    per_copy = 32 * 7 * 7 * 1280 * 4
    x = torch.empty(32, c, 7, 7)
    assert tail.copies_per_pass(x) == max(1, tails_mod.AUTO_CHUNK_BYTES // per_copy)
    assert tail.copies_per_pass(torch.empty(1, c, 1, 1)) == 23
    tail.chunk_size = None
    assert tail.copies_per_pass(x) == 23
    with pytest.raises(ValueError, match="chunk_size"):
        tail.chunk_size = 0
