from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from apcnn.data.schema import AttributeSchema, MultiClassAttribute
from apcnn.metrics import (
    attribute_metrics,
    binary_metrics,
    check_scored_once,
    method_block,
    multiclass_accuracy,
)

NAN = float("nan")
SCHEMA = AttributeSchema(names=("a", "b", "c", "d"), groups=(("g1", (0, 1)), ("g2", (2, 3))))

# columns: a (2x2 confusion all ones), b (perfect, 1 missing), c (one class only), d (unlabelled)
SCORES = np.array(
    [[1.0, 3.0, -1.0, 0.3], [-1.0, -1.0, 1.0, 0.1], [2.0, -2.0, -1.0, 0.2], [-2.0, 5.0, -1.0, 0.4]]
)
TARGETS = np.array([[1, 1, -1, NAN], [1, -1, -1, NAN], [-1, -1, -1, NAN], [-1, NAN, -1, NAN]])
MASK = np.array([[1, 1, 1, 0], [1, 1, 1, 0], [1, 1, 1, 0], [1, 0, 1, 0]], dtype=bool)


def test_binary_metrics_hand_computed():
    r = binary_metrics(SCORES[:, 0], TARGETS[:, 0])
    assert r["accuracy"] == 0.5 and r["balanced_accuracy"] == 0.5 and r["f1"] == 0.5
    # ranking: 2 (neg), 1 (pos), -1 (pos), -2 (neg): AP = 1/2 * 1/2 + 1/2 * 2/3
    assert r["average_precision"] == pytest.approx(0.5 * 0.5 + 0.5 * 2 / 3)
    assert (r["n"], r["positives"]) == (4, 2)
    # a score of exactly 0 is a negative decision
    assert binary_metrics(np.array([0.0]), np.array([1.0]))["accuracy"] == 0.0


@pytest.mark.filterwarnings("error")  # no RuntimeWarning from NaN/empty handling
def test_attribute_metrics_with_masks():
    r = attribute_metrics(SCORES, TARGETS, MASK, SCHEMA)
    acc = r["accuracy"]
    assert acc["per_attribute"]["a"] == 0.5
    assert acc["per_attribute"]["b"] == 1.0  # the unlabelled row (score 5, target NaN) ignored
    assert acc["per_attribute"]["c"] == 0.75
    assert math.isnan(acc["per_attribute"]["d"])  # nothing labelled
    assert acc["groups"] == {"g1": 0.75, "g2": 0.75}
    assert acc["total"] == pytest.approx((0.5 + 1 + 0.75) / 3)
    bal = r["balanced_accuracy"]["per_attribute"]
    assert bal["a"] == 0.5 and bal["b"] == 1.0 and bal["c"] == 0.75  # c: only TNR exists
    ap = r["average_precision"]
    assert math.isnan(ap["per_attribute"]["c"])  # one class: undefined, excluded
    assert ap["per_attribute"]["b"] == 1.0
    assert r["mAP"] == pytest.approx(((0.5 * 0.5 + 0.5 * 2 / 3) + 1.0) / 2)
    assert math.isnan(ap["groups"]["g2"])
    f1 = r["f1"]["per_attribute"]
    assert f1["a"] == 0.5 and f1["b"] == 1.0 and f1["c"] == 0.0
    assert r["counts"]["b"] == {"n": 3, "positives": 1}
    assert r["counts"]["d"] == {"n": 0, "positives": 0}
    assert r["num_samples"] == 4


def test_default_mask_and_torch_inputs():
    t = np.where(MASK, TARGETS, 0.0)  # 0 = unlabelled when no mask is given
    a = attribute_metrics(torch.tensor(SCORES), torch.tensor(t), None, SCHEMA)
    b = attribute_metrics(SCORES, TARGETS, MASK, SCHEMA)
    assert a["accuracy"]["total"] == b["accuracy"]["total"]
    assert a["mAP"] == b["mAP"]


def test_input_validation():
    with pytest.raises(ValueError, match="-1 or \\+1"):
        attribute_metrics(SCORES, np.where(MASK, 2.0, 0.0), MASK, SCHEMA)
    with pytest.raises(ValueError, match="schema has 4"):
        attribute_metrics(SCORES[:, :3], TARGETS[:, :3], MASK[:, :3], SCHEMA)
    with pytest.raises(ValueError, match="same shape"):
        attribute_metrics(SCORES, TARGETS[:2], MASK, SCHEMA)


