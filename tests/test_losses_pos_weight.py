"""Class-imbalance weights (``train.pos_weight: ratio``): DeepMAR's positive-ratio weights, the
weighted SGD loss, and a training run that uses them."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from apcnn import losses


def test_positive_ratio_weights_by_hand():
    # attribute 0: 1 positive of 4 labelled (p = 1/4); attribute 1: 2 of 2 (p = 1), one entry
    # unlabelled (its NaN never read); attribute 2: no label at all (weights 1)
    nan = float("nan")
    Y = torch.tensor(
        [[1.0, 1.0, nan], [-1.0, 1.0, nan], [-1.0, nan, nan], [-1.0, -1.0, 1.0]],
        dtype=torch.float64,
    )
    mask = torch.tensor(
        [[True, True, False], [True, True, False], [True, False, False], [True, False, False]]
    )
    pos_w, neg_w = losses.positive_ratio_weights(Y, mask)
    assert pos_w.shape == neg_w.shape == (3,)
    np.testing.assert_allclose(pos_w.numpy(), [math.exp(0.75), math.exp(0.0), 1.0], rtol=1e-15)
    np.testing.assert_allclose(neg_w.numpy(), [math.exp(0.25), math.exp(1.0), 1.0], rtol=1e-15)
    w = losses.entry_weights(Y, mask, pos_w, neg_w)
    e = math.exp
    want = [
        [e(0.75), 1.0, 0.0],
        [e(0.25), 1.0, 0.0],
        [e(0.25), 0.0, 0.0],
        [e(0.25), 0.0, 0.0],
    ]
    np.testing.assert_allclose(w.numpy(), want, rtol=1e-15)
    # no mask: everything labelled; a float32 result on request
    w32 = losses.entry_weights(Y[:, :1], None, pos_w[:1], neg_w[:1], torch.float32)
    assert w32.dtype == torch.float32 and w32.shape == (4, 1)
    p, n = losses.positive_ratio_weights(Y[:, :1])
    assert float(p[0]) == pytest.approx(math.exp(0.75)) and float(n[0]) == pytest.approx(e(0.25))


def test_rare_positives_weigh_more_than_common_negatives():
    rng = np.random.default_rng(0)
    Y = torch.as_tensor(np.where(rng.random((200, 2)) < [0.1, 0.5], 1.0, -1.0))
    pos_w, neg_w = losses.positive_ratio_weights(Y, None)
    assert pos_w[0] > 2 * neg_w[0]  # rare positives: e^(1-p) against e^p
    assert float(pos_w[1]) == pytest.approx(float(neg_w[1]), rel=0.2)  # balanced: about equal


def test_weighted_sgd_loss_is_a_weighted_mean():
    scores = torch.tensor([[0.0, 2.0], [0.5, -1.0]], dtype=torch.float64)
    y = torch.tensor([[1.0, -1.0], [1.0, -1.0]], dtype=torch.float64)
    mask = torch.tensor([[True, True], [True, False]])
    w = torch.tensor([[2.0, 0.5], [4.0, 99.0]], dtype=torch.float64)  # 99: unlabelled, ignored
    # entries 0.5*1, 0.5*9, 0.5*0.25 with weights 2, 0.5, 4; divided by their weight sum 6.5
    want = (2 * 0.5 + 0.5 * 4.5 + 4 * 0.125) / 6.5
    got = losses.masked_squared_hinge(scores, y, mask, sample_weights=w)
    assert float(got) == pytest.approx(want, rel=1e-14)
    # a given global count replaces the weight sum; task weights multiply on top
    c = torch.tensor([1.0, 3.0], dtype=torch.float64)
    got = losses.masked_squared_hinge(scores, y, mask, torch.tensor(10.0), c, w)
    assert float(got) == pytest.approx((2 * 0.5 + 3 * 0.5 * 4.5 + 4 * 0.125) / 10, rel=1e-14)
    # all-one weights: the unweighted mean, bit for bit
    ones = losses.masked_squared_hinge(scores, y, mask, sample_weights=torch.ones_like(w))
    assert float(ones) == float(losses.masked_squared_hinge(scores, y, mask))
    # every weight zero: 0, not NaN
    zero = losses.masked_squared_hinge(scores, y, mask, sample_weights=torch.zeros_like(w))
    assert float(zero) == 0.0


def test_estimator_pos_weight_ratio_is_checked_and_changes_the_fit():
    from apcnn.estimator import MultiTaskAttributeClassifier

    rng = np.random.default_rng(1)
    X = rng.normal(size=(120, 5))
    Y = np.where(X[:, :2] + 0.8 * rng.normal(size=(120, 2)) > [1.2, 0.0], 1.0, -1.0)
    kw = dict(K=2, mu=0.1, gamma=0.0, lam=5.0, tol=1e-3)
    plain = MultiTaskAttributeClassifier(**kw).fit(X, Y)
    ratio = MultiTaskAttributeClassifier(pos_weight="ratio", **kw).fit(X, Y)
    assert not np.allclose(plain.intercept_, ratio.intercept_)
    # the rare attribute 0 (about 12 % positives) predicts more positives with the weights
    assert ratio.predict(X)[:, 0].sum() > plain.predict(X)[:, 0].sum()
    with pytest.raises(ValueError, match="pos_weight must be 'none' or 'ratio'"):
        MultiTaskAttributeClassifier(pos_weight="balanced", **kw).fit(X, Y)


@pytest.mark.slow
def test_training_with_pos_weight_ratio_changes_the_learned_weights(
    tmp_path, monkeypatch, session_cache
):
    """train.pos_weight=ratio on the tiny synthetic run (imbalanced: one colour of four):
    S-CNN's SGD heads and M-CNN's solved head differ from the unweighted run's, everything else
    equal; the training split's weights are those of losses.positive_ratio_weights."""
    from _tiny import tiny_config
    from apcnn.checkpoint import load_checkpoint
    from apcnn.training import train

    monkeypatch.setenv("APCNN_CACHE", str(session_cache))
    extra = ("train.methods=[S-CNN, M-CNN]", "train.epochs_single=1", "mtl.max_outer=2")
    states = {}
    for pw in ("none", "ratio"):
        out = tmp_path / pw
        train(tiny_config(out, *extra, f"train.pos_weight={pw}"))
        states[pw] = {m: load_checkpoint(out / "checkpoints" / m)[0] for m in ("S-CNN", "M-CNN")}
    for method in ("S-CNN", "M-CNN"):
        a, b = states["none"][method], states["ratio"][method]
        assert (a["head.L"] - b["head.L"]).abs().max() > 1e-4, method
        assert (a["head.bias"] - b["head.bias"]).abs().max() > 1e-4, method


def test_training_class_weights_come_from_the_whole_training_split():
    """steps.class_weights: the global training split's labels (not a rank's shard), 0 where
    unlabelled, in the run's precision; None for pos_weight=none."""
    from types import SimpleNamespace

    from apcnn.training.inputs import SplitData
    from apcnn.training.steps import class_weights

    targets = torch.tensor([[1.0, -1.0], [-1.0, 0.0], [-1.0, 1.0], [-1.0, -1.0]])
    mask = targets != 0
    split = SplitData("train", None, targets, mask, np.arange(4))
    ctx = SimpleNamespace(
        cfg=SimpleNamespace(train=SimpleNamespace(pos_weight="ratio")),
        inputs=SimpleNamespace(splits={"train": split}),
        dtype=torch.float64,
    )
    w = class_weights(ctx)
    e = math.exp
    want = [[e(0.75), e(1 / 3)], [e(0.25), 0.0], [e(0.25), e(2 / 3)], [e(0.25), e(1 / 3)]]
    assert w.dtype == torch.float64
    np.testing.assert_allclose(w.numpy(), want, rtol=1e-15)
    ctx.cfg.train.pos_weight = "none"
    assert class_weights(ctx) is None
