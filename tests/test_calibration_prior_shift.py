"""``train.threshold: prior_shift``: one step from the trained boundary towards each attribute's
label frequency, chosen on validation under an accuracy allowance."""

from __future__ import annotations

import json

import numpy as np
import pytest

from apcnn.calibration import (
    SHIFT_GRID,
    choose_prior_shift,
    decision_scores,
    shifted_thresholds,
)


def _logit(p):
    return np.log(p) - np.log1p(-p)


def test_shifted_thresholds_interpolate_in_logit_space():
    b = np.array([0.5, 0.4, 0.6, 0.55], dtype=np.float32)
    rho = np.array([0.1, 0.3, np.nan, 0.9])
    np.testing.assert_array_equal(shifted_thresholds(b, rho, 0.0), b)  # exactly the boundary
    one = shifted_thresholds(b, rho, 1.0)
    np.testing.assert_allclose(one[[0, 1, 3]], rho[[0, 1, 3]], rtol=1e-6)
    assert one.dtype == np.float32 and one[2] == b[2]  # no prior: the boundary stays
    half = shifted_thresholds(b, rho, 0.5).astype(np.float64)
    want = 0.5 * _logit(b[[0, 1, 3]].astype(np.float64)) + 0.5 * _logit(rho[[0, 1, 3]])
    np.testing.assert_allclose(_logit(half[[0, 1, 3]]), want, rtol=1e-5)
    with pytest.raises(ValueError, match=r"shift must be in \[0, 1\]"):
        shifted_thresholds(b, rho, 1.5)


def test_decision_scores_total_as_attribute_metrics():
    """Accuracy and mA of boolean decisions equal attribute_metrics' totals, with missing labels
    and an attribute that has one class only (its balanced accuracy is that class's recall)."""
    from apcnn.data.schema import AttributeSchema
    from apcnn.metrics import attribute_metrics

    rng = np.random.default_rng(0)
    n, m = 60, 5
    t = np.where(rng.random((n, m)) < 0.3, 1, -1)
    t[:, 4] = -1
    mask = rng.random((n, m)) < 0.8
    mask[:, 3] = False  # no labels at all
    d = rng.random((n, m)) < 0.4
    schema = AttributeSchema.from_dict(
        {"names": [f"a{i}" for i in range(m)], "groups": {"all": list(range(m))}}
    )
    want = attribute_metrics(rng.normal(size=(n, m)), t, mask, schema, decisions=d)
    acc, ma = decision_scores(d, t, mask)
    assert acc == pytest.approx(want["accuracy"]["total"], abs=1e-12)
    assert ma == pytest.approx(want["balanced_accuracy"]["total"], abs=1e-12)


def _reference(p, t, mask, boundary, prior, loss):
    """Brute force over the grid: the best mA among shifts within the accuracy allowance."""
    base = decision_scores(p >= boundary[None, :], t, mask)[0]
    best_w, best_ma = 0.0, -1.0
    for w in SHIFT_GRID:
        acc, ma = decision_scores(p >= shifted_thresholds(boundary, prior, w)[None, :], t, mask)
        if acc >= base - loss - 1e-12 and ma > best_ma:
            best_w, best_ma = w, ma
    return best_w


@pytest.mark.parametrize("loss", [0.0, 0.003, 0.02, 1.0])
def test_choose_prior_shift_keeps_the_accuracy_allowance(loss):
    """Rare attributes whose calibrated probabilities rarely reach 1/2: shifting towards the
    prior raises validation mA; the chosen w is the brute-force one, its accuracy is within the
    allowance, and with no allowance it never costs accuracy."""
    rng = np.random.default_rng(1)
    n, m = 400, 6
    prior = np.array([0.05, 0.1, 0.2, 0.3, 0.1, 0.5])
    y = rng.random((n, m)) < prior
    logit = _logit(prior) + np.where(y, 1.5, -1.0) + rng.normal(0, 1.0, (n, m))
    p = (1 / (1 + np.exp(-logit))).astype(np.float32)
    t = np.where(y, 1, -1)
    mask = rng.random((n, m)) < 0.9
    boundary = np.full(m, 0.5, dtype=np.float32)
    thr, w = choose_prior_shift(p, t, mask, boundary, prior, loss)
    assert w == _reference(p, t, mask, boundary, prior, loss)
    np.testing.assert_array_equal(thr, shifted_thresholds(boundary, prior, w))
    base_acc, base_ma = decision_scores(p >= boundary, t, mask)
    acc, ma = decision_scores(p >= thr, t, mask)
    assert acc >= base_acc - loss - 1e-12 and ma >= base_ma
    if loss == 1.0:
        assert w > 0.5 and ma > base_ma + 0.05  # free to trade accuracy: far towards the prior
    with pytest.raises(ValueError, match="max_accuracy_loss"):
        choose_prior_shift(p, t, mask, boundary, prior, -0.1)


