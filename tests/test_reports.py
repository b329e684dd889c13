from __future__ import annotations

import numpy as np
import pytest

from apcnn.data.schema import AttributeSchema
from apcnn.metrics import attribute_metrics, method_block
from apcnn.reports import PAPER_TABLE_III, format_table, paper_for_schema, write_report

GROUPS = ("colors", "patterns", "cloth_parts", "appearance")


def clothing_schema() -> AttributeSchema:
    sizes = (3, 2, 2, 1)
    names, groups, i = [], [], 0
    for g, k in zip(GROUPS, sizes, strict=True):
        groups.append((g, tuple(range(i, i + k))))
        names += [f"{g}_{j}" for j in range(k)]
        i += k
    return AttributeSchema(names=tuple(names), groups=tuple(groups))


def results() -> dict:
    return {
        "protocol": {"dataset": "clothing", "folds": 5},
        "methods": {
            "MG-CNN": {
                "total": 0.85,
                "groups": {"colors": 0.9, "patterns": 0.8, "cloth_parts": 0.75, "appearance": 0.7},
                "std": {"total": 0.01, "groups": dict.fromkeys(GROUPS, 0.02)},
                "per_attribute": {},
                "folds": [0.84, 0.86],
                "metric": "accuracy",
            },
            "S-CNN": {
                "total": 0.5,
                "groups": {"colors": 0.5, "patterns": 0.5, "cloth_parts": 0.5, "appearance": None},
                "per_attribute": {},
                "folds": [0.5],
                "metric": "accuracy",
            },
        },
        "seconds": 12.0,
    }


def test_paper_table_values():
    assert PAPER_TABLE_III["MG-CNN"]["total"] == pytest.approx(0.9282)
    assert PAPER_TABLE_III["S-extract"]["groups"]["cloth_parts"] == pytest.approx(0.6751)
    assert PAPER_TABLE_III["CRF"]["groups"]["colors"] == pytest.approx(0.85)
    assert set(PAPER_TABLE_III) == {"S-extract", "M-extract", "S-CNN", "M-CNN", "MG-CNN", "CRF"}
    for row in PAPER_TABLE_III.values():
        assert list(row["groups"]) == list(GROUPS) and 0 < row["total"] < 1


def test_format_table_numbers_and_layout():
    table = format_table(results())
    lines = table.splitlines()
    assert lines[1].split() == ["method", *GROUPS, "total"]
    mg = next(line for line in lines if line.startswith("MG-CNN"))
    assert "90.00 ± 2.00" in mg and "85.00 ± 1.00" in mg
    s = next(line for line in lines if line.startswith("S-CNN"))
    assert s.split() == ["S-CNN", "50.00", "50.00", "50.00", "-", "50.00"]
    assert len({len(line) for line in lines[1:3]}) == 1  # header and rule have the same width


def test_format_table_with_paper_side_by_side():
    table = format_table(results(), PAPER_TABLE_III)
    mg = next(line for line in table.splitlines() if line.startswith("MG-CNN"))
    assert "90.00 ± 2.00 (93.12)" in mg and "85.00 ± 1.00 (92.82)" in mg
    crf = next(line for line in table.splitlines() if line.startswith("CRF"))
    assert "(83.95)" in crf and "(85.00)" in crf  # paper-only methods get their own rows
    assert "(paper)" in table.splitlines()[0]


def test_format_table_sub_block():
    r = results()
    r["methods"]["MG-CNN"]["balanced_accuracy"] = {
        "total": 0.6,
        "groups": dict.fromkeys(GROUPS, 0.6),
        "metric": "balanced_accuracy",
    }
    table = format_table(r, key="balanced_accuracy")
    assert "60.00" in table and "S-CNN" not in table
    assert table.splitlines()[0].startswith("mA (%)")  # the tables' name for balanced accuracy


def test_write_report_files(tmp_path):
    schema = clothing_schema()
    rng = np.random.default_rng(0)
    folds = []
    for _ in range(2):
        y = rng.choice([-1.0, 1.0], size=(20, schema.num_attributes))
        folds.append(attribute_metrics(y * rng.normal(1, 1, y.shape), y, None, schema))
    res = {
        "protocol": {"folds": 2},
        "methods": {"MG-CNN": method_block(folds, schema)},
        "seconds": 3.0,
    }
    S = rng.normal(size=(6, schema.num_attributes))
    W = rng.normal(size=(10, schema.num_attributes))
    path = write_report(
        tmp_path / "out",
        res,
        schema=schema.to_dict(),
        S=S,
        W=W,
        history={"fold 0": [5.0, 3.0, 2.5], "fold 1": [4.0, 3.5]},
    )
    assert path == tmp_path / "out" / "report.md"
    for name in ("per_attribute.png", "S_abs.png", "attribute_sharing.png", "objective.png"):
        f = tmp_path / "out" / name
        assert f.is_file() and f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"({name})" in path.read_text()
    text = path.read_text()
    total = f"{100 * res['methods']['MG-CNN']['total']:.2f}"
    assert total in text and "(92.82)" in text  # paper numbers: the schema has Table II groups
    assert "Against the paper" in text and "- MG-CNN: " in text  # and where we stand against them
    assert "### mA (mean balanced accuracy)" in text and "Average precision" in text
    assert "### Instance-based metrics" in text and "instance F1 (%)" in text
    assert "inst-F1: instance F1" in text
    assert "colors_0" in text  # per-attribute table


