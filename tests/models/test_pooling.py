"""Region pooling (``model.pool_region``): the window, its checks, and every place that pools."""

from __future__ import annotations

import pytest
import torch

from apcnn.models.fc_tail import PooledTrunk
from apcnn.models.pooling import RegionPool, check_region, region_mean
from apcnn.models.tails import StackedTail


def test_region_mean_averages_exactly_the_window():
    f = torch.arange(2 * 3 * 10 * 4, dtype=torch.float32).view(2, 3, 10, 4)
    # rows [1.5, 8.5) of 10 -> cells 1..7, columns [1, 3) of 4 -> cells 1..2
    out = region_mean(f, (0.15, 0.85, 0.25, 0.75))
    torch.testing.assert_close(out, f[:, :, 1:8, 1:3].mean((2, 3)))
    torch.testing.assert_close(region_mean(f, None), f.mean((2, 3)))
    torch.testing.assert_close(region_mean(f, (0.0, 1.0, 0.0, 1.0)), f.mean((2, 3)))
    # a window thinner than a cell still keeps one row and one column
    torch.testing.assert_close(region_mean(f, (0.5, 0.51, 0.99, 1.0)), f[:, :, 5, 3])


@pytest.mark.parametrize(
    "region", [(0.5, 0.5, 0, 1), (0, 1, 0.8, 0.2), (-0.1, 1, 0, 1), (0, 1.2, 0, 1), (0, 1, 0)]
)
def test_bad_regions_are_rejected_with_the_rule(region):
    with pytest.raises(ValueError, match="pool_region"):
        check_region(region)


def test_config_rejects_a_bad_region_in_one_line():
    from apcnn.config import ConfigError, TrainConfig, load_config

    with pytest.raises(ConfigError, match=r"'model.pool_region' .*0 <= top < bottom <= 1"):
        load_config(TrainConfig, None, ["model.pool_region=[0.9, 0.1, 0, 1]"])
    cfg = load_config(TrainConfig, None, ["model.pool_region=[0.1, 0.9, 0.2, 0.8]"])
    assert cfg.model.pool_region == [0.1, 0.9, 0.2, 0.8]


@pytest.fixture(scope="module")
def lite0():
    import timm

    torch.manual_seed(0)
    return timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()


def test_pooled_trunk_pools_the_window_of_the_feature_map(lite0):
    region = (0.15, 0.85, 0.25, 0.75)
    x = torch.randn(2, 3, 96, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        fmap = lite0.forward_features(x)  # (2, 1280, 3, 2)
        torch.testing.assert_close(PooledTrunk(lite0)(x), fmap.mean((2, 3)))
        windowed = PooledTrunk(lite0, region)(x)
    torch.testing.assert_close(windowed, fmap[:, :, 0:2, 0:1].mean((2, 3)))
    assert not torch.allclose(windowed, fmap.mean((2, 3)))


def test_stacked_tail_and_its_unstacked_copies_pool_the_same_window(lite0):
    region = (0.2, 0.8, 0.25, 0.75)
    tail = StackedTail([lite0.conv_head, lite0.bn2], 3, pool_region=region).eval()
    x = torch.randn(2, 320, 10, 7, generator=torch.Generator().manual_seed(1))
    out = tail(x)
    with torch.no_grad():
        fmap = lite0.bn2(lite0.conv_head(x))
    torch.testing.assert_close(out[:, 0], fmap[:, :, 2:8, 1:5].mean((2, 3)), atol=1e-5, rtol=1e-5)
    for m in range(3):
        single = tail.unstacked(m).eval()
        assert isinstance(single[-1], RegionPool)
        torch.testing.assert_close(single(x), out[:, m], atol=1e-5, rtol=1e-5)
