"""End-to-end training on the synthetic dataset: stages, run folder, checkpoints, exact resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from _tiny import TINY, tiny_config  # noqa: E402  (tests/ is on sys.path)
from apcnn.checkpoint import CheckpointError, load_checkpoint
from apcnn.config import ConfigError, TrainConfig, load_config


@pytest.fixture(autouse=True)
def _feature_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("APCNN_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def test_train_writes_run_folder_and_loadable_checkpoints(tiny_run, tmp_path):
    from apcnn.inference import evaluate_checkpoint, predict_images

    out, result = tiny_run
    assert set(result["results"]) == {"S-CNN", "M-CNN", "MG-CNN"}
    for name in [
        "config.yaml",
        "metrics.json",
        "metrics.jsonl",
        "train.log",
        "report.md",
        "environment.json",
    ]:
        assert (out / name).exists(), name
    metrics = json.loads((out / "metrics.json").read_text())
    for method in ["S-CNN", "M-CNN", "MG-CNN"]:
        block = metrics["methods"][method]
        assert 0.0 <= block["total"] <= 1.0
        assert block["metric"] == "accuracy"
        assert set(block["per_attribute"]) == set(result["schema"].names)
    for history in result["histories"]["MG-CNN"]:  # one list per solver call
        assert all(b <= a * (1 + 1e-6) + 1e-9 for a, b in zip(history, history[1:]))

    ckpt = out / "checkpoints" / "MG-CNN"
    evaluated = evaluate_checkpoint(ckpt)
    assert evaluated["metrics"]["accuracy"]["total"] == pytest.approx(
        metrics["methods"]["MG-CNN"]["total"], abs=1e-6
    )
    from apcnn.data import create_dataset

    ds = create_dataset("synthetic", split="test", num_images=160, image_size=64)
    image = tmp_path / "x.png"
    ds.load_image(0).save(image)
    (pred,) = predict_images(ckpt, [str(image)])
    attrs = pred["attributes"]
    assert set(attrs) == set(result["schema"].names)
    for value in attrs.values():
        assert 0.0 <= value["probability"] <= 1.0
        assert value["decision"] == (value["score"] > 0)


def test_config_errors_are_one_line(tmp_path):
    with pytest.raises(ConfigError, match="train.methodz"):
        load_config(TrainConfig, None, ["train.methodz=[S-CNN]"])
    with pytest.raises(ConfigError, match="data.root"):
        from apcnn.config import check_data_root

        check_data_root(load_config(TrainConfig, None, ["data.name=clothing"]))


def test_tampered_checkpoint_is_rejected(tmp_path):
    from apcnn.training import train

    out = tmp_path / "run"
    train(tiny_config(out, "train.methods=[S-CNN]", "train.epochs_single=1"))
    ckpt = out / "checkpoints" / "S-CNN"
    load_checkpoint(ckpt)
    (tensor_file,) = ckpt.glob("tensors-*.safetensors")
    data = bytearray(tensor_file.read_bytes())
    data[-10] ^= 0xFF
    tensor_file.write_bytes(bytes(data))
    with pytest.raises(CheckpointError):
        load_checkpoint(ckpt)


def _run_cli(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "apcnn", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.slow
def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path):
    """Kill a training process after its first checkpoint; --resume ends bit-identical (with
    the ridge CV choices and the linear probe, which must see the initial tails again)."""
    env = dict(os.environ, APCNN_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    auto = ["train.linear_probe=true", "mtl.lam=auto", "mtl.task_weights=auto"]
    overrides = [a for o in [*TINY, *auto] for a in ("--set", o)]
    config = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"

    full = _run_cli(["train", "-c", str(config), *overrides, "--out", str(tmp_path / "full")], env)
    assert full.wait(timeout=600) == 0, full.stdout.read()

    killed_out = tmp_path / "killed"
    proc = _run_cli(["train", "-c", str(config), *overrides, "--out", str(killed_out)], env)
    state = killed_out / "checkpoints"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if (state / "state" / "meta.json").exists():
            break
        time.sleep(0.05)
    assert proc.poll() is None, "training finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed_out / "metrics.json").exists()

    resumed = _run_cli(
        ["train", "-c", str(config), *overrides, "--out", str(killed_out), "--resume"], env
    )
    log = resumed.stdout.read()
    assert resumed.wait(timeout=600) == 0, log
    assert "resumed after step" in (killed_out / "train.log").read_text()

    for method in ["S-CNN", "M-CNN", "MG-CNN"]:
        a, _ = load_checkpoint(tmp_path / "full" / "checkpoints" / method)
        b, _ = load_checkpoint(killed_out / "checkpoints" / method)
        assert a.keys() == b.keys()
        for key in ("head.L", "head.S", "head.bias"):
            np.testing.assert_array_equal(a[key].numpy(), b[key].numpy(), err_msg=key)
    m_full = json.loads((tmp_path / "full" / "metrics.json").read_text())["methods"]
    m_res = json.loads((killed_out / "metrics.json").read_text())["methods"]
    assert m_full == m_res


def test_tail_decay_to_init_keeps_tails_near_their_start(tmp_path):
    """L2-SP: with a strong decay the fc tails stay at their identity start; plain weight
    decay pulls them towards zero instead."""
    import torch

    from apcnn.training import train

    moved = {}
    for to_init in (False, True):
        out = tmp_path / f"run-{to_init}"
        train(
            tiny_config(
                out,
                "model.tail=fc",
                "train.methods=[S-CNN]",
                "train.epochs_single=1",
                "train.weight_decay=0.5",
                f"train.tail_decay_to_init={str(to_init).lower()}",
                "train.head_weight_decay=0.0005",
            )
        )
        tensors, _ = load_checkpoint(out / "checkpoints" / "S-CNN")
        weights = [v for k, v in tensors.items() if k.startswith("cnn.") and v.ndim == 3]
        assert weights, sorted(tensors)
        eye = torch.eye(weights[0].shape[-1])
        moved[to_init] = max(float((w - eye).abs().max()) for w in weights)
    assert moved[True] < 0.1 * moved[False]


def test_task_weights_are_checked_and_weight_the_sgd_loss(tmp_path):
    import torch

    from apcnn.losses import masked_squared_hinge
    from apcnn.training import train

    with pytest.raises(ConfigError, match="mtl.task_weights.*3 values"):
        train(tiny_config(tmp_path / "run", "mtl.task_weights=[1, 2, 3]"))
    with pytest.raises(ConfigError, match="mtl.task_weights"):
        load_config(TrainConfig, None, ["mtl.task_weights=[1, 0]"])
    scores = torch.tensor([[0.0, 2.0], [0.5, -1.0]])
    y = torch.tensor([[1.0, -1.0], [1.0, -1.0]])
    mask = torch.tensor([[True, True], [True, False]])
    c = torch.tensor([2.0, 3.0])
    # entries: 0.5*1, 0.5*9 (x3), 0.5*0.25 (x2 for the first column); 3 labelled
    want = (2 * 0.5 + 3 * 4.5 + 2 * 0.125) / 3
    assert float(masked_squared_hinge(scores, y, mask, task_weights=c)) == pytest.approx(want)


@pytest.mark.parametrize("keep_best", [True, False])
def test_keep_best_returns_to_the_best_validated_round(tmp_path, monkeypatch, keep_best):
    """With validation accuracies 0.9 / 0.5 for rounds 0 / 1, MG-CNN ends with round 0's model
    (keep_best) or with the last one (keep_best=false)."""
    import torch

    from apcnn.training import KeepBest, train

    heads = {}
    original = KeepBest.update

    def fake_val(self, method, rnd, val, model):
        heads[(method, rnd)] = model.head.L.detach().clone()
        return original(self, method, rnd, {0: 0.9, 1: 0.5}[rnd], model)

    monkeypatch.setattr(KeepBest, "update", fake_val)
    out = tmp_path / "run"
    result = train(
        tiny_config(
            out, "train.methods=[S-CNN, MG-CNN]", f"train.keep_best={str(keep_best).lower()}"
        )
    )
    final, _ = load_checkpoint(out / "checkpoints" / "MG-CNN")
    if keep_best:
        assert result["chosen"]["MG-CNN"]["best_round"] == 0
        assert torch.equal(final["head.L"], heads[("MG-CNN", 0)])
        assert not torch.equal(final["head.L"], heads[("MG-CNN", 1)])
    else:
        assert ("MG-CNN", 0) not in heads
    assert not (out / "checkpoints" / "MG-CNN.best").exists()


def test_auto_task_weights_are_chosen_and_recorded(tmp_path):
    from apcnn.training import train

    result = train(
        tiny_config(
            tmp_path / "run",
            "mtl.task_weights=auto",
            "train.methods=[S-CNN]",
            "train.epochs_single=1",
        )
    )
    weights = result["chosen"]["task_weights"]
    assert set(weights) == set(result["schema"].names)
    assert all(w > 0 for w in weights.values())
    assert "ridge weight per attribute" in (tmp_path / "run" / "train.log").read_text()
    with pytest.raises(ConfigError, match="mtl.task_weights"):
        load_config(TrainConfig, None, ["mtl.task_weights=sometimes"])


def test_portrait_input_and_region_pooling_reach_the_checkpoint(tmp_path):
    """data.image_height / crop_fraction and model.pool_region train, are saved with the
    checkpoint, and evaluate/predict rebuild the same input pipeline and pooling from it."""
    from apcnn.inference import evaluate_checkpoint, predict_images
    from apcnn.predictor import load_predictor
    from apcnn.training import train

    out = tmp_path / "run"
    extra = [
        "data.image_height=96",
        "data.crop_fraction=1.0",
        "model.tail=fc",
        "model.pool_region=[0.15, 0.85, 0.25, 0.75]",
        "train.methods=[S-CNN]",
    ]
    train(tiny_config(out, *extra))
    metrics = json.loads((out / "metrics.json").read_text())["methods"]["S-CNN"]
    ckpt = out / "checkpoints" / "S-CNN"
    predictor, meta = load_predictor(ckpt)
    assert meta["preprocessing"]["image_height"] == 96
    assert meta["preprocessing"]["crop_fraction"] == 1.0
    assert meta["model"]["pool_region"] == [0.15, 0.85, 0.25, 0.75]
    assert predictor.cnn.trunk.pool_region == (0.15, 0.85, 0.25, 0.75)
    evaluated = evaluate_checkpoint(ckpt)
    assert evaluated["metrics"]["accuracy"]["total"] == pytest.approx(metrics["total"], abs=1e-6)
    image = tmp_path / "portrait.png"
    from PIL import Image

    Image.fromarray(np.full((150, 100, 3), 128, dtype=np.uint8)).save(image)
    (pred,) = predict_images(ckpt, [str(image)])
    assert len(pred["attributes"]) == meta["model"]["num_attributes"]


def test_linear_probe_starts_scnn_from_the_svms_and_keep_best_chooses(tmp_path, monkeypatch):
    """train.linear_probe: S-CNN's head after the probe is the cross-validated SVM solution on
    the initial features; keep_best ends S-CNN with the probe when its validation accuracy is
    higher than after SGD (faked here), and M-CNN starts from that."""
    import torch

    from apcnn.training import KeepBest, train

    heads = {}
    original = KeepBest.update

    def fake_val(self, method, rnd, val, model):
        if method == "S-CNN":
            heads[rnd] = model.head.L.detach().clone()
            val = {0: 0.9, 1: 0.5}[rnd]
        return original(self, method, rnd, val, model)

    monkeypatch.setattr(KeepBest, "update", fake_val)
    out = tmp_path / "run"
    result = train(
        tiny_config(out, "model.tail=fc", "train.linear_probe=true", "train.methods=[S-CNN]")
    )
    chosen = result["chosen"]["S-CNN"]
    assert chosen["best_round"] == 0 and chosen["last_round"] == 1
    assert set(result["chosen"]["ridge_lam"]) == set(result["schema"].names)
    assert not torch.equal(heads[0], heads[1])  # SGD moved the head
    final, _ = load_checkpoint(out / "checkpoints" / "S-CNN")
    assert torch.equal(final["head.L"], heads[0])
    assert "linear probe" in (out / "train.log").read_text()