def test_write_report_without_optional_inputs(tmp_path):
    schema = AttributeSchema(names=("x", "y"), groups=(("g", (0, 1)),))
    assert paper_for_schema(schema) is None
    res = {
        "methods": {
            "M": {
                "total": 0.7,
                "groups": {"g": 0.7},
                "per_attribute": {"x": 0.6, "y": 0.8},
                "metric": "accuracy",
            }
        }
    }
    path = write_report(tmp_path, res, schema=schema)
    text = path.read_text()
    assert "70.00" in text and "(paper" not in text
    assert (tmp_path / "per_attribute.png").is_file()
    assert not (tmp_path / "S_abs.png").exists()
    with pytest.raises(ValueError, match=r"S must be \(K, 2\)"):
        write_report(tmp_path, res, schema=schema, S=np.ones((3, 5)))


def test_ordering_summary_says_whether_the_papers_ordering_holds():
    from apcnn.reports import ordering_summary

    def block(total, folds):
        return {"total": total, "folds": folds, "std": {"total": 0.01}}

    holds = {
        "S-extract": block(0.95, [0.95, 0.95]),
        "S-CNN": block(0.90, [0.90, 0.90]),
        "M-CNN": block(0.91, [0.92, 0.90]),
        "MG-CNN": block(0.92, [0.93, 0.91]),
    }
    text = ordering_summary(holds)
    assert "holds here" in text and "not" not in text
    assert "M-CNN > S-CNN in 1 of 2 folds" in text and "MG-CNN > M-CNN in 2 of 2 folds" in text
    assert "best method is S-extract (95.00)" in text
    broken = dict(holds, **{"MG-CNN": block(0.905, [0.90, 0.91])})
    assert "does **not** hold" in ordering_summary(broken)
    assert ordering_summary({"S-CNN": block(0.9, [0.9])}) is None


def test_paper_comparison_names_the_figures_below_the_paper():
    from apcnn.reports import PAPER_TABLE_III, paper_comparison

    mg = PAPER_TABLE_III["MG-CNN"]
    ours = {
        "MG-CNN": {
            "total": mg["total"] + 0.002,
            "groups": dict(mg["groups"], colors=mg["groups"]["colors"] - 0.0135),
        },
        "S-CNN": {"total": 0.99, "groups": {g: 0.99 for g in mg["groups"]}},
        "mine": {"total": 0.5, "groups": {}},  # not in the paper: skipped
    }
    lines = paper_comparison(ours, PAPER_TABLE_III)
    assert lines[0] == (
        "- MG-CNN: **below** the paper on colors -1.35; at or above it on total +0.20, "
        "patterns +0.00, cloth_parts +0.00, appearance +0.00."
    )
    assert lines[1] == "- S-CNN: at or above the paper on every figure (total +8.57)."
    assert len(lines) == 2


