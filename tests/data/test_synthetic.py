"""The embedded synthetic dataset: determinism, splits, balance, label noise, learnability."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from apcnn.data import DatasetOptionError, create_dataset
from apcnn.data.synthetic import (
    CLASS_TABLE,
    COLOURS,
    SEEN_CLASSES,
    UNSEEN_CLASSES,
    render_image,
    synthetic_schema,
)


def test_schema():
    s = synthetic_schema()
    assert s.group_names == ["colour", "shape", "size", "texture"]
    assert s.num_attributes == 13 and len(s.class_names) == 16
    ca = s.class_attributes
    assert ca.shape == (16, 13)
    # every class has exactly one value per group, and classes are distinct
    for idx in s.group_indices:
        assert (ca[:, idx].sum(axis=1) == 1).all()
    assert len({tuple(r) for r in ca}) == 16
    # every attribute value of the unseen classes occurs among the seen classes (zero-shot)
    assert (ca[list(SEEN_CLASSES)].sum(axis=0) >= 3).all()
    assert len(UNSEEN_CLASSES) == 4


def test_images_are_deterministic_per_index():
    a = create_dataset("synthetic", num_images=20, image_size=48)
    b = create_dataset("synthetic", num_images=50, image_size=48)
    for i in (0, 7, 19):
        assert np.array_equal(np.asarray(a.load_image(i)), np.asarray(b.load_image(i)))
    np.testing.assert_array_equal(a.targets, b.targets[:20])
    np.testing.assert_array_equal(a.mask, b.mask[:20])
    assert not np.array_equal(np.asarray(a.load_image(0)), np.asarray(a.load_image(16)))
    c = create_dataset("synthetic", num_images=20, image_size=48, seed=1)
    assert not np.array_equal(np.asarray(a.load_image(3)), np.asarray(c.load_image(3)))
    img = render_image(5, 5, 48, 0)
    assert img.shape == (48, 48, 3) and img.dtype == np.uint8 and img.std() > 20


def test_splits():
    parts = {
        s: create_dataset("synthetic", num_images=320, split=s)
        for s in ("all", "train", "val", "test", "unseen")
    }
    ids = {s: set(d.sample_ids) for s, d in parts.items()}
    assert not ids["train"] & ids["val"] and not ids["train"] & ids["test"]
    assert not ids["val"] & ids["test"]
    assert ids["train"] | ids["val"] | ids["test"] | ids["unseen"] == ids["all"]
    assert set(parts["unseen"].class_ids) == set(UNSEEN_CLASSES)
    for s in ("train", "val", "test"):
        assert not set(parts[s].class_ids) & set(UNSEEN_CLASSES)
    assert len(parts["val"]) == len(parts["test"]) == 36  # 15% of 240 seen images
    assert set(parts["train"].class_ids) == set(SEEN_CLASSES)
    assert parts["all"].split_sizes == {s: len(d) for s, d in parts.items()}


def test_labels_noise_missing_and_balance():
    clean = create_dataset("synthetic", num_images=800, missing_rate=0.0)
    ca = clean.schema.class_attributes
    np.testing.assert_array_equal(clean.targets, 2 * ca[clean.class_ids] - 1)
    assert clean.mask.all()
    rate = (clean.targets > 0).mean(axis=0)
    assert rate.min() >= 0.2 and rate.max() <= 0.8  # balanced enough (colour/shape are 1 of 4)
    noisy = create_dataset("synthetic", num_images=800, label_noise=0.1, missing_rate=0.1)
    flipped = (noisy.targets != clean.targets) & noisy.mask
    assert 0.07 < flipped.sum() / noisy.mask.sum() < 0.13
    assert 0.07 < (~noisy.mask).mean() < 0.13
    assert (noisy.targets[~noisy.mask] == 0).all()


def _hue_histogram(img: Image.Image, bins: int = 12) -> np.ndarray:
    hsv = np.asarray(img.convert("HSV"), dtype=np.float32)
    sat = (hsv[..., 1] > 110) & (hsv[..., 2] > 50)
    h, _ = np.histogram(hsv[..., 0][sat], bins=bins, range=(0, 256))
    return h / max(1, sat.sum())


def test_colour_is_learnable_from_a_hue_histogram():
    """Logistic regression on a 12-bin hue histogram beats chance (25%) on the colour group."""
    from sklearn.linear_model import LogisticRegression

    ds = create_dataset("synthetic", num_images=320, image_size=64, missing_rate=0.0)
    X = np.stack([_hue_histogram(ds.load_image(i)) for i in range(len(ds))])
    y = np.array([COLOURS.index(CLASS_TABLE[c][0]) for c in ds.class_ids])
    clf = LogisticRegression(max_iter=2000).fit(X[:240], y[:240])
    acc = (clf.predict(X[240:]) == y[240:]).mean()
    assert acc > 0.7, acc
    # ... and the labels are not readable from a constant feature (the test can fail)
    assert (np.bincount(y[240:]).max() / 80) < 0.4


def test_bad_options():
    with pytest.raises(DatasetOptionError, match="num_images must be an int >= 1"):
        create_dataset("synthetic", num_images=0)
    with pytest.raises(DatasetOptionError, match=r"label_noise must be in \[0, 0.5\)"):
        create_dataset("synthetic", label_noise=0.6)
    with pytest.raises(DatasetOptionError, match="val_fraction \\+ test_fraction"):
        create_dataset("synthetic", val_fraction=0.5, test_fraction=0.5)
