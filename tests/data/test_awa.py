"""AwA2 / AwA loaders on fixture trees in the published layout."""

from __future__ import annotations

import numpy as np
import pytest

from apcnn.data import (
    LabelShapeError,
    LabelValueError,
    MissingFileError,
    UnknownClassError,
    create_dataset,
)
from apcnn.data.awa import AWA_GROUPS


def test_awa2_fixture(tmp_path, make_awa_tree, trees):
    root = make_awa_tree(tmp_path)
    ds = create_dataset("awa2", root=root, image_size=16)
    s = ds.schema
    assert s.num_attributes == 85
    assert s.class_names == trees.AWA_CLASSES  # '+' kept, trailing space stripped
    assert s.group_names == [g for g, _ in AWA_GROUPS]
    assert s.group_indices[3] == [*range(18, 33), 44, 45]  # parts 19-33 + 45 + 46 (1-based)
    assert sum(len(i) for i in s.group_indices) == 85
    assert len(ds) == 10 and ds.class_ids.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert ds.sample_ids[4] == "JPEGImages/blue+whale/blue+whale_10001.jpg"
    binary = s.class_attributes
    assert set(np.unique(binary)) == {0.0, 1.0}
    np.testing.assert_array_equal(ds.targets, 2 * binary[ds.class_ids] - 1)
    assert ds.mask.all()
    assert ds.split_sizes == {"all": 10, "train": 6, "test": 4}
    assert ds[3]["image"].shape == (3, 16, 16)
    # the parent folder works as root too
    assert len(create_dataset("awa2", root=tmp_path)) == 10


def test_splits_are_class_disjoint(tmp_path, make_awa_tree):
    root = make_awa_tree(tmp_path)
    tr = create_dataset("awa2", root=root, split="train")
    te = create_dataset("awa2", root=root, split="test")
    assert set(tr.class_ids) == {0, 1, 3} and set(te.class_ids) == {2, 4}
    assert len(tr) + len(te) == 10


def test_continuous_matrix_clipped(tmp_path, make_awa_tree):
    root = make_awa_tree(tmp_path, folder="Animals_with_Attributes", continuous_minus_one=True)
    ds = create_dataset("awa", root=root, continuous=True)
    ca = ds.schema.class_attributes
    assert ca.min() >= 0.0 and ca.max() <= 1.0
    assert ca[0, 1] == 0.0  # AwA1's -1 (missing) clipped to 0
    assert ca[0, 0] == pytest.approx(0.60)  # 60.00 / 100
    # targets still come from the binary matrix
    assert set(np.unique(ds.targets)) == {-1.0, 1.0}


def test_groups_yaml_override_and_fallback(tmp_path, make_awa_tree):
    root = make_awa_tree(tmp_path, num_predicates=5)
    with pytest.warns(UserWarning, match="one group per attribute"):
        ds = create_dataset("awa2", root=root)
    assert len(ds.schema.groups) == 5
    (root / "groups.yaml").write_text("colour: [black, white, blue]\nother: [4, 5]\n")
    ds = create_dataset("awa2", root=root)
    assert ds.schema.group_names == ["colour", "other"]
    assert ds.schema.group_indices == [[0, 1, 2], [3, 4]]
    (root / "groups.yaml").write_text("colour: [black, purple]\n")
    with pytest.raises(
        LabelValueError,
        match=r"groups\.yaml: group 'colour': unknown attribute "
        r"'purple'",
    ):
        create_dataset("awa2", root=root)


def test_unknown_class_in_split_file(tmp_path, make_awa_tree):
    root = make_awa_tree(tmp_path, testclasses=("collie", "unicorn"))
    with pytest.raises(UnknownClassError, match=r"testclasses\.txt:2: unknown class 'unicorn'"):
        create_dataset("awa2", root=root, split="test")


def test_matrix_wrong_length(tmp_path, make_awa_tree):
    root = make_awa_tree(tmp_path, binary_rows=4)
    with pytest.raises(
        LabelShapeError,
        match=r"predicate-matrix-binary\.txt: 4 rows but "
        r"classes\.txt has 5 classes",
    ):
        create_dataset("awa2", root=root)


def test_missing_files(tmp_path, make_awa_tree):
    root = make_awa_tree(tmp_path)
    (root / "testclasses.txt").unlink()
    assert len(create_dataset("awa2", root=root)) == 10  # split files only needed for splits
    with pytest.raises(MissingFileError, match=r"testclasses\.txt: split file not found"):
        create_dataset("awa2", root=root, split="test")
    (root / "predicate-matrix-binary.txt").unlink()
    with pytest.raises(MissingFileError, match=r"predicate-matrix-binary\.txt"):
        create_dataset("awa2", root=root)
