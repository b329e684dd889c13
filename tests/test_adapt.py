"""Trunk adaptation (apcnn.adapt) and its use by the training engine (train.adapt_blocks)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from _tiny import tiny_config  # noqa: E402  (tests/ is on sys.path)
from apcnn.adapt import (
    Mirrored,
    adapt_top,
    feature_collapse,
    split_top,
    top_features,
    validation_gate,
)
from apcnn.config import ConfigError
from apcnn.models.backbone import create_backbone

REGION = (0.15, 0.85, 0.25, 0.75)


@pytest.fixture(autouse=True)
def _feature_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("APCNN_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="module")
def backbone() -> nn.Module:
    torch.manual_seed(0)
    return create_backbone("tf_efficientnet_lite0", weights="none")[0].eval()


def test_bottom_then_top_is_the_backbone_and_shares_its_modules(backbone):
    bottom, top = split_top(backbone, 3)
    x = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        torch.testing.assert_close(top(bottom(x)), backbone.forward_features(x))
    assert top[-2] is backbone.conv_head and top[-1] is backbone.bn2
    assert bottom[0] is backbone.conv_stem


def test_split_top_rejects_bad_block_counts_and_other_families(backbone):
    with pytest.raises(ValueError, match=r"adapt_blocks must be in \[1, 16\]"):
        split_top(backbone, 17)
    with pytest.raises(ValueError, match="adapt_blocks"):
        split_top(backbone, 0)
    with pytest.raises(NotImplementedError, match="EfficientNet"):
        split_top(nn.Sequential(nn.Conv2d(3, 3, 1)), 1)


def _toy_problem(bottom: nn.Module, n: int = 48):
    """Bottom maps of noise images with a bright left or right half; attribute 0 says which,
    attribute 1 is its opposite, attribute 2 is unlabelled everywhere."""
    g = torch.Generator().manual_seed(0)
    images = torch.randn(n, 3, 64, 48, generator=g) * 0.1
    side = torch.rand(n, generator=g) < 0.5
    images[side, :, :, :24] += 1.0
    with torch.no_grad():
        maps = bottom(images)
    y = torch.stack([side.float() * 2 - 1, 1 - side.float() * 2, torch.zeros(n)], 1)
    mask = torch.ones(n, 3, dtype=torch.bool)
    mask[:, 2] = False
    return maps, y, mask


def test_adapt_top_trains_in_place_lowers_the_loss_and_is_seeded():
    torch.manual_seed(1)
    model = create_backbone("tf_efficientnet_lite0", weights="none")[0].eval()
    bottom, top = split_top(model, 2)
    maps, y, mask = _toy_problem(bottom)
    top.requires_grad_(False)  # as in a frozen trunk: adapt_top turns gradients back on
    before = copy.deepcopy(top.state_dict())
    twin = copy.deepcopy(top)
    history = adapt_top(top, maps, y, mask, epochs=4, lr=3e-3, batch_size=16, seed=7)
    assert len(history) == 4 and history[-1]["loss"] < history[0]["loss"]
    assert any(not torch.equal(before[k], v) for k, v in top.state_dict().items())
    assert model.conv_head is top[-2]  # the backbone itself was adapted
    again = adapt_top(twin, maps, y, mask, epochs=4, lr=3e-3, batch_size=16, seed=7)
    assert again == history
    assert history[-1]["rejected"] is False  # a healthy adaptation passes the collapse guard
    for (k, a), b in zip(top.state_dict().items(), twin.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)
    assert not any(p.requires_grad for p in top.parameters())


def test_feature_collapse_flags_dead_or_shrunk_features_not_exact_zeros():
    g = torch.Generator().manual_seed(0)
    before = torch.randn(50, 40, generator=g).clamp(0, 6)  # ReLU6-like: many exact zeros
    healthy = feature_collapse(before, before * 2 + 1)
    assert healthy == {"dead_share": 0.0, "spread_ratio": pytest.approx(2.0), "collapsed": False}
    dead = before.clone()
    dead[:, :30] = 6.0  # 75 % of the features answer the same for every image: degraded, kept
    verdict = feature_collapse(before, dead)
    assert verdict["dead_share"] == pytest.approx(0.75) and not verdict["collapsed"]
    dead[:, :39] = 0.0  # 97.5 %: collapsed
    assert feature_collapse(before, dead)["collapsed"]
    shrunk = feature_collapse(before, before * 1e-3)  # no constant feature, but 1e-3 the spread
    assert shrunk["dead_share"] == 0.0 and shrunk["collapsed"]


class _CollapsingAdamW(torch.optim.AdamW):
    """AdamW that zeroes the first group's parameters (the top's) after each step: every image
    then gets the same pooled features, the collapse of issue 19 made certain."""

    def step(self, closure=None):  # type: ignore[override]
        out = super().step(closure)
        with torch.no_grad():
            for p in self.param_groups[0]["params"]:
                p.zero_()
        return out


def test_a_collapsed_adaptation_is_rejected_with_a_warning(monkeypatch, caplog):
    bottom, top = split_top(create_backbone("tf_efficientnet_lite0", weights="none")[0], 1)
    maps, y, mask = _toy_problem(bottom, n=8)
    start = copy.deepcopy(top.state_dict())
    monkeypatch.setattr(torch.optim, "AdamW", _CollapsingAdamW)
    with caplog.at_level("WARNING", logger="apcnn.adapt"):
        history = adapt_top(top, maps, y, mask, epochs=1, batch_size=4, seed=0)
    assert history[-1]["rejected"] is True and history[-1]["dead_share"] > 0.95
    assert "REJECTED, the ImageNet trunk is kept" in caplog.text
    assert "train.adapt_blocks=0" in caplog.text and "train.adapt_lr" in caplog.text
    for k, v in top.state_dict().items():  # the starting (ImageNet) top is back
        torch.testing.assert_close(v, start[k], rtol=0, atol=0, msg=k)
    assert not any(p.requires_grad for p in top.parameters())


def test_adapt_top_checks_shapes():
    bottom, top = split_top(create_backbone("tf_efficientnet_lite0", weights="none")[0], 1)
    maps, y, mask = _toy_problem(bottom, n=4)
    with pytest.raises(ValueError, match="expected"):
        adapt_top(top, maps[0], y, mask)
    with pytest.raises(ValueError, match="expected"):
        adapt_top(top, maps, y[:, :2], mask)
    with pytest.raises(ValueError, match="mirrored maps"):
        adapt_top(top, maps, y, mask, mirrored=maps[:2])


def test_top_features_equal_the_pooled_trunk_on_images(backbone):
    from apcnn.models.fc_tail import PooledTrunk

    bottom, top = split_top(backbone, 4)
    x = torch.randn(3, 3, 96, 64)
    with torch.no_grad():
        maps = bottom(x)
        for region in (None, REGION):
            expected = PooledTrunk(backbone, region).eval()(x)
            got = top_features(top, maps, region, batch_size=2)
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_flip_averaged_features_from_maps_equal_the_trunk_and_ignore_mirroring(backbone):
    """top_features(mirrored=...) on the bottom maps of an image and of its mirror image equals
    PooledTrunk(flip_average=True) on the image, and a mirrored image has the same features."""
    from apcnn.models.fc_tail import PooledTrunk

    bottom, top = split_top(backbone, 3)
    x = torch.randn(3, 3, 96, 64)
    with torch.no_grad():
        trunk = PooledTrunk(backbone, REGION, flip_average=True).eval()
        expected = trunk(x)
        torch.testing.assert_close(trunk(x.flip(-1)), expected, rtol=1e-5, atol=1e-5)
        plain = PooledTrunk(backbone, REGION).eval()
        torch.testing.assert_close(expected, (plain(x) + plain(x.flip(-1))) / 2)
        maps, mirrored = bottom(x), Mirrored(bottom)(x)
        got = top_features(top, maps, REGION, mirrored=mirrored, batch_size=2)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        with pytest.raises(ValueError, match="mirrored maps"):
            top_features(top, maps, REGION, mirrored=mirrored[:, :, :-1])


def test_adapt_top_with_mirror_maps_is_seeded_and_uses_them():
    bottom, top = split_top(create_backbone("tf_efficientnet_lite0", weights="none")[0], 1)
    maps, y, mask = _toy_problem(bottom, n=8)
    start = copy.deepcopy(top.state_dict())
    runs = []
    for mirrored in (maps.flip(-1), maps.flip(-1), torch.zeros_like(maps)):
        top.load_state_dict(start)
        adapt_top(top, maps, y, mask, mirrored=mirrored, epochs=2, batch_size=4, seed=3)
        runs.append(copy.deepcopy(top.state_dict()))
    for k in start:
        torch.testing.assert_close(runs[0][k], runs[1][k], rtol=0, atol=0)
    assert any(not torch.equal(runs[0][k], runs[2][k]) for k in start if k.endswith("weight"))


@pytest.mark.parametrize("flip", [False, True], ids=["plain", "flip_average"])
def test_engine_adapts_the_trunk_and_checkpoints_carry_it(tmp_path, flip):
    """train.adapt_blocks: the trunk's top is trained once before the methods, recorded, saved
    with every method's checkpoint (evaluate reproduces the test accuracy from images), and a
    second run in the same folder loads the adaptation instead of redoing it."""
    from apcnn.checkpoint import load_checkpoint
    from apcnn.inference import evaluate_checkpoint
    from apcnn.runlog import RunDir
    from apcnn.training import Trainer, train

    out = tmp_path / "run"
    # without the validation gate (on these 160 noise images it reverts: test below)
    extra = ["model.tail=fc", "train.adapt_blocks=2", "train.adapt_epochs=2"]
    extra += ["train.adapt_gate=none"]
    extra += ["train.methods=[S-CNN, MG-CNN]", f"model.flip_average={str(flip).lower()}"]
    result = train(tiny_config(out, *extra))
    metrics = json.loads((out / "metrics.json").read_text())
    assert "adapt" in result["chosen"] and result["chosen"]["adapt"]["blocks"] == 2
    assert result["chosen"]["adapt"]["gate"] is None
    assert "adapting the last 2 blocks" in (out / "train.log").read_text()
    adapted, meta = load_checkpoint(out / "checkpoints" / "adapted_top")
    assert len(meta["history"]) == 2
    pretrained = create_backbone("tf_efficientnet_lite0", weights="imagenet")[0].state_dict()
    for method in ("S-CNN", "MG-CNN"):
        ckpt = out / "checkpoints" / method
        tensors, meta = load_checkpoint(ckpt)
        assert meta["model"]["adapt_blocks"] == 2
        assert meta["model"].get("flip_average", False) is flip
        head = tensors["cnn.trunk.backbone.conv_head.weight"]
        torch.testing.assert_close(head, adapted["2.weight"])  # top = [block, block, head, bn]
        assert not torch.equal(head, pretrained["conv_head.weight"])
        stem = tensors["cnn.trunk.backbone.conv_stem.weight"]
        torch.testing.assert_close(stem, pretrained["conv_stem.weight"], rtol=0, atol=0)
        evaluated = evaluate_checkpoint(ckpt)
        assert evaluated["metrics"]["accuracy"]["total"] == pytest.approx(
            metrics["methods"][method]["total"], abs=1e-4
        )
    cfg = tiny_config(out, *extra)
    with RunDir(out) as run:
        again = Trainer(cfg, run, resume=True)
    assert "trunk adaptation loaded" in (out / "train.log").read_text()
    assert again.inputs.adaptation is not None
    assert (
        again.inputs.adaptation["history"]
        == load_checkpoint(out / "checkpoints" / "adapted_top")[1]["history"]
    )
    # the extract baselines see the ImageNet trunk, not the adapted one
    xs = again.pretrained_inputs("test")
    assert xs.shape == again.splits["test"].inputs.shape
    assert not torch.allclose(xs, again.splits["test"].inputs)


def _labels_and_features(n: int, seed: int):
    """(x (n, 20), y (n, 3), mask (n, 3)): labels y = sign(x w + 0.1) of the features; a tenth
    of the labels unknown."""
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 20))
    y = np.sign(x @ rng.normal(size=(20, 3)) + 0.1)
    return x, y, rng.random((n, 3)) > 0.1


def test_validation_gate_keeps_the_top_whose_probe_wins_on_validation():
    """The gate's decision on synthetic features: adapted features that are noise against
    informative ImageNet features -> reverted; the opposite -> kept; a tie -> kept."""
    import numpy as np

    x_all, y_all, m_all = _labels_and_features(450, seed=0)  # 300 train, 150 validation
    rng = np.random.default_rng(1)
    noise_train, noise_val = rng.normal(size=(300, 20)), rng.normal(size=(150, 20))
    good_train, y_train, m_train = x_all[:300], y_all[:300], m_all[:300]
    good_val, y_val, m_val = x_all[300:], y_all[300:], m_all[300:]
    labels = (y_train, m_train, y_val, m_val)
    bad = validation_gate((noise_train, noise_val), (good_train, good_val), *labels)
    assert bad["kept"] is False and bad["imagenet"] > 0.9 and bad["adapted"] < 0.7
    good = validation_gate((good_train, good_val), (noise_train, noise_val), *labels)
    assert good["kept"] is True and good["adapted"] == bad["imagenet"]
    tie = validation_gate((good_train, good_val), (good_train, good_val), *labels)
    assert tie["kept"] is True and tie["adapted"] == tie["imagenet"]
    # a loss within the tolerance keeps the adapted top
    lenient = validation_gate(
        (noise_train, noise_val), (good_train, good_val), *labels, tolerance=1
    )
    assert lenient["kept"] is True


def test_the_validation_gate_reverts_a_losing_adaptation_end_to_end_and_on_resume(tmp_path):
    """train.adapt_gate=validation (the default): on the tiny synthetic run (160 noise images,
    a 2-block adaptation) the probe on the ImageNet top wins on validation, so the ImageNet top
    is put back with a WARNING, recorded in chosen.adapt.gate and in the adapted_top meta, and
    saved: every method's features are then S-extract's, also after a resume."""
    from apcnn.checkpoint import load_checkpoint
    from apcnn.runlog import RunDir
    from apcnn.training import Trainer

    out = tmp_path / "run"
    cfg = tiny_config(out, "model.tail=fc", "train.adapt_blocks=2", "train.adapt_epochs=2")
    assert cfg.train.adapt_gate == "validation"
    with RunDir(out) as run:
        trainer = Trainer(cfg, run)
    gate = trainer.chosen["adapt"]["gate"]
    assert set(gate) == {"adapted", "imagenet", "kept"} and gate["kept"] is False
    assert gate["adapted"] < gate["imagenet"]
    assert trainer.chosen["adapt"]["rejected"] is False  # not a collapse: the gate's call
    log = (out / "train.log").read_text()
    assert "REVERTED by the validation gate" in log and "train.adapt_blocks=0" in log
    assert "train.adapt_epochs" in log
    saved, meta = load_checkpoint(out / "checkpoints" / "adapted_top")
    assert meta["history"][-1]["gate"] == gate
    pretrained = create_backbone("tf_efficientnet_lite0", weights="imagenet")[0].state_dict()
    torch.testing.assert_close(saved["2.weight"], pretrained["conv_head.weight"], rtol=0, atol=0)
    for split in ("train", "test"):  # the methods see exactly the ImageNet (S-extract) features
        torch.testing.assert_close(
            trainer.splits[split].inputs, trainer.pretrained_inputs(split), rtol=0, atol=0
        )
    with RunDir(out) as run:
        again = Trainer(tiny_config(out, "model.tail=fc", "train.adapt_blocks=2"), run)
    assert "trunk adaptation loaded" in (out / "train.log").read_text()
    assert again.chosen["adapt"]["gate"] == gate
    torch.testing.assert_close(
        again.splits["test"].inputs, trainer.splits["test"].inputs, rtol=0, atol=0
    )


def test_adapt_blocks_needs_an_fc_tail_on_a_frozen_trunk(tmp_path):
    with pytest.raises(ConfigError, match="train.adapt_blocks.*model.tail=fc"):
        tiny_config(tmp_path, "model.tail=head", "train.adapt_blocks=2")
    with pytest.raises(ConfigError, match="train.adapt_blocks"):
        tiny_config(tmp_path, "model.tail=fc", "train.adapt_blocks=-1")


def test_flip_average_needs_an_fc_tail(tmp_path):
    with pytest.raises(ConfigError, match="model.flip_average.*model.tail=fc"):
        tiny_config(tmp_path, "model.tail=head", "model.flip_average=true")


def test_too_many_adapt_blocks_is_a_config_error(tmp_path):
    from apcnn.training import train

    with pytest.raises(ConfigError, match=r"adapt_blocks must be in \[1, 16\]"):
        train(tiny_config(tmp_path / "run", "model.tail=fc", "train.adapt_blocks=40"))


@pytest.mark.parametrize("extra", [["model.freeze_trunk=false"], []], ids=["trainable", "conv"])
def test_pretrained_inputs_are_the_imagenet_features_for_any_trunk(tmp_path, extra):
    """S-/M-extract need the pooled ImageNet features also when the model's trunk is trainable or
    ends in conv tails (e.g. a GPU run with model.tail=all)."""
    from apcnn.models.fc_tail import PooledTrunk
    from apcnn.runlog import RunDir
    from apcnn.training import Trainer

    cfg = tiny_config(tmp_path / "run", "model.tail=head", *extra)
    with RunDir(tmp_path / "run") as run:
        trainer = Trainer(cfg, run)
        xs = trainer.pretrained_inputs("test")
    source, rows = trainer.inputs.datasets["test"]
    trunk = PooledTrunk(create_backbone("tf_efficientnet_lite0", weights="imagenet")[0]).eval()
    with torch.no_grad():
        images = torch.stack([source[int(i)]["image"] for i in rows[:4]])
        expected = trunk(images)
    assert xs.shape == (len(rows), expected.shape[1])
    torch.testing.assert_close(xs[:4], expected, rtol=1e-4, atol=1e-4)
