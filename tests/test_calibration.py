"""Platt scaling: smoothed targets, the prior a fitted calibration carries, likelihood ratios."""

from __future__ import annotations

import numpy as np
import pytest

from apcnn.calibration import apply_platt, calibration_prior, fit_platt, platt_targets


def _logit(p):
    return np.log(p) - np.log1p(-p)


def test_platt_targets_are_smoothed_frequencies():
    # N+ = 3, N- = 1: positives (3 + 1) / (3 + 2), negatives 1 / (1 + 2)
    np.testing.assert_allclose(platt_targets([True, True, True, False]), [0.8, 0.8, 0.8, 1 / 3])


def test_calibration_prior_is_mean_target_and_mean_fitted_probability():
    rng = np.random.default_rng(0)
    n = 200
    y = np.stack([rng.random(n) < 0.2, rng.random(n) < 0.6, np.zeros(n, bool)], axis=1)
    y[0, 2] = True  # attribute 2: a single positive, not fitted
    targets = np.where(y, 1.0, -1.0)
    scores = 1.5 * targets + rng.normal(0, 1.5, size=(n, 3))
    mask = rng.random((n, 3)) > 0.1
    rho = calibration_prior(targets, mask)
    # by hand for attribute 0
    pos = int((y[:, 0] & mask[:, 0]).sum())
    neg = int((~y[:, 0] & mask[:, 0]).sum())
    by_hand = (pos * (pos + 1) / (pos + 2) + neg / (neg + 2)) / (pos + neg)
    assert rho[0] == pytest.approx(by_hand, rel=1e-12)
    assert np.isnan(rho[2])
    # at the fitted offset the Platt probabilities average to rho on the calibration split
    params = fit_platt(scores, targets, mask)
    probs = apply_platt(scores, params)
    for m in (0, 1):
        assert probs[mask[:, m], m].mean() == pytest.approx(rho[m], abs=1e-4)
    np.testing.assert_array_equal(params[:, 2], [1.0, 0.0])


def test_dividing_by_the_calibration_prior_gives_the_likelihood_ratio():
    """Scores s ~ N(+1, 1) for positives, N(-1, 1) for negatives: log-likelihood ratio 2 s.

    Calibrated on a split with 1 positive in 5, logit p − logit rho recovers 2 s; a prior that
    differs from the split's frequency (0.5 here) leaves a bias of logit 0.2 − logit 0.5 = −1.39.
    """
    rng = np.random.default_rng(1)
    n_pos, n_neg = 1000, 4000
    s = np.concatenate([rng.normal(1, 1, n_pos), rng.normal(-1, 1, n_neg)])[:, None]
    targets = np.concatenate([np.ones(n_pos), -np.ones(n_neg)])[:, None]
    mask = np.ones_like(targets, dtype=bool)
    params = fit_platt(s, targets, mask)
    rho = calibration_prior(targets, mask)[0]
    grid = np.linspace(-2, 2, 9)[:, None]
    llr = _logit(apply_platt(grid, params))[:, 0] - _logit(rho)
    np.testing.assert_allclose(llr, 2 * grid[:, 0], rtol=0.1, atol=0.1)
    off = _logit(apply_platt(grid, params))[:, 0] - _logit(0.5)
    assert np.abs(off - 2 * grid[:, 0]).min() > 1.0


# ------------------------------------------------------------------- the one decision rule
def test_decision_is_calibrated_probability_at_threshold():
    """A positive score with a calibrated p below the threshold is a "no" (the old rule,
    score > 0, said "yes" next to p = 0.475); p exactly at the threshold is a "yes"."""
    from apcnn.data.schema import AttributeSchema
    from apcnn.predictor import decisions_from_scores, describe_thresholds, resolve_thresholds

    schema = AttributeSchema(names=("a", "b", "c"), groups=(("g", (0, 1, 2)),))
    scores = np.array([[0.4, -0.2, 1.0]])
    probs = np.array([[0.475, 0.525, 0.7]], dtype=np.float32)
    (item,) = decisions_from_scores(scores, probs, schema)
    assert [v["decision"] for v in item["attributes"].values()] == [False, True, True]
    assert {v["threshold"] for v in item["attributes"].values()} == {0.5}
    t = np.array([0.4, 0.6, 0.7], dtype=np.float32)
    (item,) = decisions_from_scores(scores, probs, schema, t)
    assert [v["decision"] for v in item["attributes"].values()] == [True, False, True]
    assert resolve_thresholds(t, 3, 0.3)[1] == "--threshold"
    assert resolve_thresholds(None, 3)[0].tolist() == [0.5] * 3
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        resolve_thresholds(None, 3, 1.5)
    assert describe_thresholds(np.full(3, 0.5), "default") == "decision: p >= 0.5 (default)"


