"""The real Clothing Attribute Dataset in ../shared/data (skipped when absent).

The expected counts are the "known facts" of ../shared/data/README.md.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from apcnn.data import create_dataset
from apcnn.data.splits import kfold_indices
from apcnn.data.verify import verify_dataset

# ../shared/data relative to the repository root (tests/data/ -> repo -> its parent)
REAL_CLOTHING = Path(__file__).resolve().parents[3] / "shared/data/ClothingAttributeDataset"
MISSING = {
    "black": 112,
    "collar": 394,
    "gender": 62,
    "necktie": 117,
    "pattern_solid": 363,
    "placket": 73,
    "skin_exposure": 166,
}
MULTI_MISSING = {"category": 752, "neckline": 542, "sleevelength": 75}
POSITIVES = {"black": 620, "white": 466, "gender": 1032, "pattern_solid": 1052, "collar": 895}
GROUPS = {
    "colors": [
        "black",
        "blue",
        "brown",
        "cyan",
        "gray",
        "green",
        "many_colors",
        "red",
        "purple",
        "white",
        "yellow",
    ],
    "patterns": [
        "pattern_floral",
        "pattern_graphics",
        "pattern_plaid",
        "pattern_solid",
        "pattern_stripe",
        "pattern_spot",
    ],
    "cloth_parts": ["necktie", "scarf", "placket", "collar"],
    "appearance": ["skin_exposure", "gender"],
}


@pytest.fixture(scope="module")
def clothing():
    if not (REAL_CLOTHING / "labels").is_dir():
        pytest.skip(f"real Clothing Attribute Dataset not found at {REAL_CLOTHING}")
    return create_dataset("clothing", root=REAL_CLOTHING)


def test_counts_and_groups(clothing):
    assert len(clothing) == 1856
    assert clothing.schema.num_attributes == 23
    got = {g: [clothing.schema.names[i] for i in idx] for g, idx in clothing.schema.groups}
    assert got == GROUPS
    assert list(got) == ["colors", "patterns", "cloth_parts", "appearance"]
    assert clothing.sample_ids[0] == "images/000001.jpg"
    assert clothing.sample_ids[-1] == "images/001856.jpg"


def test_label_statistics_match_readme(clothing):
    stats = clothing.describe()["attributes"]
    for a, n in MISSING.items():
        assert stats[a]["missing"] == n, a
    for a, n in POSITIVES.items():
        assert stats[a]["positives"] == n, a
    for a, s in stats.items():
        assert s["positives"] + s["negatives"] + s["missing"] == 1856, a


def test_multiclass_missing_counts(clothing):
    ds = create_dataset("clothing", root=clothing.root, include_multiclass=True)
    for mc in ds.schema.multiclass:
        cols = list(mc.members)
        assert int((~ds.mask[:, cols].any(axis=1)).sum()) == MULTI_MISSING[mc.name]
        labelled = ds.mask[:, cols].all(axis=1)
        assert ((ds.targets[labelled][:, cols] > 0).sum(axis=1) == 1).all()


def test_item_and_folds(clothing):
    item = clothing[0]
    assert item["image"].shape == (3, 224, 224) and item["target"].shape == (23,)
    assert torch.equal(item["mask"], torch.from_numpy(clothing.mask[0]))
    folds = kfold_indices(len(clothing), k=5, seed=0)
    assert [len(t) for _, t in folds] == [372, 371, 371, 371, 371]
    sub = clothing.subset(folds[0][1])
    assert len(sub) == 372 and sub.cache_key() != clothing.cache_key()


def test_verify_real(clothing):
    rep = verify_dataset("clothing", clothing.root)  # decodes all 1856 (2.2 s on 2 CPU cores)
    assert rep.ok and rep.images_checked == 1856 and rep.images_missing == 0
    assert rep.images_decoded == 1856 and rep.images_corrupt == 0
    assert rep.to_dict()["attributes"]["black"]["missing"] == 112
    # the published archive holds 46 groups of byte-identical photos (96 files), e.g.
    # 000084.jpg = 000085.jpg, most with different labels: a warning, not a problem
    assert len(rep.duplicates) == 46 and sum(map(len, rep.duplicates)) == 96
    assert ["images/000084.jpg", "images/000085.jpg"] in rep.duplicates
