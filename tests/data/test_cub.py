"""CUB-200-2011 loader on fixture trees (5-column label lines, both attributes.txt locations)."""

from __future__ import annotations

import numpy as np
import pytest

from apcnn.data import (
    LabelValueError,
    MissingFileError,
    UnknownClassError,
    create_dataset,
)


def expected_targets(trees, n, not_visible="missing"):
    t = np.zeros((n, len(trees.CUB_ATTRIBUTES)), dtype=np.float32)
    for i in range(1, n + 1):
        for a in range(1, len(trees.CUB_ATTRIBUTES) + 1):
            p, c = trees.cub_label(i, a)
            if c == 1 and not_visible == "missing":
                continue
            t[i - 1, a - 1] = 1.0 if p else -1.0
    return t


@pytest.mark.parametrize("location", ["outer", "inner"])
def test_cub_fixture(tmp_path, make_cub_tree, trees, location):
    base = make_cub_tree(tmp_path, n=6, attributes_location=location)
    for root in (tmp_path, base):
        ds = create_dataset("cub", root=root, image_size=24)
        assert len(ds) == 6 and ds.schema.names == trees.CUB_ATTRIBUTES
        assert ds.schema.group_names == ["has_bill_shape", "has_wing_color", "has_size"]
        assert ds.schema.group_indices == [[0, 1], [2, 3, 4], [5, 6]]
        np.testing.assert_array_equal(ds.targets, expected_targets(trees, 6))
        np.testing.assert_array_equal(ds.mask, ds.targets != 0)
        assert (~ds.mask).any()  # 'not visible' is missing
        assert ds.class_ids.tolist() == [0, 1, 2, 0, 1, 2]
        assert ds.schema.class_names == trees.CUB_CLASSES
        ca = ds.schema.class_attributes
        assert ca.shape == (3, 7) and ca[1, 1] == pytest.approx(0.13)  # (10 + 3) / 100
        assert ds.split_sizes == {"all": 6, "train": 3, "test": 3}
        assert ds[0]["image"].shape == (3, 24, 24)


def test_not_visible_negative_option(tmp_path, make_cub_tree, trees):
    make_cub_tree(tmp_path, n=5)
    ds = create_dataset("cub", root=tmp_path, not_visible="negative")
    np.testing.assert_array_equal(ds.targets, expected_targets(trees, 5, "negative"))
    assert ds.mask.all()


def test_fast_and_line_parsers_agree(tmp_path, make_cub_tree, trees, monkeypatch):
    """A line with an extra column: both the np.loadtxt path and the split()[:4] path read it."""
    from apcnn.data import cub

    base = make_cub_tree(tmp_path, n=4, extra_column=True)
    path = base / "attributes" / "image_attribute_labels.txt"
    rows = {i: i - 1 for i in range(1, 5)}
    fast, _ = cub.read_image_attribute_labels(path, rows, 7, "missing")
    monkeypatch.setattr(cub, "_fast_table", lambda p: None)
    slow, _ = cub.read_image_attribute_labels(path, rows, 7, "missing")
    np.testing.assert_array_equal(fast, expected_targets(trees, 4))
    np.testing.assert_array_equal(slow, fast)


def test_train_test_split(tmp_path, make_cub_tree):
    make_cub_tree(tmp_path, n=6)
    tr = create_dataset("cub", root=tmp_path, split="train")
    te = create_dataset("cub", root=tmp_path, split="test")
    assert [s.split("_")[-2] for s in tr.sample_ids] == ["0001", "0003", "0005"]
    assert len(te) == 3 and not set(tr.sample_ids) & set(te.sample_ids)


def test_unknown_class_id(tmp_path, make_cub_tree):
    make_cub_tree(tmp_path, n=4, class_of={3: 9})
    with pytest.raises(
        UnknownClassError,
        match=r"image id 3 has class id 9, but classes\.txt "
        r"lists 1\.\.3",
    ):
        create_dataset("cub", root=tmp_path)


def test_bad_label_line(tmp_path, make_cub_tree):
    base = make_cub_tree(tmp_path, n=3)
    path = base / "attributes" / "image_attribute_labels.txt"
    lines = path.read_text().splitlines()
    lines[4] = "2 5 1 7 3.0"  # certainty 7 does not exist
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(
        LabelValueError,
        match=r"image_attribute_labels\.txt:5: is_present must be "
        r"0/1 and certainty 1\.\.4",
    ):
        create_dataset("cub", root=tmp_path)


def test_missing_files(tmp_path, make_cub_tree):
    base = make_cub_tree(tmp_path, n=3)
    (tmp_path / "attributes.txt").unlink()
    with pytest.raises(MissingFileError, match="attributes.txt not found"):
        create_dataset("cub", root=tmp_path)
    make_cub_tree(tmp_path, n=3)
    (base / "attributes" / "image_attribute_labels.txt").unlink()
    with pytest.raises(
        MissingFileError,
        match=r"image_attribute_labels\.txt: image attribute "
        r"labels not found",
    ):
        create_dataset("cub", root=tmp_path)
