"""CelebA loader on both published layouts (official and torchvision-flattened)."""

from __future__ import annotations

import numpy as np
import pytest

from apcnn.data import DatasetOptionError, LabelShapeError, MissingFileError, create_dataset
from apcnn.data.celeba import CELEBA_GROUPS


@pytest.mark.parametrize("layout", ["official", "torchvision"])
def test_layouts(tmp_path, make_celeba_tree, trees, layout):
    make_celeba_tree(tmp_path, n=6, layout=layout)
    ds = create_dataset("celeba", root=tmp_path, image_size=20)
    assert len(ds) == 6 and ds.schema.names == tuple(trees.CELEBA_NAMES)
    expected = np.array([[trees.celeba_label(i, k) for k in range(40)] for i in range(1, 7)])
    np.testing.assert_array_equal(ds.targets, expected)
    assert ds.mask.all() and (ds.class_ids == -1).all()
    assert ds.split_sizes == {"all": 6, "train": 4, "val": 1, "test": 1}
    assert ds[5]["image"].shape == (3, 20, 20)
    assert ds.load_image(0).size == (18, 22)


def test_partitions(tmp_path, make_celeba_tree):
    base = make_celeba_tree(tmp_path, n=6, partition=(0, 0, 1, 2, 0, 2))
    assert create_dataset("celeba", root=base, split="train").sample_ids[-1].endswith("000005.jpg")
    assert len(create_dataset("celeba", root=base, split="val")) == 1
    assert len(create_dataset("celeba", root=base, split="valid")) == 1
    te = create_dataset("celeba", root=base, split="test")
    assert [s[-10:] for s in te.sample_ids] == ["000004.jpg", "000006.jpg"]
    with pytest.raises(DatasetOptionError, match="valid splits: all, train, val, valid, test"):
        create_dataset("celeba", root=base, split="holdout")


def test_groups_documented_and_complete(tmp_path, make_celeba_tree):
    ds = create_dataset("celeba", root=make_celeba_tree(tmp_path, n=3))
    assert ds.schema.group_names == [g for g, _ in CELEBA_GROUPS]
    assert sorted(i for idx in ds.schema.group_indices for i in idx) == list(range(40))
    assert [ds.schema.names[i] for i in ds.schema.group_indices[0]] == ["Male"]


def test_count_line_mismatch(tmp_path, make_celeba_tree):
    make_celeba_tree(tmp_path, n=4, count=5)
    with pytest.raises(
        LabelShapeError,
        match=r"list_attr_celeba\.txt: line 1 announces 5 images "
        r"but 4 rows follow",
    ):
        create_dataset("celeba", root=tmp_path)


def test_short_row(tmp_path, make_celeba_tree):
    base = make_celeba_tree(tmp_path, n=3)
    f = base / "Anno" / "list_attr_celeba.txt"
    lines = f.read_text().splitlines()
    lines[3] = " ".join(lines[3].split()[:-2])
    f.write_text("\n".join(lines) + "\n")
    with pytest.raises(LabelShapeError, match=r"list_attr_celeba\.txt:4: 38 values for 40"):
        create_dataset("celeba", root=base)


def test_missing_files(tmp_path, make_celeba_tree):
    base = make_celeba_tree(tmp_path, n=3)
    (base / "Eval" / "list_eval_partition.txt").unlink()
    assert len(create_dataset("celeba", root=base)) == 3
    with pytest.raises(MissingFileError, match="list_eval_partition.txt not found"):
        create_dataset("celeba", root=base, split="train")
    (base / "Img" / "img_align_celeba" / "000002.jpg").unlink()
    with pytest.raises(MissingFileError, match=r"1 image\(s\) listed .* \(first: 000002\.jpg\)"):
        create_dataset("celeba", root=base)
    with pytest.warns(RuntimeWarning, match="skipped 1 missing"):
        assert len(create_dataset("celeba", root=base, skip_bad_images=True)) == 2
    (base / "Anno" / "list_attr_celeba.txt").unlink()
    with pytest.raises(MissingFileError, match="list_attr_celeba.txt not found"):
        create_dataset("celeba", root=base)
