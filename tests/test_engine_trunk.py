"""A trainable trunk (``model.freeze_trunk=false``): images through the whole network, augmented,
fine-tuned end to end, resumed exactly."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from _tiny import tiny_config  # noqa: E402  (tests/ is on sys.path)
from apcnn.checkpoint import load_checkpoint
from apcnn.config import ConfigError, TrainConfig, load_config

TRAINABLE = ["model.freeze_trunk=false", "train.methods=[S-CNN, MG-CNN]", "train.trunk_lr_scale=1"]


@pytest.fixture(autouse=True)
def _feature_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("APCNN_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def _trunk_tensors(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in tensors.items() if k.startswith("cnn.trunk.")}


def test_trainable_trunk_is_fine_tuned_and_saved(tmp_path):
    from apcnn.inference import evaluate_checkpoint
    from apcnn.predictor import build_predictor
    from apcnn.training import train

    out = tmp_path / "run"
    result = train(tiny_config(out, *TRAINABLE))
    assert set(result["results"]) == {"S-CNN", "MG-CNN"}

    tensors, meta = load_checkpoint(out / "checkpoints" / "MG-CNN")
    assert meta["model"]["freeze_trunk"] is False
    pretrained = build_predictor(meta["model"], pretrained=True).state_dict()
    trunk = _trunk_tensors(tensors)
    assert trunk, sorted(tensors)[:5]
    changed = [
        k
        for k, v in trunk.items()
        if v.dtype.is_floating_point and not torch.equal(v, pretrained[k])
    ]
    assert len(changed) > len(trunk) // 2, "the trunk did not train"
    # the saved predictor (trunk included) reproduces the run's test metrics on its own
    metrics = json.loads((out / "metrics.json").read_text())["methods"]["MG-CNN"]
    evaluated = evaluate_checkpoint(out / "checkpoints" / "MG-CNN")
    assert evaluated["metrics"]["accuracy"]["total"] == pytest.approx(metrics["total"], abs=1e-6)


def test_trunk_learning_rate_scale_zero_keeps_trunk_weights(tmp_path):
    from apcnn.predictor import build_predictor
    from apcnn.training import train

    out = tmp_path / "run"
    train(
        tiny_config(
            out,
            *TRAINABLE,
            "train.trunk_lr_scale=0",
            "train.methods=[S-CNN]",
            "train.epochs_single=1",
            "train.weight_decay=0",
        )
    )
    tensors, meta = load_checkpoint(out / "checkpoints" / "S-CNN")
    pretrained = build_predictor(meta["model"], pretrained=True).state_dict()
    weights = {
        k: v for k, v in _trunk_tensors(tensors).items() if k.endswith("weight") and "bn" not in k
    }
    assert weights
    for k, v in weights.items():
        assert torch.equal(v, pretrained[k]), k


class _Stop(Exception):
    pass


def test_trainable_trunk_resume_is_exact(tmp_path, monkeypatch):
    """Interrupted after an augmented SGD epoch of MG-CNN, resumed: bit-identical result."""
    from apcnn.training import steps, train

    extra = [*TRAINABLE, "train.epochs_single=1", "train.epochs_joint=2", "data.augment=true"]
    train(tiny_config(tmp_path / "full", *extra))

    original = steps.sgd_epoch

    def stop_mid_joint(ctx, sgd, method, rnd, epoch, step):
        original(ctx, sgd, method, rnd, epoch, step)
        if method.name == "MG-CNN" and epoch == 0:
            raise _Stop

    monkeypatch.setattr(steps, "sgd_epoch", stop_mid_joint)
    cfg = tiny_config(tmp_path / "cut", *extra)
    with pytest.raises(_Stop):
        train(cfg)
    monkeypatch.setattr(steps, "sgd_epoch", original)
    torch.manual_seed(12345)  # the resumed run must not depend on the caller's random state
    train(cfg, resume=True)

    for method in ("S-CNN", "MG-CNN"):
        a, _ = load_checkpoint(tmp_path / "full" / "checkpoints" / method)
        b, _ = load_checkpoint(tmp_path / "cut" / "checkpoints" / method)
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key].numpy(), b[key].numpy(), err_msg=key)
    full = json.loads((tmp_path / "full" / "metrics.json").read_text())["methods"]
    cut = json.loads((tmp_path / "cut" / "metrics.json").read_text())["methods"]
    assert full == cut


def test_augmentation_of_a_frozen_trunk_is_refused():
    with pytest.raises(ConfigError, match="data.augment") as err:
        load_config(TrainConfig, None, ["data.augment=true"])
    assert "\n" not in str(err.value) and "freeze_trunk=false" in str(err.value)
    cfg = load_config(TrainConfig, None, ["data.augment=true", "model.freeze_trunk=false"])
    assert cfg.data.augment is True
