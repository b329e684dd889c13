"""SGD stability: the divergence warning and ``train.sgd_task_weights``."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch


def _ctx(task_weights, sgd_task_weights=True):
    return SimpleNamespace(
        cfg=SimpleNamespace(train=SimpleNamespace(lr=0.01, sgd_task_weights=sgd_task_weights)),
        task_weights=task_weights,
        log=logging.getLogger("apcnn.test_sgd_stability"),
    )


def test_a_rising_stage_loss_warns_and_names_the_task_weights(caplog):
    """Clothing at 10 % of the labels: 0.32 -> 0.99 -> 4.07 (c_m from 0.29 to 87) warns twice;
    a falling loss, or a rise below DIVERGENCE_RATIO, does not."""
    from apcnn.training.steps import SGD, _warn_if_diverging

    method = SimpleNamespace(name="S-CNN")
    ctx = _ctx(torch.tensor([0.29, 1.0, 86.8]))
    sgd = SGD(None, None)
    with caplog.at_level(logging.WARNING, logger="apcnn.test_sgd_stability"):
        for epoch, loss in enumerate((0.32, 0.99, 4.07)):
            _warn_if_diverging(ctx, sgd, method, 0, epoch, loss)
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2 and sgd.losses == [0.32, 0.99, 4.07]
    assert "rose from 0.32 to 0.99 (x3.1)" in warnings[0]
    assert "span 0.29 to 87: set train.sgd_task_weights=false" in warnings[0]
    assert "lower train.lr (now 0.01)" in warnings[1]
    caplog.clear()
    quiet = SGD(None, None)
    with caplog.at_level(logging.WARNING, logger="apcnn.test_sgd_stability"):
        for epoch, loss in enumerate((0.078, 0.072, 0.069, 0.13)):  # x1.9: not yet diverging
            _warn_if_diverging(_ctx(None), quiet, method, 0, epoch, loss)
    assert caplog.records == []
    # with the task weights already off the advice is only the learning rate
    with caplog.at_level(logging.WARNING, logger="apcnn.test_sgd_stability"):
        ctx_off = _ctx(torch.tensor([0.5, 2.0]), sgd_task_weights=False)
        sgd_off = SGD(None, None)
        for epoch, loss in enumerate((0.1, 0.5)):
            _warn_if_diverging(ctx_off, sgd_off, method, 1, epoch, loss)
    (only,) = [r.getMessage() for r in caplog.records]
    assert "S-CNN round 1 epoch 1" in only and "sgd_task_weights" not in only


@pytest.mark.slow
def test_sgd_task_weights_false_drops_the_loss_weights_from_sgd_only(
    tmp_path, monkeypatch, session_cache
):
    """The tiny run with per-attribute loss weights: S-CNN's SGD-trained heads differ between
    train.sgd_task_weights true and false, and its probe (the weights before SGD) does not
    depend on the key; with uniform weights the key changes nothing."""
    from _tiny import tiny_config
    from apcnn.checkpoint import load_checkpoint
    from apcnn.training import train

    monkeypatch.setenv("APCNN_CACHE", str(session_cache))

    def scnn(*extra):
        out = tmp_path / "-".join(e.replace("/", "_") for e in extra)
        base = ("train.methods=[S-CNN]", "train.epochs_single=1")
        train(tiny_config(out, *base, *extra))
        return load_checkpoint(out / "checkpoints" / "S-CNN")[0]

    m = 13  # the synthetic dataset's attributes
    skewed = "mtl.task_weights=[" + ", ".join(["8.0"] + ["0.5"] * (m - 1)) + "]"
    on, off = scnn(skewed), scnn(skewed, "train.sgd_task_weights=false")
    assert (on["head.L"] - off["head.L"]).abs().max() > 1e-4
    uniform = "mtl.task_weights=[" + ", ".join(["1.0"] * m) + "]"
    a, b = scnn(uniform), scnn(uniform, "train.sgd_task_weights=false")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_keep_best_never_returns_to_a_diverged_round(tmp_path):
    """Round 1's SGD stage diverged: its better validation figure does not make it the best,
    restore goes back to round 0, and the mark survives a state_dict round trip (--resume)."""
    from torch import nn

    from apcnn.training import KeepBest

    keep, model = KeepBest(tmp_path), nn.Linear(2, 1)
    keep.update("S-CNN", 0, 0.80, model)
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    keep.mark_diverged("S-CNN", 1)
    resumed = KeepBest(tmp_path)
    resumed.load_state_dict(keep.state_dict())
    for k in (keep, resumed):
        assert k.update("S-CNN", 1, 0.95, model) is False
        assert k.records["S-CNN"]["best_round"] == 0
        assert k.records["S-CNN"]["diverged_rounds"] == [1]
    assert keep.restore("S-CNN", model) and torch.equal(model.weight, start)
    # a healthy later round with the better figure is still kept
    assert keep.update("S-CNN", 2, 0.95, model) is True


@pytest.mark.slow
def test_a_diverged_scnn_stage_ends_with_the_probe(tmp_path, monkeypatch, session_cache):
    """Every epoch after the first counts as diverging (ratio 0): S-CNN's SGD round is marked,
    its (faked) better validation figure is ignored, and the checkpoint holds the probe."""
    from _tiny import tiny_config
    from apcnn.checkpoint import load_checkpoint
    from apcnn.training import KeepBest, steps, train

    monkeypatch.setenv("APCNN_CACHE", str(session_cache))
    monkeypatch.setattr(steps, "DIVERGENCE_RATIO", 0.0)
    heads = {}
    original = KeepBest.update

    def fake_val(self, method, rnd, val, model):
        heads[rnd] = model.head.L.detach().clone()
        return original(self, method, rnd, {0: 0.5, 1: 0.9}[rnd], model)

    monkeypatch.setattr(KeepBest, "update", fake_val)
    out = tmp_path / "run"
    extra = ("model.tail=fc", "train.linear_probe=true", "train.methods=[S-CNN]")
    result = train(tiny_config(out, *extra, "train.epochs_single=2"))
    chosen = result["chosen"]["S-CNN"]
    assert chosen["best_round"] == 0 and chosen["diverged_rounds"] == [1]
    final, _ = load_checkpoint(out / "checkpoints" / "S-CNN")
    assert torch.equal(final["head.L"], heads[0]) and not torch.equal(heads[0], heads[1])
    assert "not kept" in (out / "train.log").read_text()
