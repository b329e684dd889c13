"""scripts/device_bundle.py: the dataset and weights a run on the lent GPU machine carries."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from PIL import Image

from apcnn.data.verify import verify_dataset

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bundle_script():
    spec = importlib.util.spec_from_file_location(
        "device_bundle", REPO / "scripts" / "device_bundle.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bundle_keeps_the_published_layout_with_smaller_photos(
    tmp_path, make_clothing_tree, bundle_script
):
    root = make_clothing_tree(tmp_path / "shared", n=6)  # photos of 21-26 x 30 px
    bundle, link = tmp_path / "bundle", tmp_path / "link"
    (bundle / "wheels").mkdir(parents=True)
    (bundle / "wheels" / "weights-0.1.0-py3-none-any.whl").write_bytes(b"")  # no download
    args = ["--root", str(root), "--bundle", str(bundle), "--link", str(link), "--max-side", "24"]
    assert bundle_script.main(args) == 0
    assert link.is_symlink() and link.resolve() == bundle.resolve()
    data = link / "data" / "ClothingAttributeDataset"
    photos = sorted((data / "images").glob("*.jpg"))
    assert [p.name for p in photos] == [p.name for p in sorted((root / "images").glob("*.jpg"))]
    for photo, original in zip(photos, sorted((root / "images").glob("*.jpg"))):
        with Image.open(photo) as small, Image.open(original) as big:
            assert max(small.size) == 24  # the longer side, the aspect ratio kept to a pixel
            assert abs(small.size[0] / small.size[1] - big.size[0] / big.size[1]) < 0.05
    report = verify_dataset("clothing", data, decode=True)
    assert report.ok and report.num_samples == 6 and report.images_decoded == 6
    # a rerun keeps what is there and moves the link
    assert bundle_script.main(args) == 0


def test_bundle_refuses_bad_folders(tmp_path, make_clothing_tree, bundle_script):
    with pytest.raises(SystemExit, match="has no images/ and labels/"):
        bundle_script.main(["--root", str(tmp_path), "--bundle", str(tmp_path / "b")])
    root = make_clothing_tree(tmp_path / "shared", n=2)
    with pytest.raises(SystemExit, match="outside the repository"):
        bundle_script.main(["--root", str(root), "--bundle", str(REPO / "bundle")])
    assert not (REPO / "bundle").exists()