def test_prior_shift_is_not_a_per_attribute_rule():
    from apcnn.calibration import choose_thresholds

    p = np.full((4, 1), 0.5)
    with pytest.raises(ValueError, match="choose_prior_shift"):
        choose_thresholds(p, np.ones((4, 1)), np.ones((4, 1), bool), "prior_shift", [0.5])


def test_threshold_max_accuracy_loss_is_checked():
    from apcnn.config import ConfigError, TrainConfig, load_config

    cfg = load_config(TrainConfig, None, ["train.threshold=prior_shift"])
    assert cfg.train.threshold_max_accuracy_loss == 0.003
    with pytest.raises(ConfigError, match=r"threshold_max_accuracy_loss' must be in \[0, 1\]"):
        load_config(TrainConfig, None, ["train.threshold_max_accuracy_loss=3"])


@pytest.mark.slow
def test_a_prior_shift_run_records_the_step_and_decides_with_it(tmp_path, session_cache):
    """The tiny run with train.threshold=prior_shift: the chosen w is logged and recorded next to
    the thresholds, which are the shifted boundary (of the checkpoint's own calibration and the
    validation label frequencies), and evaluate reproduces the saved test accuracy."""
    from _tiny import tiny_config
    from apcnn.calibration import boundary_thresholds
    from apcnn.checkpoint import load_checkpoint
    from apcnn.inference import evaluate_checkpoint
    from apcnn.training import train

    out = tmp_path / "run"
    extra = ("train.threshold=prior_shift", "train.methods=[S-CNN]", "train.epochs_single=1")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("APCNN_CACHE", str(session_cache))
        train(tiny_config(out, *extra, "train.threshold_max_accuracy_loss=0.05"))
    block = json.loads((out / "metrics.json").read_text())["methods"]["S-CNN"]
    w = block["thresholds"]["shift"]
    assert block["thresholds"]["rule"] == "prior_shift" and w in SHIFT_GRID
    assert (
        f"S-CNN prior shift w={w:.2f} (validation accuracy loss <= 0.05)"
        in (out / "train.log").read_text()
    )
    tensors, meta = load_checkpoint(out / "checkpoints" / "S-CNN")
    boundary = boundary_thresholds(tensors["calibration"].double().numpy()).astype(np.float32)
    prior = np.array([np.nan if v is None else v for v in meta["calibration_prior"]])
    want = shifted_thresholds(boundary, prior, w)
    np.testing.assert_allclose(tensors["threshold"].numpy(), want, rtol=1e-6)
    evaluated = evaluate_checkpoint(out / "checkpoints" / "S-CNN")
    assert evaluated["metrics"]["accuracy"]["total"] == pytest.approx(block["total"], abs=1e-6)
    assert "(w = " in (out / "report.md").read_text()
    # evaluate --threshold: the same rule chosen again from the checkpoint gives the same
    # thresholds and figures; rule 0 goes back to the boundary; the checkpoint is unchanged
    again = evaluate_checkpoint(
        out / "checkpoints" / "S-CNN", threshold="prior_shift", max_accuracy_loss=0.05
    )
    assert again["metrics"]["thresholds"]["shift"] == w
    np.testing.assert_allclose(again["metrics"]["thresholds"]["per_attribute"], want, rtol=1e-6)
    assert again["metrics"]["accuracy"]["total"] == pytest.approx(block["total"], abs=1e-6)
    assert f"(--threshold prior_shift, w = {w:.2f})" in again["table"]
    plain = evaluate_checkpoint(out / "checkpoints" / "S-CNN", threshold="0")
    np.testing.assert_array_equal(plain["metrics"]["thresholds"]["per_attribute"], boundary)
    assert "the checkpoint keeps train.threshold=prior_shift" in plain["table"]
    assert np.array_equal(
        load_checkpoint(out / "checkpoints" / "S-CNN")[0]["threshold"], tensors["threshold"]
    )
    with pytest.raises(ValueError, match="score another split"):
        evaluate_checkpoint(out / "checkpoints" / "S-CNN", split="val", threshold="balanced")


def test_evaluate_offers_every_threshold_rule():
    from apcnn.calibration import THRESHOLD_RULES
    from apcnn.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["evaluate", "--checkpoint", "x", "--threshold", "prior_shift"])
    assert args.threshold == "prior_shift" and args.max_accuracy_loss == 0.003
    sub = next(a for a in parser._actions if a.dest == "command").choices["evaluate"]
    (action,) = [a for a in sub._actions if a.dest == "threshold"]
    assert tuple(action.choices) == THRESHOLD_RULES
