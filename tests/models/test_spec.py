"""ModelSpec: the checkpoint's ``model`` and ``preprocessing`` dicts read back, written back
byte-identically, built from a training config as the trainer does, and turned into the one
evaluation transform."""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import pytest

from apcnn.models.spec import ModelSpec

INFO = SimpleNamespace(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))

# what the trainer wrote before the optional keys existed, and what it writes with all of them
OLD_MODEL = {
    "backbone": "tf_efficientnet_lite0",
    "weights": "imagenet",
    "tail": "head",
    "freeze_trunk": True,
    "num_attributes": 13,
    "rank": 8,
    "feature_dim": 1280,
}
OLD_PRE = {"image_size": 224, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
FULL_MODEL = {
    **OLD_MODEL,
    "tail": "fc",
    "pool_region": [0.15, 0.85, 0.25, 0.75],
    "flip_average": True,
    "adapt_blocks": 2,
}
FULL_PRE = {**OLD_PRE, "image_height": 336, "crop_fraction": 1.0}


def _dumps(d: dict) -> str:
    return json.dumps(d, indent=2)  # key order matters for byte-identical meta.json


@pytest.mark.parametrize(
    "model, pre",
    [
        (OLD_MODEL, OLD_PRE),
        (FULL_MODEL, FULL_PRE),
        ({**OLD_MODEL, "tail": 2, "weights": "none"}, {**OLD_PRE, "crop_fraction": 1}),
        ({k: v for k, v in OLD_MODEL.items() if k != "feature_dim"}, OLD_PRE),  # hand-made
    ],
)
def test_round_trip_is_the_identity(model, pre):
    spec = ModelSpec.from_checkpoint_meta(model, pre)
    assert _dumps(spec.model_dict()) == _dumps(model)
    assert _dumps(spec.preprocessing_dict()) == _dumps(pre)
    again = ModelSpec.from_checkpoint_meta(spec.model_dict(), spec.preprocessing_dict())
    assert again == spec and hash(again) == hash(spec)


def test_absent_optional_keys_take_their_defaults():
    spec = ModelSpec.from_checkpoint_meta(OLD_MODEL, OLD_PRE)
    assert spec.image_height is None and spec.crop_fraction == 0.875
    assert spec.pool_region is None and spec.flip_average is False and spec.adapt_blocks == 0
    assert spec.input_shape == (224, 224)
    full = ModelSpec.from_checkpoint_meta(FULL_MODEL, FULL_PRE)
    assert full.pool_region == (0.15, 0.85, 0.25, 0.75) and full.flip_average
    assert full.input_shape == (336, 224)
    assert ModelSpec.from_meta({"model": FULL_MODEL, "preprocessing": FULL_PRE}) == full
    # defaults written explicitly read the same, and are dropped on the way back
    explicit = {**OLD_MODEL, "flip_average": False, "adapt_blocks": 0, "pool_region": None}
    spec2 = ModelSpec.from_checkpoint_meta(explicit, {**OLD_PRE, "crop_fraction": 0.875})
    assert spec2 == spec and spec2.model_dict() == OLD_MODEL


@pytest.mark.parametrize(
    "model, pre, match",
    [
        ({**OLD_MODEL, "colour": 1}, OLD_PRE, r"model has unknown key\(s\) \['colour'\]"),
        ({k: v for k, v in OLD_MODEL.items() if k != "rank"}, OLD_PRE, r"lacks.*'rank'"),
        (OLD_MODEL, {**OLD_PRE, "height": 3}, r"preprocessing has unknown key\(s\) \['height'\]"),
        (OLD_MODEL, {"mean": [0.5] * 3, "std": [0.5] * 3}, r"lacks.*'image_size'"),
        ({**OLD_MODEL, "rank": 0}, OLD_PRE, r"model\.rank must be an int >= 1, got 0"),
        ({**OLD_MODEL, "num_attributes": True}, OLD_PRE, r"model\.num_attributes"),
        ({**OLD_MODEL, "tail": -1}, OLD_PRE, r"model\.tail"),
        ({**OLD_MODEL, "flip_average": "yes"}, OLD_PRE, r"model\.flip_average"),
        ({**OLD_MODEL, "pool_region": [0.5, 0.2, 0, 1]}, OLD_PRE, r"model\.pool_region"),
        ({**OLD_MODEL, "pool_region": [0, 1]}, OLD_PRE, r"model\.pool_region"),
        (OLD_MODEL, {**OLD_PRE, "image_height": "tall"}, r"preprocessing\.image_height"),
        (OLD_MODEL, {**OLD_PRE, "crop_fraction": 1.5}, r"preprocessing\.crop_fraction"),
        (OLD_MODEL, {**OLD_PRE, "mean": [0.5, 0.5]}, r"preprocessing\.mean"),
        (OLD_MODEL, {**OLD_PRE, "std": [0.5, 0.0, 0.5]}, r"preprocessing\.std must be > 0"),
        (["backbone"], OLD_PRE, r"model must be a JSON object"),
    ],
)
def test_bad_content_is_a_clear_error(model, pre, match):
    with pytest.raises(ValueError, match=match):
        ModelSpec.from_checkpoint_meta(model, pre)


def test_meta_without_model_or_preprocessing_is_refused():
    with pytest.raises(ValueError, match="no 'preprocessing'"):
        ModelSpec.from_meta({"model": OLD_MODEL})


def test_the_dataclass_checks_its_fields_too():
    spec = ModelSpec.from_checkpoint_meta(OLD_MODEL, OLD_PRE)
    assert dataclasses.replace(spec, rank=3).model_dict() == {**OLD_MODEL, "rank": 3}
    with pytest.raises(ValueError, match="rank"):
        dataclasses.replace(spec, rank=0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.rank = 3  # type: ignore[misc]


# ----------------------------------------------------------------------------- from_config
def _engine_dicts(cfg, info, feature_dim: int, m: int) -> tuple[dict, dict]:
    """The trainer's model_meta and preprocessing, as engine.Trainer.__init__ computed them."""
    model_meta = {
        "backbone": cfg.model.backbone,
        "weights": cfg.model.weights,
        "tail": cfg.model.tail,
        "freeze_trunk": cfg.model.freeze_trunk,
        "num_attributes": m,
        "rank": m,
        "feature_dim": feature_dim,
    }
    if cfg.model.pool_region is not None:
        model_meta["pool_region"] = list(cfg.model.pool_region)
    if cfg.model.flip_average:
        model_meta["flip_average"] = True
    if cfg.train.adapt_blocks:
        model_meta["adapt_blocks"] = cfg.train.adapt_blocks
    preprocessing = {
        "image_size": cfg.data.image_size,
        "mean": list(info.mean),
        "std": list(info.std),
    }
    if cfg.data.image_height is not None:
        preprocessing["image_height"] = cfg.data.image_height
    if cfg.data.crop_fraction != 0.875:
        preprocessing["crop_fraction"] = cfg.data.crop_fraction
    return model_meta, preprocessing


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["model.tail=2", "model.weights=none", "data.image_size=64"],
        [
            "model.tail=fc",
            "model.pool_region=[0.15, 0.85, 0.25, 0.75]",
            "model.flip_average=true",
            "train.adapt_blocks=1",
            "data.image_size=224",
            "data.image_height=336",
            "data.crop_fraction=1.0",
        ],
    ],
)
def test_from_config_matches_the_trainer(overrides):
    from apcnn.config import TrainConfig, load_config
    from apcnn.data.transforms import build_transform

    cfg = load_config(TrainConfig, None, ["data.name=synthetic", *overrides])
    spec = ModelSpec.from_config(cfg, INFO, 1280, 13)
    model_meta, preprocessing = _engine_dicts(cfg, INFO, 1280, 13)
    assert _dumps(spec.model_dict()) == _dumps(model_meta)
    assert _dumps(spec.preprocessing_dict()) == _dumps(preprocessing)
    # the trainer's evaluation transform (engine: build_transform with height and crop)
    shape = {"crop_fraction": cfg.data.crop_fraction, "height": cfg.data.image_height}
    engine_tf = build_transform(cfg.data.image_size, INFO.mean, INFO.std, train=False, **shape)
    assert repr(spec.eval_transform()) == repr(engine_tf)
    # the head's rank changes after the S-CNN stage
    assert dataclasses.replace(spec, rank=5).model_dict() == {**model_meta, "rank": 5}


def test_eval_transform_gives_the_recorded_input_shape():
    from PIL import Image

    photo = Image.new("RGB", (200, 300), (120, 30, 200))
    portrait = ModelSpec.from_checkpoint_meta(
        OLD_MODEL, {**OLD_PRE, "image_size": 32, "image_height": 48, "crop_fraction": 1.0}
    )
    assert tuple(portrait.eval_transform()(photo).shape) == (3, 48, 32)
    square = ModelSpec.from_checkpoint_meta(OLD_MODEL, {**OLD_PRE, "image_size": 32})
    assert tuple(square.eval_transform()(photo).shape) == (3, 32, 32)
