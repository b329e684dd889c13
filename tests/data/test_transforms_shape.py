"""The evaluation/training transforms: portrait input and crop fraction."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from apcnn.data.transforms import build_transform
from apcnn.models.spec import ModelSpec


def _photo(w: int = 267, h: int = 400) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))


@pytest.mark.parametrize("train", [False, True])
def test_portrait_input_has_the_requested_height(train):
    t = build_transform(64, (0.5,) * 3, (0.5,) * 3, train=train, height=96)
    assert tuple(t(_photo()).shape) == (3, 96, 64)
    assert tuple(build_transform(64, None, None, train=train)(_photo()).shape) == (3, 64, 64)


def test_crop_fraction_one_resizes_the_whole_photo_without_a_crop():
    img = _photo()
    whole = build_transform(64, None, None, train=False, crop_fraction=1.0, height=96)(img)
    direct = np.asarray(img.resize((64, 96), Image.BILINEAR), dtype=np.float32) / 255
    # same geometry as a plain resize (antialiasing differs slightly between implementations)
    assert np.abs(whole.permute(1, 2, 0).numpy() - direct).mean() < 0.02
    cropped = build_transform(64, None, None, train=False, height=96)(img)
    assert np.abs(cropped.permute(1, 2, 0).numpy() - direct).mean() > 0.05


def test_checkpoint_preprocessing_rebuilds_the_same_transform():
    model = {"backbone": "tf_efficientnet_lite0", "weights": "none", "tail": "fc"}
    model.update(num_attributes=2, rank=2)
    pre = {"image_size": 64, "mean": [0.5] * 3, "std": [0.5] * 3}
    spec = ModelSpec.from_checkpoint_meta(model, pre)
    assert spec.input_shape == (64, 64)
    assert repr(spec.eval_transform()) == repr(
        build_transform(64, [0.5] * 3, [0.5] * 3, train=False)
    )
    spec = ModelSpec.from_checkpoint_meta(model, dict(pre, image_height=96, crop_fraction=1.0))
    assert spec.input_shape == (96, 64)
    assert tuple(spec.eval_transform()(_photo()).shape) == (3, 96, 64)
