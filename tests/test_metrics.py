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
