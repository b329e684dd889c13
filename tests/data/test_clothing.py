"""Clothing Attribute Dataset loader on a fixture tree in the published layout."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.io
import torch

from apcnn.data import (
    CorruptImageError,
    LabelShapeError,
    LabelValueError,
    MissingFileError,
    create_dataset,
)
from apcnn.data.clothing import BINARY_ATTRIBUTES, clothing_schema


def test_schema_groups_in_paper_order():
    s = clothing_schema()
    assert s.group_names == ["colors", "patterns", "cloth_parts", "appearance"]
    assert [len(i) for i in s.group_indices] == [11, 6, 4, 2]
    assert s.names[:3] == ("black", "blue", "brown") and s.names[-2:] == ("skin_exposure", "gender")
    assert s.multiclass == ()


def test_loads_fixture_tree(tmp_path, make_clothing_tree, trees):
    root = make_clothing_tree(tmp_path, n=6)
    ds = create_dataset("clothing", root=root, image_size=32)
    assert len(ds) == 6 and ds.targets.shape == (6, 23)
    vals = trees.clothing_values(6)
    for m, a in enumerate(BINARY_ATTRIBUTES):
        v = vals[a]
        expected = np.where(np.isnan(v), 0.0, np.where(v == 2, 1.0, -1.0))
        np.testing.assert_array_equal(ds.targets[:, m], expected, err_msg=a)
        np.testing.assert_array_equal(ds.mask[:, m], ~np.isnan(v))
    assert ds.targets.dtype == np.float32 and ds.mask.dtype == bool
    assert (ds.class_ids == -1).all()
    assert list(ds.sample_ids) == [f"images/{i:06d}.jpg" for i in range(1, 7)]
    item = ds[2]
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
    assert 0.0 <= item["image"].min() and item["image"].max() <= 1.0
    assert item["target"].dtype == torch.float32 and item["mask"].dtype == torch.bool
    assert int(item["index"]) == 2 and int(item["class_id"]) == -1
    assert ds.load_image(0).size == (21, 30)  # images keep their size, sorted order
    # the parent folder works as root too
    assert len(create_dataset("clothing", root=tmp_path)) == 6


def test_nan_is_missing_never_negative(tmp_path, make_clothing_tree):
    v = np.array([2.0, np.nan, 1.0, np.nan])
    root = make_clothing_tree(tmp_path, n=4, values={"black": v})
    ds = create_dataset("clothing", root=root)
    np.testing.assert_array_equal(ds.targets[:, 0], [1, 0, -1, 0])
    np.testing.assert_array_equal(ds.mask[:, 0], [True, False, True, False])
    d = ds.describe()["attributes"]["black"]
    assert (d["positives"], d["negatives"], d["missing"]) == (1, 1, 2)


def test_multiclass_one_vs_rest(tmp_path, make_clothing_tree, trees):
    root = make_clothing_tree(tmp_path, n=8)
    ds = create_dataset("clothing", root=root, include_multiclass=True)
    s = ds.schema
    assert s.num_attributes == 23 + 3 + 3 + 7
    assert s.group_names[4:] == ["sleevelength", "neckline", "category"]
    cat = next(mc for mc in s.multiclass if mc.name == "category")
    assert cat.labels == ("shirt", "sweater", "t_shirt", "outerwear", "suit", "tank_top", "dress")
    cols = list(cat.members)
    assert s.names[cols[0]] == "category_shirt" and s.kinds[cols[0]] == "multiclass"
    vals = trees.clothing_values(8)["category"]
    for i in range(8):
        if np.isnan(vals[i]):
            assert not ds.mask[i, cols].any()
        else:
            assert ds.targets[i, cols].tolist().count(1.0) == 1
            assert ds.targets[i, cols[int(vals[i]) - 1]] == 1.0
    # the 23 binary attributes are unchanged by the option
    plain = create_dataset("clothing", root=root)
    np.testing.assert_array_equal(ds.targets[:, :23], plain.targets)
    assert ds.cache_key() != plain.cache_key()


def test_missing_label_file(tmp_path, make_clothing_tree):
    root = make_clothing_tree(tmp_path, n=3)
    (root / "labels" / "gender_GT.mat").unlink()
    with pytest.raises(MissingFileError, match=r"gender_GT\.mat: label file not found"):
        create_dataset("clothing", root=root)


def test_label_file_wrong_length(tmp_path, make_clothing_tree):
    root = make_clothing_tree(tmp_path, n=3)
    scipy.io.savemat(str(root / "labels" / "red_GT.mat"), {"GT": np.ones((4, 1))})
    with pytest.raises(
        LabelShapeError,
        match=r"red_GT\.mat: GT has shape \(4, 1\) but images/ "
        r"holds 3 images",
    ):
        create_dataset("clothing", root=root)


def test_label_value_outside_coding(tmp_path, make_clothing_tree):
    root = make_clothing_tree(tmp_path, n=3, values={"white": np.array([1.0, 3.0, 2.0])})
    with pytest.raises(LabelValueError, match=r"white_GT\.mat: value 3 in row 2"):
        create_dataset("clothing", root=root)


def test_missing_root_and_images(tmp_path, make_clothing_tree):
    with pytest.raises(MissingFileError, match="root is required"):
        create_dataset("clothing")
    with pytest.raises(MissingFileError, match="labels"):
        create_dataset("clothing", root=tmp_path)
    root = make_clothing_tree(tmp_path, n=3)
    for f in (root / "images").iterdir():
        f.unlink()
    with pytest.raises(MissingFileError, match="no image files"):
        create_dataset("clothing", root=root)


def test_corrupt_jpeg(tmp_path, make_clothing_tree, trees):
    root = make_clothing_tree(tmp_path, n=4)
    trees.corrupt_file(root / "images" / "000002.jpg")
    ds = create_dataset("clothing", root=root)  # labels only: constructing is fine
    with pytest.raises(CorruptImageError, match=r"000002\.jpg: cannot decode image"):
        ds[1]
    with pytest.raises(CorruptImageError, match=r"000002\.jpg"):
        create_dataset("clothing", root=root, check_images=True)
    with pytest.warns(RuntimeWarning, match=r"skipped 1 bad image"):
        ok = create_dataset("clothing", root=root, check_images=True, skip_bad_images=True)
    assert len(ok) == 3 and "images/000002.jpg" not in ok.sample_ids
    lazy = create_dataset("clothing", root=root, skip_bad_images=True)
    with pytest.warns(RuntimeWarning, match="skipping bad image"):
        item = lazy[1]
    assert int(item["index"]) == 2 and lazy.skipped_indices == {1}
