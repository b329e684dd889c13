"""Zero-shot classification (DAP / IAP): hand-computed unit cases and a trained tiny model on the
synthetic dataset's unseen classes."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from _tiny import TINY as _BASE  # noqa: E402
from apcnn.zeroshot import (
    attribute_priors,
    binarize_class_attributes,
    dap_scores,
    iap_attribute_probabilities,
    iap_scores,
    probability_priors,
    zero_shot_evaluate,
)

# S-CNN only, at the synthetic dataset's native 96 px: 224 seen-class training images, 80 unseen.
TINY = [
    *_BASE,
    "data.image_size=96",
    "data.options={num_images: 320, image_size: 96}",
    "train.epochs_single=10",
    "train.methods=[S-CNN]",
]


# ------------------------------------------------------------------------------- unit cases
def test_dap_matches_hand_computation():
    """Two attributes, two classes a^0 = (1, 0), a^1 = (0, 1), p(a | x) = (0.8, 0.3).

    Uniform prior 0.5: s0 = 0.8/0.5 * 0.7/0.5 = 2.24, s1 = 0.2/0.5 * 0.3/0.5 = 0.24,
    p(0 | x) = 2.24 / 2.48. Prior (0.8, 0.5): s0 = 0.8/0.8 * 0.7/0.5 = 1.4,
    s1 = 0.2/0.2 * 0.3/0.5 = 0.6, p(0 | x) = 0.7 (the prior divides out frequent attributes).
    """
    A = np.array([[1.0, 0.0], [0.0, 1.0]])
    p = np.array([[0.8, 0.3]])
    out = dap_scores(p, A, np.array([0.5, 0.5]))
    assert out.shape == (1, 2)
    np.testing.assert_allclose(np.exp(out), [[2.24 / 2.48, 0.24 / 2.48]], rtol=1e-12)
    out = dap_scores(p, A, np.array([0.8, 0.5]))
    np.testing.assert_allclose(np.exp(out), [[0.7, 0.3]], rtol=1e-12)
    np.testing.assert_allclose(np.exp(out).sum(axis=1), 1.0)


def test_dap_binarizes_continuous_matrices_and_clips():
    A_cont = np.array([[0.9, 0.2], [0.3, 0.6]])
    np.testing.assert_array_equal(binarize_class_attributes(A_cont), [[1, 0], [0, 1]])
    p = np.array([[0.8, 0.3], [0.0, 1.0]])  # exact 0/1 probabilities are clipped, stay finite
    a = dap_scores(p, A_cont, [0.5, 0.5])
    b = dap_scores(p, [[1, 0], [0, 1]], [0.5, 0.5])
    np.testing.assert_allclose(a, b)
    assert np.isfinite(a).all() and a[1].argmax() == 1


def test_attribute_priors_are_class_frequencies_clipped():
    A = np.array([[1, 0, 1], [1, 0, 0], [1, 0, 1], [1, 0, 0]], dtype=float)
    np.testing.assert_allclose(attribute_priors(A, eps=0.05), [0.95, 0.05, 0.5])
    with pytest.raises(ValueError, match="eps"):
        attribute_priors(A, eps=0.0)


def test_dap_of_calibrated_probabilities_depends_on_likelihood_ratios_only():
    """Platt posteriors p = σ(llr + logit ρ) from a calibration split with prior ρ, divided by ρ,
    give the same DAP posterior as posteriors under any other prior divided by that prior."""
    rng = np.random.default_rng(0)
    A = np.array([[1, 0, 1], [0, 1, 1], [1, 1, 0]], dtype=float)
    llr = rng.normal(0, 2, size=(5, 3))  # log p(x | a = 1) / p(x | a = 0)
    rho, pi = np.array([0.15, 0.3, 0.6]), np.array([0.5, 0.5, 0.5])

    def posterior(prior):
        return 1 / (1 + np.exp(-(llr + np.log(prior / (1 - prior)))))

    np.testing.assert_allclose(dap_scores(posterior(rho), A, rho), dap_scores(posterior(pi), A, pi))
    # dividing by the wrong prior adds x-independent per-class terms: the posteriors change
    assert not np.allclose(dap_scores(posterior(rho), A, pi), dap_scores(posterior(pi), A, pi))


def test_probability_priors_prefer_the_calibration_prior():
    pi = np.array([0.25, 0.5, 0.25])
    np.testing.assert_array_equal(probability_priors(pi), pi)
    np.testing.assert_array_equal(probability_priors(pi, [0.2, np.nan, 0.4]), [0.2, 0.5, 0.4])
    with pytest.raises(ValueError, match="attributes"):
        probability_priors(pi, [0.2, 0.3])
    with pytest.raises(ValueError, match="inside"):
        probability_priors(pi, [0.0, 0.3, 0.4])


def test_checkpoint_calibration_prior_reads_stored_values_and_skips_identity():
    import torch

    from apcnn.zeroshot import _checkpoint_calibration_prior

    cal = torch.tensor([[2.0, 1.0, 3.0], [0.5, 0.0, 0.0]])  # attribute 1: identity, not fitted
    rho = _checkpoint_calibration_prior({"calibration_prior": [0.2, 0.3, None]}, None, None, cal)
    np.testing.assert_array_equal(rho, [0.2, np.nan, np.nan])


def test_dap_rejects_bad_shapes_and_priors():
    with pytest.raises(ValueError, match="attribute counts"):
        dap_scores(np.full((1, 3), 0.5), np.eye(2), [0.5, 0.5])
    with pytest.raises(ValueError, match="priors"):
        dap_scores(np.full((1, 2), 0.5), np.eye(2), [0.0, 0.5])


def test_iap_through_seen_class_posteriors():
    seen = np.array([[1, 0, 0], [0, 1, 1]], dtype=float)  # K = 2 seen classes
    post = np.array([[0.25, 0.75]])
    np.testing.assert_allclose(iap_attribute_probabilities(post, seen), [[0.25, 0.75, 0.75]])
    unseen = np.array([[1, 1, 0], [0, 1, 1]], dtype=float)
    priors = attribute_priors(seen)
    s = iap_scores(np.array([[0.2, 0.9, 0.9]]), unseen, seen, priors)
    assert s.shape == (1, 2) and s[0].argmax() == 1
    np.testing.assert_allclose(np.exp(s).sum(), 1.0)
    # with given posteriors the result is DAP on the mixed signature
    s2 = iap_scores(np.zeros((1, 3)), unseen, seen, priors, seen_posteriors=post)
    np.testing.assert_allclose(s2, dap_scores([[0.25, 0.75, 0.75]], unseen, priors))
    # the seen-class step divides the input probabilities by their own prior
    p, rho = np.array([[0.2, 0.9, 0.9]]), np.array([0.3, 0.6, 0.6])
    seen_post = np.exp(dap_scores(p, seen, rho))
    np.testing.assert_allclose(
        iap_scores(p, unseen, seen, priors, input_priors=rho),
        iap_scores(p, unseen, seen, priors, seen_posteriors=seen_post),
    )


def test_zero_shot_evaluate_confusion_and_mean_class_accuracy():
    # 3 classes; class 0: 2 of 2 right, class 1: 1 of 4 right, class 2: no image
    scores = np.log(
        np.array(
            [
                [0.9, 0.1, 0.0],
                [0.6, 0.3, 0.1],
                [0.2, 0.7, 0.1],
                [0.8, 0.1, 0.1],
                [0.1, 0.2, 0.7],
                [0.5, 0.4, 0.1],
            ]
        )
        + 1e-9
    )
    r = zero_shot_evaluate(scores, [0, 0, 1, 1, 1, 1], ["a", "b", "c"])
    assert r["confusion_matrix"] == [[2, 0, 0], [2, 1, 1], [0, 0, 0]]
    assert r["per_class_accuracy"] == {"a": 1.0, "b": 0.25, "c": None}
    assert r["mean_class_accuracy"] == pytest.approx((1.0 + 0.25) / 2)
    assert r["accuracy"] == pytest.approx(3 / 6)
    assert r["chance"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="true_classes"):
        zero_shot_evaluate(scores, [0, 0, 1, 1, 1, 3])


# --------------------------------------------------------------------------- trained model
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    import os

    from apcnn.config import TrainConfig, load_config
    from apcnn.training import train

    base = tmp_path_factory.mktemp("zeroshot")
    old = os.environ.get("APCNN_CACHE")
    os.environ["APCNN_CACHE"] = str(base / "cache")
    try:
        out = base / "run"
        train(load_config(TrainConfig, None, [*TINY, f"run.out={out}", "train.device=cpu"]))
    finally:
        if old is None:
            os.environ.pop("APCNN_CACHE", None)
        else:
            os.environ["APCNN_CACHE"] = old
    return out


@pytest.mark.slow
def test_zero_shot_on_synthetic_unseen_classes_beats_3x_chance(tiny_run, tmp_path):
    """DAP on the 4 unseen classes (chance 1/4) with the default calibrated probabilities.

    The Platt calibration is fitted on the 36-image validation split, whose label frequencies
    ρ_m (e.g. 5 green objects of 36: ρ = 0.17, not 0.25) are the prior inside the calibrated
    probabilities; DAP divides by ρ_m (apcnn.zeroshot.probability_priors). Measured mean
    per-class accuracy, training seeds 0-5 of this config: calibrated 0.762 / 0.787 / 0.800 /
    0.788 / 0.787 / 0.775 (divided by the training classes' π_m instead: 0.750 / 0.725 / 0.737
    / 0.775 / 0.762 / 0.738); sigmoid of the score 0.787 / 0.837 / 0.825 / 0.837 / 0.812 /
    0.837. The margin is thin because the attribute detectors transfer poorly: every unseen
    (colour, shape) pair is absent from training, so e.g. "square" is a perfect negative cue for
    "red" there, and green_cross / blue_triangle (both small) are hard to tell apart.
    """
    from apcnn.calibration import calibration_prior
    from apcnn.data import create_dataset
    from apcnn.data.synthetic import CLASS_NAMES, UNSEEN_CLASSES
    from apcnn.zeroshot import zeroshot_from_checkpoint

    ckpt = tiny_run / "checkpoints" / "S-CNN"
    json_path = tmp_path / "zs.json"
    result = zeroshot_from_checkpoint(ckpt, json_path=json_path)
    assert result["split"] == "unseen" and result["zero_shot"] is True
    assert result["probabilities"] == "calibrated" and result["method"] == "dap"
    assert sorted(result["class_names"]) == sorted(CLASS_NAMES[k] for k in UNSEEN_CLASSES)
    assert result["chance"] == pytest.approx(1 / 4)
    conf = np.asarray(result["confusion_matrix"])
    assert conf.shape == (4, 4) and conf.sum() == result["num_images"] > 0
    print(
        f"DAP (calibrated) mean per-class accuracy {result['mean_class_accuracy']:.3f} "
        f"(chance {result['chance']:.3f})"
    )
    assert result["mean_class_accuracy"] >= 3 * result["chance"]
    # DAP divided the calibrated probabilities by the validation split's label frequencies
    val = create_dataset("synthetic", split="val", num_images=320, image_size=96)
    np.testing.assert_allclose(result["priors"], calibration_prior(val.targets, val.mask))
    saved = json.loads(json_path.read_text())
    assert math.isclose(saved["mean_class_accuracy"], result["mean_class_accuracy"])
    assert saved["probabilities"] == "calibrated" and saved["method"] == "dap"

    sigmoid = zeroshot_from_checkpoint(ckpt, probabilities="sigmoid")
    print(f"DAP (sigmoid) mean per-class accuracy {sigmoid['mean_class_accuracy']:.3f}")
    assert sigmoid["mean_class_accuracy"] >= 3 * sigmoid["chance"]
    np.testing.assert_allclose(sigmoid["priors"], sigmoid["class_priors"])
    iap = zeroshot_from_checkpoint(ckpt, method="iap")
    print(f"IAP mean per-class accuracy {iap['mean_class_accuracy']:.3f}")
    assert iap["mean_class_accuracy"] > iap["chance"]


@pytest.mark.slow
def test_cli_zeroshot_writes_json(tiny_run, tmp_path, capsys):
    from apcnn.cli import main

    out = tmp_path / "zs.json"
    rc = main(
        [
            "zeroshot",
            "--checkpoint",
            str(tiny_run / "checkpoints" / "S-CNN"),
            "--split",
            "unseen",
            "--json",
            str(out),
        ]
    )
    assert rc == 0
    data = json.loads(out.read_text())
    assert 0.0 <= data["mean_class_accuracy"] <= 1.0
    assert "mean per-class accuracy" in capsys.readouterr().out
    assert (
        main(
            ["zeroshot", "--checkpoint", str(tiny_run / "checkpoints" / "S-CNN"), "--split", "nope"]
        )
        == 2
    )


def test_zeroshot_needs_a_class_attribute_matrix(tmp_path):
    """A checkpoint whose schema has no class-attribute matrix (e.g. Clothing) is refused."""
    from apcnn.config import TrainConfig, config_to_dict
    from apcnn.data.schema import AttributeSchema
    from apcnn.predictor import build_predictor, save_predictor
    from apcnn.zeroshot import zeroshot_from_checkpoint

    meta = {
        "backbone": "tf_efficientnet_lite0",
        "weights": "none",
        "tail": "head",
        "freeze_trunk": True,
        "num_attributes": 2,
        "rank": 2,
    }
    schema = AttributeSchema(names=("a", "b"), groups=(("g", (0, 1)),))
    save_predictor(
        tmp_path / "ckpt",
        build_predictor(meta, pretrained=False),
        model_meta=meta,
        schema=schema,
        preprocessing={"image_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3},
        config=config_to_dict(TrainConfig()),
    )
    with pytest.raises(ValueError, match="class-attribute matrix"):
        zeroshot_from_checkpoint(tmp_path / "ckpt")
    with pytest.raises(ValueError, match="method"):
        zeroshot_from_checkpoint(tmp_path / "ckpt", method="nope")


def test_zeroshot_feeds_the_checkpoints_input_shape(tmp_path, monkeypatch):
    """A model trained on portrait input (preprocessing.image_height, as the Clothing recipe's
    224 x 336) sees images of that shape in zero-shot, exactly as in evaluate and predict: every
    reader takes the transform from the checkpoint's ModelSpec. (An untrained predictor suffices:
    only the shapes reaching the network are checked.)"""
    from PIL import Image

    from apcnn.config import TrainConfig, config_to_dict, load_config
    from apcnn.data.synthetic import synthetic_schema
    from apcnn.inference import evaluate_checkpoint, predict_images
    from apcnn.models.spec import ModelSpec
    from apcnn.predictor import AttributePredictor, build_predictor, save_predictor
    from apcnn.zeroshot import zeroshot_from_checkpoint

    schema = synthetic_schema()
    m = schema.num_attributes
    cfg = load_config(
        TrainConfig,
        None,
        [
            "data.name=synthetic",
            "data.options={num_images: 64, image_size: 48}",
            "data.image_size=32",
            "data.image_height=48",
            "data.crop_fraction=1.0",
            "data.num_workers=0",
            "model.weights=none",
            "train.device=cpu",
        ],
    )
    model = {
        "backbone": "tf_efficientnet_lite0",
        "weights": "none",
        "tail": "head",
        "freeze_trunk": True,
        "num_attributes": m,
        "rank": 4,
    }
    pre = {"image_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3}
    # portrait input, as the Clothing recipe's image_size 224, image_height 336, crop_fraction 1
    spec = ModelSpec.from_checkpoint_meta(model, {**pre, "image_height": 48, "crop_fraction": 1.0})
    save_predictor(
        tmp_path / "ckpt",
        build_predictor(spec, pretrained=False),
        spec=spec,
        schema=schema,
        config=config_to_dict(cfg),
    )
    seen: list[tuple[int, ...]] = []
    forward = AttributePredictor.forward

    def recording_forward(self, images):
        seen.append(tuple(images.shape[1:]))
        return forward(self, images)

    monkeypatch.setattr(AttributePredictor, "forward", recording_forward)
    result = zeroshot_from_checkpoint(tmp_path / "ckpt", probabilities="sigmoid")
    assert result["num_images"] > 0 and seen
    assert set(seen) == {(3, 48, 32)}
    seen.clear()
    evaluate_checkpoint(tmp_path / "ckpt")
    photo = tmp_path / "photo.png"
    Image.new("RGB", (60, 90), (200, 40, 40)).save(photo)
    predict_images(tmp_path / "ckpt", [str(photo)])
    assert seen and set(seen) == {(3, *spec.input_shape)} == {(3, 48, 32)}