def test_multiclass_accuracy():
    schema = AttributeSchema(
        names=("short", "long", "none", "red"),
        groups=(("sleeve", (0, 1, 2)), ("color", (3,))),
        kinds=("multiclass", "multiclass", "multiclass", "binary"),
        multiclass=(MultiClassAttribute("sleeve", (0, 1, 2), ("short", "long", "none")),),
    )
    scores = np.array(
        [
            [0.9, 0.1, 0.0, 1],
            [0.2, 0.5, 0.1, 1],
            [0.3, 0.2, 0.1, 1],
            [0.0, 0.0, 1.0, 1],
            [1.0, 0.0, 0.0, 1],
        ]
    )
    targets = np.array(
        [[1, -1, -1, 1], [-1, 1, -1, 1], [-1, -1, 1, 1], [-1, -1, -1, 1], [1, -1, -1, 1]],
        dtype=float,
    )
    mask = np.ones_like(targets, dtype=bool)
    mask[4, 1] = False  # row 4: a member unlabelled -> excluded
    # row 3: no member positive -> excluded. Rows 0, 1 right; row 2 wrong (argmax short, true none)
    acc, n = multiclass_accuracy(scores, targets, mask, (0, 1, 2))
    assert (acc, n) == (pytest.approx(2 / 3), 3)
    r = attribute_metrics(scores, targets, mask, schema)
    assert r["multiclass"]["sleeve"]["accuracy"] == pytest.approx(2 / 3)
    assert r["multiclass"]["sleeve"]["n"] == 3


CLOTHING_GROUPS = {"colors": 3, "patterns": 2, "cloth_parts": 2, "appearance": 1}


def clothing_like_schema() -> AttributeSchema:
    names, groups, i = [], [], 0
    for g, k in CLOTHING_GROUPS.items():
        groups.append((g, tuple(range(i, i + k))))
        names += [f"{g}_{j}" for j in range(k)]
        i += k
    return AttributeSchema(names=tuple(names), groups=tuple(groups))


def test_method_block_matches_design_schema():
    schema = clothing_like_schema()
    rng = np.random.default_rng(0)
    folds = []
    for _ in range(3):
        y = rng.choice([-1.0, 1.0], size=(30, schema.num_attributes))
        s = y * rng.normal(1.0, 1.0, size=y.shape)
        mask = rng.random(y.shape) > 0.1
        folds.append(attribute_metrics(s, y, mask, schema))
    block = method_block(folds, schema)
    # docs/design.md section 3 keys and types
    assert {"total", "groups", "per_attribute", "folds", "metric"} <= set(block)
    assert block["metric"] == "accuracy"
    assert set(block["groups"]) == set(CLOTHING_GROUPS)
    assert list(block["per_attribute"]) == list(schema.names)
    assert len(block["folds"]) == 3 and all(isinstance(x, float) for x in block["folds"])
    values = [block["total"], *block["groups"].values(), *block["per_attribute"].values()]
    assert all(isinstance(v, float) and 0.0 <= v <= 1.0 for v in values)
    fold_totals = [f["accuracy"]["total"] for f in folds]
    assert block["folds"] == fold_totals
    assert block["total"] == pytest.approx(np.mean(fold_totals))
    assert block["std"]["total"] == pytest.approx(np.std(fold_totals, ddof=1))
    g = [f["accuracy"]["groups"]["patterns"] for f in folds]
    assert block["groups"]["patterns"] == pytest.approx(np.mean(g))
    assert block["std"]["groups"]["patterns"] == pytest.approx(np.std(g, ddof=1))
    for extra in ("balanced_accuracy", "average_precision"):
        assert block[extra]["metric"] == extra
        assert set(block[extra]["groups"]) == set(CLOTHING_GROUPS)
    assert block["average_precision"]["total"] == pytest.approx(np.mean([f["mAP"] for f in folds]))
    json.dumps(block, allow_nan=False)  # strict JSON


def test_method_block_undefined_values_are_null():
    folds = [attribute_metrics(SCORES, TARGETS, MASK, SCHEMA)] * 2
    block = method_block(folds, SCHEMA)
    assert block["per_attribute"]["d"] is None
    assert block["average_precision"]["per_attribute"]["c"] is None
    assert block["std"]["total"] == 0.0
    json.dumps(block, allow_nan=False)
    assert method_block(folds[:1], SCHEMA)["std"]["total"] is None  # one fold: no spread
    with pytest.raises(ValueError, match="at least one"):
        method_block([], SCHEMA)


