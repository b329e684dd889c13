from __future__ import annotations

import copy

import pytest
import torch
import yaml
from torch import nn

from apcnn.models.attribute_cnn import MTL, AttributeCNN, BaseCNN, split_backbone
from apcnn.models.backbone import create_backbone

M = 3


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    model, info = create_backbone("tf_efficientnet_lite0", weights="none")
    return model, info


def _perturb_tails(cnn: AttributeCNN, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in cnn.tails.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("tail", ["head", 1, 2, "all"])
def test_forward_equals_trunk_then_each_tail(backbone, tail):
    model, info = backbone
    cnn = AttributeCNN(model, M, tail=tail, info=info)
    _perturb_tails(cnn)
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    # through all 16 blocks ("all") float32 rounding of grouped vs plain convolutions reaches
    # ~1e-5 of the output scale (float64 agrees exactly); train-mode BN on a 4-image batch
    # amplifies it further, so "all" is compared in eval mode (per-copy train-mode BN is
    # checked in test_tails.py)
    cnn.train(tail != "all")
    out = cnn(x)
    assert out.shape == (4, M, cnn.feature_dim) and cnn.feature_dim == 1280
    feats = cnn.forward_trunk(x)
    torch.testing.assert_close(cnn.forward_tails(feats), out)
    for m in range(M):
        single = cnn.tail_module(m).train(cnn.training)
        atol = 1e-5 if tail != "all" else 2e-5 * out.detach().abs().max().item()
        torch.testing.assert_close(single(feats), out[:, m], atol=atol, rtol=1e-5)
    assert (out[:, 0] - out[:, 1]).abs().max() > 1e-3
    if tail == "all":
        assert isinstance(cnn.trunk, nn.Identity) and torch.equal(feats, x)


def test_tails_start_as_the_pretrained_network(backbone):
    model, info = backbone
    cnn = AttributeCNN(model, M, tail=2, info=info).eval()
    x = torch.randn(2, 3, 64, 64)
    out = cnn(x)
    with torch.no_grad():
        ref = model.forward_head(model.forward_features(x), pre_logits=True)
    for m in range(M):
        torch.testing.assert_close(out[:, m], ref, atol=1e-5, rtol=1e-5)


def test_frozen_trunk(backbone):
    model, info = backbone
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cnn = AttributeCNN(model, M, tail=1, info=info).train()
    assert not cnn.trunk.training and cnn.tails.training
    assert not any(p.requires_grad for p in cnn.trunk.parameters())
    trunk_state = copy.deepcopy(cnn.trunk.state_dict())
    cnn(torch.randn(4, 3, 64, 64))[:, 0].sum().backward()
    assert all(p.grad is None for p in cnn.trunk.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in cnn.tails.parameters())
    for k, v in cnn.trunk.state_dict().items():  # BN running statistics untouched
        assert torch.equal(v, trunk_state[k])
    for k, v in model.state_dict().items():  # the source backbone is not modified
        assert torch.equal(v, before[k])
    assert all(p.requires_grad for p in model.parameters())


def test_unfrozen_trunk_trains(backbone):
    model, info = backbone
    cnn = AttributeCNN(model, 2, tail="head", freeze_trunk=False, info=info).train()
    assert cnn.trunk.training
    cnn(torch.randn(2, 3, 64, 64)).sum().backward()
    assert all(p.grad is not None for p in cnn.trunk.parameters())


def test_single_attribute_and_load_tail(backbone):
    model, info = backbone
    cnn = AttributeCNN(model, 1, info=info).eval()
    assert cnn(torch.randn(2, 3, 64, 64)).shape == (2, 1, 1280)
    two = AttributeCNN(model, 2, tail=1, info=info).eval()
    _perturb_tails(two)
    donor = two.tail_module(1)
    two.load_tail(0, donor)
    out = two(torch.randn(2, 3, 64, 64))
    torch.testing.assert_close(out[:, 0], out[:, 1])


def test_bad_arguments(backbone):
    model, _ = backbone
    with pytest.raises(ValueError, match="tail must be"):
        AttributeCNN(model, M, tail=99)
    with pytest.raises(ValueError, match="tail must be"):
        AttributeCNN(model, M, tail="middle")
    with pytest.raises(ValueError, match="num_attributes"):
        AttributeCNN(model, 0)
    resnet, _ = create_backbone("resnet18", weights="none")
    with pytest.raises(NotImplementedError, match="EfficientNet"):
        split_backbone(resnet, "head")


def test_create_from_bundled_weights():
    cnn = AttributeCNN.create(2, tail="head")
    assert cnn.info is not None and cnn.info.weights == "imagenet"
    assert cnn.split_description() == "tf_efficientnet_lite0:tail=head"


def test_base_cnn_from_yaml_and_dict(tmp_path):
    path = tmp_path / "config.yml"
    cfg = {
        "model": {
            "backbone": "tf_efficientnet_lite0",
            "weights": "none",
            "feature_dim": 64,
            "learning_rate_s": 0.01,
        }
    }
    path.write_text(yaml.safe_dump(cfg))
    base = BaseCNN(config_path=path)
    assert base.feature_dim == 64
    assert base(torch.randn(2, 3, 64, 64)).shape == (2, 64)
    plain = BaseCNN(config={"weights": "none"})
    assert plain.feature_dim == 1280 and isinstance(plain.projection, nn.Identity)
    with pytest.raises(FileNotFoundError):
        BaseCNN(config_path=tmp_path / "missing.yml")
    with pytest.raises(ValueError, match="exactly one"):
        BaseCNN()
    with pytest.raises(ValueError, match="feature_dim"):
        BaseCNN(config={"weights": "none", "feature_dim": -3})


def test_mtl_seed_api():
    pytest.importorskip("apcnn.models.latent")
    base = BaseCNN(config={"weights": "none", "feature_dim": 32, "tail": 1})
    model = MTL(base_cnn=base, num_attributes=5, rank=4, groups=[[0, 1], [2, 3, 4]])
    x = torch.randn(2, 3, 64, 64)
    scores = model(x)
    assert scores.shape == (2, 5)
    L, S = model.latent_task_matrix, model.task_specific_layers
    assert L is model.latent.L and S is model.latent.S
    assert L.shape == (32, 4) and S.shape == (4, 5)
    assert model.latent_task_matrix.weight is L
    # the seed README builds one optimizer per factor from these
    opt_s = torch.optim.SGD(model.task_specific_layers.parameters(), lr=0.1)
    opt_l = torch.optim.SGD(model.latent_task_matrix.parameters(), lr=0.1)
    before = L.detach().clone(), S.detach().clone()
    model(x).square().mean().backward()
    opt_s.step()
    opt_l.step()
    assert not torch.equal(before[0], L) and not torch.equal(before[1], S)
    # state dicts hold plain tensors; deep copies keep working
    assert type(model.state_dict()["latent.L"]) is torch.Tensor
    clone = copy.deepcopy(model)
    torch.testing.assert_close(clone(x), model(x))
    with pytest.raises(ValueError, match="groups"):
        MTL(base, 3, groups=[[0, 1], [1, 2]])