def test_checkpoint_without_threshold_loads_with_half():
    from apcnn.data.synthetic import synthetic_schema
    from apcnn.models.backbone import DEFAULT_BACKBONE
    from apcnn.predictor import build_predictor

    spec = {
        "backbone": DEFAULT_BACKBONE,
        "weights": "none",
        "tail": "head",
        "freeze_trunk": True,
        "num_attributes": synthetic_schema().num_attributes,
        "rank": 3,
    }
    predictor = build_predictor(spec, pretrained=False)
    old = {k: v for k, v in predictor.state_dict().items() if k != "threshold"}
    fresh = build_predictor(spec, pretrained=False)
    fresh.threshold.fill_(0.75)
    fresh.load_state_dict(old)  # strict: an older checkpoint / training state still loads
    assert fresh.threshold.tolist() == [0.75] * spec["num_attributes"]  # kept, not clobbered
    assert build_predictor(spec, pretrained=False).threshold.tolist() == [0.5] * 13


def test_predictions_agree_with_probabilities_and_with_onnx(tmp_path, capsys):
    """predict (checkpoint), predict --onnx and the ONNX graph's own decisions output give the
    same yes/no, and each is p >= the threshold saved in the checkpoint (or --threshold)."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    import json

    import torch

    from apcnn.checkpoint import load_checkpoint, save_checkpoint
    from apcnn.cli import main
    from apcnn.data import create_dataset
    from apcnn.data.synthetic import synthetic_schema
    from apcnn.export import export_onnx, onnx_session, predict_onnx, run_onnx_decisions
    from apcnn.inference import predict_images
    from test_export import eval_transform, make_checkpoint

    schema = synthetic_schema()
    ckpt = make_checkpoint(tmp_path / "ckpt", schema, image_size=64, seed=3)
    tensors, meta = load_checkpoint(ckpt)
    thresholds = torch.linspace(0.3, 0.7, schema.num_attributes)
    save_checkpoint(ckpt, dict(tensors, threshold=thresholds), meta)
    ds = create_dataset("synthetic", split="test", num_images=64)
    paths = []
    for i in range(4):
        paths.append(str(tmp_path / f"{i}.png"))
        ds.load_image(i).save(paths[-1])

    via_torch = predict_images(ckpt, paths)
    for item in via_torch:
        for j, v in enumerate(item["attributes"].values()):
            assert v["threshold"] == pytest.approx(float(thresholds[j]))
            assert v["decision"] == (np.float32(v["probability"]) >= np.float32(v["threshold"]))

    onnx_path = export_onnx(ckpt, tmp_path / "m.onnx")
    sidecar = json.loads((tmp_path / "m.onnx.json").read_text())
    np.testing.assert_allclose(sidecar["thresholds"], thresholds.numpy(), rtol=1e-6)
    batch = torch.stack([eval_transform(meta)(ds.load_image(i).convert("RGB")) for i in range(4)])
    graph = run_onnx_decisions(onnx_session(onnx_path), batch.numpy())
    via_onnx = predict_onnx(onnx_path, paths)
    for k, (a, b) in enumerate(zip(via_onnx, via_torch, strict=True)):
        da = [v["decision"] for v in a["attributes"].values()]
        assert da == [v["decision"] for v in b["attributes"].values()]
        assert da == graph[k].tolist()

    capsys.readouterr()
    assert main(["predict", "--onnx", str(onnx_path), "--threshold", "0.25", *paths[:1]]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "decision: p >= 0.25 (--threshold)"
    for line in out.splitlines()[2:]:
        p = float(line.split("p=")[1].split()[0])
        assert line.split()[1] == ("yes" if p >= 0.25 else "no")
    assert main(["predict", "--checkpoint", str(ckpt), *paths[:1]]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "decision: p >= each attribute's threshold (saved in the model)"
    assert main(["predict", "--checkpoint", str(ckpt), "--threshold", "2", *paths[:1]]) == 2


# ------------------------------------------------------------------- thresholds on validation
def _accuracy(p, y, t):
    return float(np.mean((p >= t) == y))


def _balanced(p, y, t):
    d = p >= t
    return 0.5 * (float(np.mean(d[y])) + float(np.mean(~d[~y])))


def _imbalanced(seed=0, n=300, dtype=np.float32):
    """One attribute, 10 % positives, probabilities that overlap: positives U(0.2, 0.6),
    negatives U(0, 0.4), so the boundary 0.5 misses most positives."""
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.1
    p = np.where(y, rng.uniform(0.2, 0.6, n), rng.uniform(0.0, 0.4, n)).astype(dtype)
    return p[:, None], np.where(y, 1.0, -1.0)[:, None], np.ones((n, 1), bool), y


def test_balanced_rule_raises_balanced_accuracy_on_an_imbalanced_attribute():
    from apcnn.calibration import choose_thresholds

    p, t, mask, y = _imbalanced()
    boundary = np.array([0.5])
    (chosen,) = choose_thresholds(p, t, mask, "balanced", boundary)
    before, after = _balanced(p[:, 0], y, 0.5), _balanced(p[:, 0], y, chosen)
    assert after > before + 0.2  # 0.5 catches few positives; ~0.3 separates most
    assert 0.2 < chosen < 0.45
    # it is the best over every possible cut (brute force over the data points and beyond)
    cuts = np.concatenate([np.unique(p), [1.1]])
    assert after >= max(_balanced(p[:, 0], y, c) for c in cuts) - 1e-12
    # the stored precision decides exactly as it was scored
    assert chosen.dtype == np.float32


def test_accuracy_rule_never_lowers_accuracy_below_the_boundary():
    from apcnn.calibration import choose_thresholds

    rng = np.random.default_rng(1)
    for seed in range(20):
        p, t, mask, y = _imbalanced(seed, n=int(rng.integers(5, 80)), dtype=np.float64)
        if y.all() or not y.any():
            continue
        boundary = rng.uniform(0.05, 0.95, 1)
        (chosen,) = choose_thresholds(p, t, mask, "accuracy", boundary)
        best = max(_accuracy(p[:, 0], y, c) for c in np.concatenate([np.unique(p), [1.1]]))
        assert _accuracy(p[:, 0], y, chosen) == best >= _accuracy(p[:, 0], y, boundary[0])


def test_threshold_fallbacks_and_ties_keep_the_boundary():
    from apcnn.calibration import choose_thresholds

    p = np.array([[0.1, 0.2, 0.3], [0.4, 0.6, 0.5], [0.8, 0.9, 0.7], [0.2, 0.7, 0.9]])
    t = np.array([[-1, 1, 1], [-1, -1, 1], [1, 1, 1], [-1, 1, 1]], dtype=float)
    mask = np.ones_like(t, dtype=bool)
    boundary = np.array([0.5, 0.55, 0.45])
    # column 0: 0.5 already separates perfectly, as does every cut in (0.4, 0.8]: kept (ties go
    # to the boundary); column 2: one class only: kept
    out = choose_thresholds(p, t, mask, "balanced", boundary)
    assert out[0] == 0.5 and out[2] == 0.45
    # column 1: positives 0.2, 0.7, 0.9, negative 0.6; the boundary 0.55 gets 2 of 4 right.
    # Balanced: a cut in (0.6, 0.7] (5/6). Accuracy: that cut and "all positive" (0.1) tie at
    # 3/4; the tie goes to the one nearer the boundary, 0.65
    assert out[1] == pytest.approx(0.65)
    assert choose_thresholds(p, t, mask, "accuracy", boundary)[1] == pytest.approx(0.65)
    np.testing.assert_array_equal(choose_thresholds(p, t, mask, "0", boundary), boundary)
    none = np.zeros_like(mask)
    np.testing.assert_array_equal(choose_thresholds(p, t, none, "accuracy", boundary), boundary)
    with pytest.raises(ValueError, match="threshold rule"):
        choose_thresholds(p, t, mask, "f1", boundary)
    with pytest.raises(ValueError, match="boundary"):
        choose_thresholds(p, t, mask, "balanced", boundary[:2])