def test_check_scored_once():
    check_scored_once([np.array([0, 2]), [1, 3], torch.tensor([4])], 5)
    with pytest.raises(ValueError, match=r"1 samples scored 0 times \(e.g. \[4\]\)"):
        check_scored_once([[0, 1], [2, 3]], 5)
    with pytest.raises(ValueError, match="scored 2\\+ times \\(e.g. \\[1\\]\\)"):
        check_scored_once([[0, 1], [1, 2]], 3)
    with pytest.raises(ValueError, match="outside"):
        check_scored_once([[0, 5]], 3)


def test_metrics_with_explicit_decisions():
    """decisions= (e.g. p >= threshold) replace score > 0 for accuracy, balanced accuracy and
    F1; average precision still ranks the scores."""
    from apcnn.data.schema import AttributeSchema
    from apcnn.metrics import attribute_metrics

    schema = AttributeSchema(names=("a",), groups=(("g", (0,)),))
    y = np.array([[1.0], [1.0], [-1.0], [-1.0]])
    s = np.array([[0.3], [-0.1], [-0.2], [-0.9]])
    plain = attribute_metrics(s, y, None, schema)
    assert plain["accuracy"]["total"] == pytest.approx(0.75)
    d = s > -0.15  # a lower cut-off: image 1 becomes a (right) yes
    cut = attribute_metrics(s, y, None, schema, decisions=d)
    assert cut["accuracy"]["total"] == 1.0 and cut["balanced_accuracy"]["total"] == 1.0
    assert cut["average_precision"]["total"] == plain["average_precision"]["total"]
    with pytest.raises(ValueError, match="decisions"):
        attribute_metrics(s, y, None, schema, decisions=np.ones((3, 1), bool))


# ------------------------------------------------------------------- instance-based metrics
# columns a, b (group g1), c, d (g2); image 3 has no label at all (left out)
I_DECISIONS = np.array([[1, 0, 1, 0], [0, 0, 0, 0], [1, 0, 1, 0], [1, 1, 1, 1]], dtype=bool)
I_TARGETS = np.array(
    [[1, 1, 1, NAN], [-1, 1, -1, -1], [1, -1, -1, 1], [NAN, NAN, NAN, NAN]], dtype=float
)
I_MASK = np.array([[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 0, 0], [0, 0, 0, 0]], dtype=bool)


@pytest.mark.filterwarnings("error")
def test_instance_metrics_hand_computed():
    """Image 0: P = {a, c}, T = {a, b, c}: acc 2/3, prec 1, rec 2/3. Image 1: no predicted
    positive, T = {b}: 0, 0 (empty |P| counts 0), 0. Image 2: P = T = {a} (the masked c, decided
    yes but labelled no, and the masked d are ignored): 1, 1, 1. Image 3: nothing labelled, left
    out. F1 from the averaged P = 2/3 and R = 5/9: 20/33 (the mean of per-image F1s is 0.6)."""
    from apcnn.metrics import instance_metrics

    r = instance_metrics(I_DECISIONS, I_TARGETS, I_MASK)
    assert r["n"] == 3
    assert r["accuracy"] == pytest.approx(5 / 9)
    assert r["precision"] == pytest.approx(2 / 3)
    assert r["recall"] == pytest.approx(5 / 9)
    assert r["f1"] == pytest.approx(20 / 33)
    # group g1 (a, b): image 0 P = {a}, T = {a, b}; image 1 P = {}, T = {b}; image 2 P = T = {a}
    g1 = instance_metrics(I_DECISIONS, I_TARGETS, I_MASK, (0, 1))
    assert (g1["accuracy"], g1["precision"], g1["recall"]) == pytest.approx((1 / 2, 2 / 3, 1 / 2))
    assert g1["f1"] == pytest.approx(4 / 7) and g1["n"] == 3
    # group g2 (c, d): image 0 P = T = {c}; image 1 no positive at all: 0 everywhere (eps);
    # image 2 has no labelled c or d: left out
    g2 = instance_metrics(I_DECISIONS, I_TARGETS, I_MASK, (2, 3))
    assert g2 == pytest.approx(
        {"accuracy": 0.5, "precision": 0.5, "recall": 0.5, "f1": 0.5, "n": 2}
    )
    empty = instance_metrics(I_DECISIONS, I_TARGETS, np.zeros_like(I_MASK))
    assert empty["n"] == 0 and all(math.isnan(empty[k]) for k in ("accuracy", "precision", "f1"))
    assert instance_metrics(np.zeros((1, 2), bool), [[-1, -1]], np.ones((1, 2), bool))["f1"] == 0.0
    with pytest.raises(ValueError, match="same shape"):
        instance_metrics(I_DECISIONS[:2], I_TARGETS, I_MASK)