def majority_fold(schema: AttributeSchema, n: int = 60, seed: int = 0) -> dict:
    """One evaluation where ``colors_0`` is skewed (90 % negative) and the model always answers
    the majority class: 90 % accuracy, balanced accuracy exactly 50 %; the others are learnt."""
    rng = np.random.default_rng(seed)
    y = rng.choice([-1.0, 1.0], size=(n, schema.num_attributes))
    y[:, 0] = np.where(np.arange(n) < n // 10, 1.0, -1.0)
    scores = y * rng.uniform(0.5, 1.5, y.shape)
    scores[:, 0] = -1.0  # the majority class for every image
    return attribute_metrics(scores, y, None, schema)


def test_headline_table_has_accuracy_and_mA_and_flags_a_majority_class_attribute():
    schema = clothing_schema()
    fold = majority_fold(schema)
    assert fold["accuracy"]["per_attribute"]["colors_0"] == pytest.approx(0.9)
    assert fold["balanced_accuracy"]["per_attribute"]["colors_0"] == pytest.approx(0.5)
    block = {"methods": {"S-CNN": method_block([fold], schema)}}
    table = format_table(block, None, title="accuracy (%) on the test split")
    lines = table.splitlines()
    assert lines[0] == "accuracy, mA and instance F1 (%) on the test split"
    assert lines[1].split() == ["method", *GROUPS, "total", "mA", "inst-F1"]
    row = lines[3].split()
    acc = 100 * fold["accuracy"]["total"]
    ma = 100 * fold["balanced_accuracy"]["total"]
    f1 = 100 * fold["instance"]["f1"]["total"]
    assert row == ["S-CNN", *row[1:5], f"{acc:.2f}", f"{ma:.2f}", f"{f1:.2f}"] and ma < acc
    assert any(line.startswith("mA: mean balanced accuracy") for line in lines)
    assert any(line.startswith("inst-F1: instance F1") for line in lines)
    chance = [line for line in lines if line.startswith("at chance")]
    assert chance == [
        "at chance (S-CNN, balanced accuracy within 2 points of 50 %, 1 of 8): colors_0"
    ]
    # one evaluation: no "mean ± std over folds", no "±"
    assert "±" not in table and "over folds" not in table


def test_at_chance_band_and_fold_spread():
    from apcnn.reports import at_chance

    schema = clothing_schema()
    folds = [majority_fold(schema, seed=s) for s in (0, 1)]
    block = method_block(folds, schema)
    block["balanced_accuracy"]["per_attribute"]["colors_1"] = 0.519  # inside the band
    block["balanced_accuracy"]["per_attribute"]["colors_2"] = 0.521  # outside
    flagged = at_chance({"MG-CNN": block})
    assert [a for a, _ in flagged["MG-CNN"]] == ["colors_0", "colors_1"]
    table = format_table({"MG-CNN": block})
    assert "mean ± std over folds" in table.splitlines()[0]  # two folds: a real spread
    assert "at chance (MG-CNN" in table
    assert at_chance({"M": {"total": 0.9, "per_attribute": {"a": 0.5}}}) == {}  # no mA: none


def test_report_md_shows_mA_and_the_attributes_at_chance(tmp_path):
    schema = clothing_schema()
    res = {"methods": {"S-CNN": method_block([majority_fold(schema)], schema)}}
    text = write_report(tmp_path, res, schema=schema, paper=None).read_text()
    assert "mA: mean balanced accuracy" in text
    assert "**Attributes at chance**" in text and "- S-CNN (1 of 8): colors_0" in text
    assert "| S-CNN acc | S-CNN mA |" in text and "50.00 (chance)" in text
    assert "over folds" not in text


def test_S_plot_is_cropped_to_latent_tasks_in_use(tmp_path):
    from apcnn.reports import _plot_S, latent_rows_in_use

    schema = clothing_schema()
    S = np.zeros((64, schema.num_attributes))
    S[[3, 17, 40]] = np.arange(1, schema.num_attributes + 1)
    assert latent_rows_in_use(S).tolist() == [3, 17, 40]
    assert latent_rows_in_use(-S).tolist() == [3, 17, 40]  # |S|
    _plot_S(tmp_path / "S.png", S, schema)
    from PIL import Image

    cropped = Image.open(tmp_path / "S.png").size
    _plot_S(tmp_path / "full.png", np.ones((64, schema.num_attributes)), schema)
    assert cropped[1] < Image.open(tmp_path / "full.png").size[1]  # 3 rows, not 64


def test_instance_table_and_f1_column_with_fold_spread():
    from apcnn.reports import instance_table

    schema = clothing_schema()
    folds = [majority_fold(schema, seed=s) for s in (0, 1)]
    block = method_block(folds, schema)
    text = instance_table({"methods": {"MG-CNN": block}})
    lines = text.splitlines()
    assert lines[0].startswith("instance-based metrics (%)") and "± std over folds" in lines[0]
    assert lines[1].split() == ["method", "accuracy", "precision", "recall", "F1"]
    inst = block["instance"]
    expected = [
        f"{100 * inst[n]['total']:.2f} ± {100 * inst[n]['std']['total']:.2f}"
        for n in ("accuracy", "precision", "recall", "f1")
    ]
    assert lines[3].startswith("MG-CNN") and all(e in lines[3] for e in expected)
    table = format_table({"MG-CNN": block})
    assert table.splitlines()[1].split()[-1] == "inst-F1"
    assert expected[-1] in table.splitlines()[3]
    by_group = format_table({"MG-CNN": block}, key="instance.f1")
    assert by_group.splitlines()[0].startswith("instance F1 (%)")
    g = inst["f1"]["groups"]["patterns"]
    assert f"{100 * g:.2f}" in by_group
    # blocks without instance metrics (older results): no column, no table
    bare = {k: v for k, v in block.items() if k != "instance"}
    assert "inst-F1" not in format_table({"MG-CNN": bare}) and instance_table({"M": bare}) == ""
    # the paper's numbers stay on the accuracy columns
    with_paper = format_table({"MG-CNN": block}, PAPER_TABLE_III).splitlines()
    mg = next(line for line in with_paper if line.startswith("MG-CNN"))
    assert mg.endswith(expected[-1]) and "(92.82)" in mg


def test_report_md_names_the_threshold_rule_and_lists_the_thresholds(tmp_path):
    schema = clothing_schema()
    fold = majority_fold(schema)
    fold["thresholds"] = {
        "rule": "balanced",
        "per_attribute": {n: 0.25 + 0.01 * i for i, n in enumerate(schema.names)},
    }
    res = {"methods": {"MG-CNN": method_block([fold], schema)}}
    text = write_report(tmp_path, res, schema=schema, paper=None).read_text()
    assert "### Decision thresholds (decide p >= t)" in text
    assert "- MG-CNN: `train.threshold: balanced`, chosen on the validation split" in text
    assert (
        "| colors_0 | colors | 0.250 |" in text and "| appearance_0 | appearance | 0.320 |" in text
    )
