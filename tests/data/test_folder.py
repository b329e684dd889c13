"""The generic ``folder`` dataset (images + labels.csv [+ groups.yaml])."""

from __future__ import annotations

import numpy as np
import pytest

from apcnn.data import (
    DatasetOptionError,
    LabelShapeError,
    LabelValueError,
    MissingFileError,
    create_dataset,
)
from apcnn.data.folder import parse_label


def test_label_coding():
    assert parse_label("1") == 1.0 and parse_label("+1") == 1.0
    assert parse_label("0") == -1.0 and parse_label("-1") == -1.0
    assert parse_label("") == 0.0 and parse_label(" NaN ") == 0.0
    with pytest.raises(ValueError):
        parse_label("2")


def test_folder_fixture(tmp_path, make_folder_tree):
    root = make_folder_tree(tmp_path / "mine")
    ds = create_dataset("folder", root=root, image_size=8)
    assert ds.schema.names == ("striped", "red", "round")
    assert ds.schema.group_names == ["striped", "red", "round"]  # one group each by default
    np.testing.assert_array_equal(ds.targets, [[1, -1, 0], [-1, 1, 1], [-1, 0, -1], [1, 1, -1]])
    np.testing.assert_array_equal(ds.mask, ds.targets != 0)
    assert ds.schema.class_names == ("cat", "dog") and ds.class_ids.tolist() == [0, 1, 0, -1]
    # RGBA PNG: composited on white, image tensor in [0, 1]
    px = ds.load_image(2).getpixel((0, 0))
    assert px == (255, 127, 127) or px == (255, 128, 128)
    assert ds[2]["image"].shape == (3, 8, 8)
    assert ds.split_sizes == {"all": 4, "test": 1, "train": 2, "val": 1}
    assert len(create_dataset("folder", root=root, split="train")) == 2


def test_groups_yaml(tmp_path, make_folder_tree):
    root = make_folder_tree(tmp_path, groups="looks: [striped, round]\ncolour: [red]\n")
    ds = create_dataset("folder", root=root)
    assert ds.schema.group_names == ["looks", "colour"]
    assert ds.schema.group_indices == [[0, 2], [1]]


def test_bad_trees(tmp_path, make_folder_tree):
    with pytest.raises(MissingFileError, match=r"labels\.csv: label file not found"):
        create_dataset("folder", root=tmp_path)
    root = make_folder_tree(tmp_path / "a", rows=["file,x", "a.jpg,1", "b.jpg,yes please"])
    with pytest.raises(LabelValueError, match=r"labels\.csv:3: column 'x' has 'yes please'"):
        create_dataset("folder", root=root)
    root = make_folder_tree(tmp_path / "b", rows=["file,x,y", "a.jpg,1"])
    with pytest.raises(LabelShapeError, match=r"labels\.csv:2: 2 cells but the header has 3"):
        create_dataset("folder", root=root)
    root = make_folder_tree(tmp_path / "c", rows=["file,x", "a.jpg,1", "nope.jpg,0"])
    with pytest.raises(MissingFileError, match=r"nope\.jpg: image named in labels\.csv is missing"):
        create_dataset("folder", root=root)
    root = make_folder_tree(tmp_path / "d", rows=["file,x", "a.jpg,1"])
    with pytest.raises(DatasetOptionError, match="needs a 'split' column"):
        create_dataset("folder", root=root, split="train")
