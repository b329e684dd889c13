"""Registry, base-class contract (DataLoader, describe) and transforms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from apcnn.data import (
    AttributeDataset,
    AttributeSchema,
    DatasetError,
    DatasetOptionError,
    UnknownDatasetError,
    create_dataset,
    dataset_options,
    list_datasets,
    register_dataset,
)
from apcnn.data.transforms import build_transform, default_transform


def test_list_and_unknown_names():
    assert set(list_datasets()) >= {
        "clothing",
        "awa2",
        "awa",
        "celeba",
        "cub",
        "folder",
        "synthetic",
    }
    with pytest.raises(
        UnknownDatasetError,
        match=r"unknown dataset 'mnist'; valid datasets: awa, "
        r"awa2, celeba, clothing, cub",
    ):
        create_dataset("mnist")
    with pytest.raises(DatasetOptionError, match=r"no option 'colour'; valid options: .*seed"):
        create_dataset("synthetic", colour="red")
    with pytest.raises(DatasetOptionError, match="valid splits: all, train, val, test, unseen"):
        create_dataset("synthetic", split="dev")
    assert issubclass(DatasetOptionError, DatasetError)
    assert "include_multiclass" in dataset_options("clothing")


@pytest.fixture
def clean_registry():
    from apcnn.data import registry

    yield
    registry._REGISTRY.pop("tiny-test-ds", None)


def test_register_custom_dataset(clean_registry):
    @register_dataset("tiny-test-ds")
    class Tiny(AttributeDataset):
        def __init__(self, root=None, *, split="all", transform=None, n: int = 3):
            from PIL import Image

            self._img = Image.new("RGB", (5, 5), (255, 0, 0))
            schema = AttributeSchema(names=("a", "b"), groups=(("g", (0, 1)),))
            super().__init__(
                schema=schema,
                targets=np.ones((n, 2)),
                mask=None,
                sample_ids=[str(i) for i in range(n)],
                sources=list(range(n)),
                transform=transform,
                image_size=4,
                split=split,
                options={"n": n},
            )

        def _load_source(self, src):
            return self._img

    ds = create_dataset("tiny-test-ds", n=2)
    assert isinstance(ds, Tiny) and len(ds) == 2 and ds.name == "tiny-test-ds"
    assert torch.allclose(ds[0]["image"][0], torch.ones(4, 4))
    with pytest.raises(DatasetOptionError, match="valid options: n"):
        create_dataset("tiny-test-ds", m=1)


def test_dataloader_batches_with_workers():
    ds = create_dataset("synthetic", num_images=16, image_size=24)
    batch = next(iter(DataLoader(ds, batch_size=8, num_workers=2)))
    assert batch["image"].shape == (8, 3, 24, 24) and batch["image"].dtype == torch.float32
    assert batch["target"].shape == (8, 13) and batch["mask"].dtype == torch.bool
    assert batch["class_id"].dtype == torch.int64 and batch["index"].tolist() == list(range(8))
    assert torch.equal(batch["image"][5], ds[5]["image"])


def test_describe_counts():
    ds = create_dataset("synthetic", num_images=64, missing_rate=0.1)
    d = ds.describe()
    assert d["num_samples"] == 64 and d["num_attributes"] == 13 and d["num_groups"] == 4
    for name, s in d["attributes"].items():
        assert s["positives"] + s["negatives"] + s["missing"] == 64, name
    assert sum(d["class_counts"].values()) == 64
    assert d["groups"]["colour"]["attributes"] == ["red", "green", "blue", "yellow"]


def test_transforms():
    from PIL import Image

    img = Image.new("RGB", (50, 80), (255, 128, 0))
    x = default_transform(32)(img)
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert torch.allclose(x[:, 0, 0], torch.tensor([1.0, 128 / 255, 0.0]), atol=1e-6)
    ev = build_transform(32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), train=False)
    y = ev(img)
    assert y.shape == (3, 32, 32)
    assert torch.allclose(
        y[:, 5, 5], torch.tensor([2.0, (128 / 255 - 0.5) / 0.25, -2.0]), atol=1e-5
    )
    assert torch.equal(ev(img), ev(img))
    tr = build_transform(32, mean=None, std=None, train=True)
    assert tr(img).shape == (3, 32, 32)
    with pytest.raises(ValueError, match="give both mean and std"):
        build_transform(32, mean=(0.5, 0.5, 0.5), std=None, train=False)
    with pytest.raises(ValueError, match="image_size must be a positive int"):
        default_transform(0)


def test_fused_normalisation_matches_torchvision():
    from PIL import Image
    from torchvision.transforms import v2

    from apcnn.data.transforms import ToNormalizedTensor

    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (30, 20, 3), dtype=np.uint8), "RGB")
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    ref = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])
    ours = ToNormalizedTensor(mean, std)
    assert torch.allclose(ours(img), ref(img), atol=1e-5) and ours(img).is_contiguous()
    as_tensor = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)
    assert torch.allclose(ours(as_tensor), ref(img), atol=1e-5)
    assert torch.allclose(
        ToNormalizedTensor()(img.convert("L")),
        ToNormalizedTensor()(img.convert("L").convert("RGB")),
    )


def test_cache_dir_option(tmp_path, make_clothing_tree):
    root = make_clothing_tree(tmp_path / "tree", n=3)
    a = create_dataset("clothing", root=root, image_size=16, cache_dir=tmp_path / "cache")
    first = a[1]["image"]
    assert a.load_image(1).size == (16, 16)
    assert len(list((tmp_path / "cache").rglob("*.npy"))) == 1
    b = create_dataset("clothing", root=root, image_size=16, cache_dir=tmp_path / "cache")
    assert torch.equal(b[1]["image"], first)
    assert a.cache_key() == create_dataset("clothing", root=root, image_size=16).cache_key()


def test_dataset_splits(tmp_path, make_folder_tree):
    from apcnn.data import dataset_splits

    assert dataset_splits("synthetic") == ("all", "train", "val", "test", "unseen")
    assert dataset_splits("clothing") == ("all",)
    assert "test" in dataset_splits("awa2") and "val" in dataset_splits("celeba")
    root = make_folder_tree(tmp_path / "f")
    assert dataset_splits("folder", root=root) == ("all", "test", "train", "val")
    plain = make_folder_tree(tmp_path / "g", rows=["file,x", "a.jpg,1"])
    assert dataset_splits("folder", root=plain) == ("all",)