def test_instance_metrics_match_scikit_learn_samples_average():
    """Fully labelled: the same as scikit-learn's average="samples" with zero_division=0
    (jaccard = instance accuracy), images without any positive included."""
    from sklearn.metrics import jaccard_score, precision_score, recall_score

    from apcnn.metrics import instance_metrics

    rng = np.random.default_rng(3)
    y = rng.random((40, 6)) < 0.3
    d = rng.random((40, 6)) < 0.3
    y[0], d[0] = False, False  # neither
    y[1], d[1] = False, True  # no true positive
    r = instance_metrics(d, np.where(y, 1.0, -1.0), np.ones_like(y))
    kw = {"average": "samples", "zero_division": 0}
    assert r["accuracy"] == pytest.approx(jaccard_score(y, d, **kw))
    assert r["precision"] == pytest.approx(precision_score(y, d, **kw))
    assert r["recall"] == pytest.approx(recall_score(y, d, **kw))


def test_attribute_metrics_instance_block_total_and_groups():
    scores = np.where(I_DECISIONS, 1.0, -1.0)
    r = attribute_metrics(scores, I_TARGETS, I_MASK, SCHEMA)
    inst = r["instance"]
    assert set(inst) == {"accuracy", "precision", "recall", "f1", "num_images"}
    assert inst["f1"]["total"] == pytest.approx(20 / 33)
    # per group, an image with nothing to find and nothing found is left out: image 1 has
    # neither a true nor a predicted positive in g2 (it counts 0 in the total, as published)
    assert inst["accuracy"]["groups"] == pytest.approx({"g1": 0.5, "g2": 1.0})
    assert inst["f1"]["groups"]["g1"] == pytest.approx(4 / 7)
    assert inst["num_images"] == {"total": 3, "groups": {"g1": 3, "g2": 1}}
    # decisions= replace score > 0 here too
    flipped = attribute_metrics(scores, I_TARGETS, I_MASK, SCHEMA, decisions=~I_DECISIONS)
    assert flipped["instance"]["f1"]["total"] != pytest.approx(20 / 33)


def test_method_block_carries_instance_metrics_and_thresholds():
    f1 = attribute_metrics(np.where(I_DECISIONS, 1.0, -1.0), I_TARGETS, I_MASK, SCHEMA)
    f2 = attribute_metrics(SCORES, TARGETS, MASK, SCHEMA)
    f1["thresholds"] = {
        "rule": "balanced",
        "per_attribute": {"a": 0.2, "b": 0.4, "c": 0.5, "d": 0.5},
    }
    f2["thresholds"] = {
        "rule": "balanced",
        "per_attribute": {"a": 0.4, "b": 0.6, "c": 0.5, "d": 0.5},
    }
    block = method_block([f1, f2], SCHEMA)
    inst = block["instance"]
    assert set(inst) == {"accuracy", "precision", "recall", "f1"}
    for name in inst:
        folds = [f["instance"][name]["total"] for f in (f1, f2)]
        assert inst[name]["metric"] == f"instance_{name}"
        assert inst[name]["folds"] == pytest.approx(folds)
        assert inst[name]["total"] == pytest.approx(np.mean(folds))
        assert inst[name]["std"]["total"] == pytest.approx(np.std(folds, ddof=1))
        assert "per_attribute" not in inst[name]
        g = [f["instance"][name]["groups"]["g2"] for f in (f1, f2)]
        assert inst[name]["groups"]["g2"] == pytest.approx(np.mean(g))
    assert block["thresholds"] == {
        "rule": "balanced",
        "per_attribute": pytest.approx({"a": 0.3, "b": 0.5, "c": 0.5, "d": 0.5}),
    }
    json.dumps(block, allow_nan=False)
    # a group without a labelled image in every fold: null, strict JSON
    none_g2 = attribute_metrics(SCORES, TARGETS, MASK & np.array([1, 1, 0, 0], bool), SCHEMA)
    one = method_block([none_g2], SCHEMA)
    assert one["instance"]["f1"]["groups"]["g2"] is None
    assert "thresholds" not in one  # no fold has thresholds
    json.dumps(one, allow_nan=False)
    # older fold results without instance metrics: no block, no error
    old = {k: v for k, v in f2.items() if k != "instance"}
    assert "instance" not in method_block([old], SCHEMA)
    mixed = method_block([f1, dict(f2, thresholds={"rule": "0", "per_attribute": {}})], SCHEMA)
    assert mixed["thresholds"]["rule"] == "mixed"
