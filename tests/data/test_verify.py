"""verify_dataset: counts, per-attribute statistics, missing and corrupt images."""

from __future__ import annotations

import json

import pytest

from apcnn.data import CorruptImageError, LabelShapeError, MissingFileError
from apcnn.data.verify import verify_dataset


def test_verify_good_tree(tmp_path, make_clothing_tree):
    root = make_clothing_tree(tmp_path, n=5)
    rep = verify_dataset("clothing", root, decode=True)
    assert rep.ok and rep.num_samples == 5 and rep.num_attributes == 23
    assert rep.images_checked == 5 and rep.images_decoded == 5 and rep.images_corrupt == 0
    d = json.loads(json.dumps(rep.to_dict()))
    assert d["ok"] and d["images"] == {
        "checked": 5,
        "missing": 0,
        "empty": 0,
        "decoded": 5,
        "corrupt": 0,
        "duplicate_groups": 0,
    }
    assert list(d["groups"]) == ["colors", "patterns", "cloth_parts", "appearance"]
    s = d["attributes"]["black"]
    assert s["positives"] + s["negatives"] + s["missing"] == 5
    text = rep.format_text()
    assert "clothing: 5 images, 23 attributes in 4 groups" in text
    assert "colors" in text and "  black" in text and text.rstrip().endswith("OK")


def test_verify_options_and_class_datasets(tmp_path, make_awa_tree):
    root = make_awa_tree(tmp_path)
    rep = verify_dataset("awa2", root, continuous=True)
    assert rep.num_classes == 5 and rep.split_sizes == {"all": 10, "train": 6, "test": 4}
    assert "5 classes" in rep.format_text()


def test_verify_bad_trees(tmp_path, make_clothing_tree, trees):
    root = make_clothing_tree(tmp_path, n=4)
    trees.corrupt_file(root / "images" / "000003.jpg")
    assert verify_dataset("clothing", root, decode=False).ok  # existence and size only
    with pytest.raises(CorruptImageError, match=r"1 of 4 images do not decode; first: .*000003"):
        verify_dataset("clothing", root)  # decodes by default
    rep = verify_dataset("clothing", root, decode=True, raise_on_error=False)
    assert not rep.ok and rep.images_corrupt == 1 and "000003.jpg" in rep.problems[0]
    assert "1 problem(s)" in rep.format_text()


def test_verify_missing_image_and_labels(tmp_path, make_celeba_tree):
    base = make_celeba_tree(tmp_path, n=3)
    (base / "Img" / "img_align_celeba" / "000003.jpg").unlink()
    with pytest.raises(MissingFileError, match=r"000003\.jpg"):
        verify_dataset("celeba", base)
    make_celeba_tree(tmp_path / "x", n=3, count=4)
    with pytest.raises(LabelShapeError, match="announces 4 images"):
        verify_dataset("celeba", tmp_path / "x")


def test_verify_synthetic_needs_no_files():
    rep = verify_dataset("synthetic", None, num_images=32)
    assert rep.ok and rep.images_checked == 0 and rep.num_samples == 32
