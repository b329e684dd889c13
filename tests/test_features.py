from __future__ import annotations

import json
import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from apcnn.features import FeatureCache, extract_features, key_digest


class TinyAttributes(Dataset):
    """Follows the apcnn dataset contract with random 3x8x8 images."""

    def __init__(self, n: int = 10, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.images = torch.rand(n, 3, 8, 8, generator=g)
        self.targets = torch.randint(0, 2, (n, 4), generator=g).float() * 2 - 1
        self.seed = seed

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {
            "image": self.images[i],
            "target": self.targets[i],
            "mask": torch.ones(4, dtype=torch.bool),
            "class_id": torch.tensor(i % 3),
            "index": torch.tensor(i),
        }

    def cache_key(self) -> str:
        return f"tiny-{len(self)}-{self.seed}"


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )


@pytest.mark.parametrize(
    "batch_size,num_workers,micro_batch", [(3, 0, "auto"), (4, 1, None), (32, 0, 3), (8, 0, 1)]
)
def test_extract_matches_direct_in_order(batch_size, num_workers, micro_batch):
    ds, net = TinyAttributes(), _net()
    net.train()
    out = extract_features(
        net, ds, batch_size=batch_size, num_workers=num_workers, micro_batch=micro_batch
    )
    assert net.training  # mode restored
    with torch.no_grad():
        ref = net.eval()(ds.images)
    assert out.shape == (10, 6) and out.dtype == torch.float32
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-5)
    assert not torch.is_inference(out)
    out.requires_grad_()  # usable in autograd


def test_bound_method_runs_in_eval_mode():
    ds, net = TinyAttributes(), _net()

    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def embed(self, x):
            return self.net(x)

    w = Wrapper().train()
    out = extract_features(w.embed, ds, batch_size=5)
    assert w.training and net.training
    with torch.no_grad():
        torch.testing.assert_close(out, net.eval()(ds.images), atol=1e-6, rtol=1e-5)


def test_extract_with_function_amp_and_progress():
    ds, net = TinyAttributes(), _net().eval()
    calls = []

    def fn(x: torch.Tensor) -> torch.Tensor:
        calls.append(x.is_contiguous(memory_format=torch.channels_last))
        return net(x)

    out = extract_features(fn, ds, batch_size=4, amp=True, progress=True)
    assert all(calls)
    with torch.no_grad():
        ref = net(ds.images)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, atol=5e-2, rtol=5e-2)  # bf16 autocast


def test_extract_argument_errors():
    with pytest.raises(ValueError, match="batch_size"):
        extract_features(_net(), TinyAttributes(), batch_size=0)
    with pytest.raises(ValueError, match="empty"):
        extract_features(_net(), TinyAttributes(n=0), batch_size=2)
    with pytest.raises(TypeError, match="amp"):
        extract_features(_net(), TinyAttributes(), batch_size=2, amp="yes")
    with pytest.raises(ValueError, match="micro_batch"):
        extract_features(_net(), TinyAttributes(), batch_size=2, micro_batch=0)

    class BadIndex(TinyAttributes):
        def __getitem__(self, i):
            item = super().__getitem__(i)
            item["index"] = torch.tensor(0)
            return item

    with pytest.raises(ValueError, match="index"):
        extract_features(_net(), BadIndex(), batch_size=2)


def _key(ds, **over):
    key = {
        "dataset": ds.cache_key(),
        "backbone": "tiny",
        "weights": "abc",
        "transform": "id",
        "split": "trunk",
    }
    key.update(over)
    return key


def test_cache_computes_once_and_reloads(tmp_path):
    ds = TinyAttributes()
    cache = FeatureCache(tmp_path / "cache")
    calls = []

    def compute():
        calls.append(1)
        return extract_features(_net(), ds, batch_size=4)

    a = cache.get_or_compute(_key(ds), compute)
    b = cache.get_or_compute(_key(ds), compute)
    assert len(calls) == 1
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    path = cache.path(_key(ds))
    assert path.name == key_digest(_key(ds)) + ".safetensors"
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["key_parts"] == _key(ds) and meta["shape"] == [10, 6]
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    # a new cache object (another process) finds it as well
    assert FeatureCache(tmp_path / "cache").load(_key(ds)) is not None


@pytest.mark.parametrize("part", ["dataset", "backbone", "weights", "transform", "split"])
def test_cache_rebuilds_when_a_key_part_changes(tmp_path, part):
    ds = TinyAttributes()
    cache = FeatureCache(tmp_path)
    cache.get_or_compute(_key(ds), lambda: torch.zeros(2, 3))
    changed = _key(ds, **{part: "other"})
    out = cache.get_or_compute(changed, lambda: torch.ones(2, 3))
    assert torch.equal(out, torch.ones(2, 3))
    assert torch.equal(cache.load(_key(ds)), torch.zeros(2, 3))
    assert key_digest(changed) != key_digest(_key(ds))
    # key order does not matter
    assert key_digest(dict(reversed(list(changed.items())))) == key_digest(changed)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "foreign_key"])
def test_corrupt_cache_file_is_recomputed_with_warning(tmp_path, damage):
    cache = FeatureCache(tmp_path)
    key = {"dataset": "d", "split": "s"}
    path = cache.save(key, torch.arange(12.0).reshape(3, 4))
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:-7])
    elif damage == "garbage":
        path.write_bytes(b"not a safetensors file at all")
    else:
        other = FeatureCache(tmp_path / "o").save({"dataset": "x"}, torch.zeros(3, 4))
        path.write_bytes(other.read_bytes())
    with pytest.warns(RuntimeWarning, match="recomputing"):
        out = cache.get_or_compute(key, lambda: torch.full((3, 4), 7.0))
    assert torch.equal(out, torch.full((3, 4), 7.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(cache.load(key), torch.full((3, 4), 7.0))


def test_failed_compute_leaves_no_file(tmp_path):
    cache = FeatureCache(tmp_path)

    def boom():
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        cache.get_or_compute({"k": 1}, boom)
    assert not list(tmp_path.iterdir())
    with pytest.raises(TypeError, match="Tensor"):
        cache.get_or_compute({"k": 1}, lambda: [1, 2])
    with pytest.raises(ValueError, match="key_parts"):
        cache.path({})
    with pytest.raises(TypeError, match="JSON"):
        cache.path({"k": object()})
