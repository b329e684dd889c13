"""The text of the reports: results tables, legends and the paper's reference numbers.

:func:`format_table` turns the ``methods`` of a ``results.json`` (docs/design.md section 3) into a
fixed-width table of percentages (methods x groups + total, then mA: the mean balanced accuracy,
and inst-F1: the instance F1, beside the accuracy), ``mean ± std`` when a method block has a
spread over several folds, the
paper's numbers in parentheses next to ours when ``paper`` is given, and a line naming the
attributes at chance (:func:`at_chance`): a model that always predicts the majority class has a
high accuracy on a skewed attribute but a balanced accuracy of exactly 50 %.
:func:`instance_table` lists the instance-based accuracy, precision, recall and F1;
:func:`thresholds_md` and :func:`per_attribute_md` are the report's Markdown tables. The small
helpers (:func:`sub_block`, :func:`has_spread`, :func:`pct`, ...) are shared with the other
report modules.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from apcnn.data.schema import AttributeSchema


def _row(colors: float, patterns: float, cloth_parts: float, appearance: float, total: float):
    return {
        "groups": {
            "colors": colors / 100,
            "patterns": patterns / 100,
            "cloth_parts": cloth_parts / 100,
            "appearance": appearance / 100,
        },
        "total": total / 100,
        "metric": "accuracy",
    }


#: Abdulnabi et al. 2015, Table III: Clothing Attribute Dataset accuracy (fractions),
#: group means and total (mean over the 23 binary attributes). No per-attribute numbers exist.
PAPER_TABLE_III: dict[str, dict[str, Any]] = {
    "S-extract": _row(81.84, 82.07, 67.51, 69.25, 78.31),
    "M-extract": _row(84.98, 89.89, 81.41, 81.03, 85.29),
    "S-CNN": _row(90.50, 92.90, 87.00, 89.57, 90.43),
    "M-CNN": _row(91.72, 94.26, 87.96, 91.51, 91.70),
    "MG-CNN": _row(93.12, 95.37, 88.65, 91.93, 92.82),
    "CRF": _row(85.00, 84.33, 81.25, 82.50, 83.95),
}

#: one-line descriptions of the paper's methods
PAPER_METHODS: dict[str, str] = {
    "S-extract": "ImageNet CNN features + one SVM per attribute",
    "M-extract": "same features + multi-task layer",
    "S-CNN": "one fine-tuned CNN per attribute",
    "M-CNN": "multi-task, no groups",
    "MG-CNN": "multi-task with groups (the paper's model)",
    "CRF": "CRF, Chen et al. ECCV 2012",
}

_DASH = "-"

#: an attribute whose balanced accuracy lies within this of 0.5 is flagged "at chance"
CHANCE_BAND = 0.02

#: the legend under a table with an mA column
MA_LEGEND = (
    "mA: mean balanced accuracy, (TPR + TNR) / 2 per attribute then the mean; 50 = chance, "
    "whatever the class balance"
)


#: the legend under a table with an inst-F1 column
INSTANCE_LEGEND = (
    "inst-F1: instance F1, per image over its labelled attributes; precision and recall averaged "
    "over images, then 2PR / (P + R) (an empty denominator counts 0)"
)

#: the note under the instance F1 per group
GROUP_INSTANCE_NOTE = (
    "Per group, the same formulas on the group's attributes only, over the images with a true "
    "or a predicted positive among them (an image with nothing to find and nothing found is "
    "left out, where the total counts it 0)"
)

#: the names tables give to the metrics of a method block (``key`` of :func:`format_table`)
METRIC_LABELS = {
    "balanced_accuracy": "mA",
    "average_precision": "AP",
    "instance.accuracy": "instance accuracy",
    "instance.precision": "instance precision",
    "instance.recall": "instance recall",
    "instance.f1": "instance F1",
}

#: what each ``train.threshold`` rule means, for the reports
THRESHOLD_RULE_TEXT = {
    "0": "the trained boundary, score >= 0 (p >= σ(c_m))",
    "accuracy": "chosen on the validation split for the best accuracy per attribute",
    "balanced": "chosen on the validation split for the best balanced accuracy per attribute",
    "prior_shift": "moved from the boundary towards each attribute's label frequency by one "
    "step chosen on the validation split (best mA within train.threshold_max_accuracy_loss)",
    "mixed": "different rules in different folds",
}


def sub_block(block: Any, key: str | None) -> Any:
    """``block[key]``, a dotted ``key`` going down (``"instance.f1"``); ``block`` for None."""
    if key is None:
        return block
    for part in key.split("."):
        if not isinstance(block, Mapping):
            return None
        block = block.get(part)
    return block


def paper_for_schema(schema: AttributeSchema) -> dict[str, dict[str, Any]] | None:
    """PAPER_TABLE_III when ``schema`` has exactly the paper's Clothing groups, else None."""
    paper_groups = set(PAPER_TABLE_III["MG-CNN"]["groups"])
    return PAPER_TABLE_III if set(schema.group_names) == paper_groups else None


def methods_of(results: Mapping[str, Any]) -> Mapping[str, Any]:
    """The ``methods`` of a ``results.json`` dict; ``results`` itself when it is that mapping."""
    if "methods" in results and isinstance(results["methods"], Mapping):
        return results["methods"]
    return results


def missing(x: Any) -> bool:
    """No figure: None or NaN (a method without that group, an empty fold)."""
    return x is None or (isinstance(x, float) and math.isnan(x))


def pct(x: Any) -> str:
    """A fraction as a percentage with two decimals, ``-`` for a missing one."""
    if missing(x):
        return _DASH
    return f"{100 * float(x):.2f}"


def balanced_block(block: Any) -> Mapping[str, Any] | None:
    """The balanced-accuracy summary of a method block (the block itself when it is one)."""
    if not isinstance(block, Mapping):
        return None
    if block.get("metric") == "balanced_accuracy":
        return block
    b = block.get("balanced_accuracy")
    return b if isinstance(b, Mapping) else None


def has_spread(block: Mapping[str, Any]) -> bool:
    """True when ``block`` has a standard deviation to show (several folds), not just ``std``
    entries that are all None (one evaluation)."""
    std = block.get("std") or {}
    values = [std.get("total"), *(std.get("groups") or {}).values()]
    return any(not missing(v) for v in values)


def at_chance(
    results: Mapping[str, Any], band: float = CHANCE_BAND
) -> dict[str, list[tuple[str, float]]]:
    """Per method, the attributes whose balanced accuracy is within ``band`` of 0.5.

    ``results``: a ``results.json`` dict or its ``methods``; a method block's balanced accuracy
    is its ``balanced_accuracy`` sub-block (or the block itself when that is its metric).
    Returns ``{method: [(attribute, balanced accuracy), ...]}`` for methods with any such
    attribute: their decisions carry no information beyond the class frequencies (e.g. the
    majority class for every image).
    """
    out: dict[str, list[tuple[str, float]]] = {}
    for name, block in methods_of(results).items():
        ba = balanced_block(block)
        per = (ba or {}).get("per_attribute") or {}
        flagged = [
            (attr, float(v))
            for attr, v in per.items()
            if not missing(v) and abs(float(v) - 0.5) <= band + 1e-12
        ]
        if flagged:
            out[name] = flagged
    return out


def chance_lines(results: Mapping[str, Any], band: float = CHANCE_BAND) -> list[str]:
    """``at chance (...): a, b`` lines, one per method with attributes at chance."""
    lines = []
    for name, flagged in at_chance(results, band).items():
        n = len(((balanced_block(methods_of(results)[name]) or {}).get("per_attribute")) or {})
        attrs = ", ".join(a for a, _ in flagged)
        lines.append(
            f"at chance ({name}, balanced accuracy within {100 * band:.0f} points of 50 %, "
            f"{len(flagged)} of {n}): {attrs}"
        )
    return lines


def _cell(value: Any, std: Any, paper: Any, with_paper: bool) -> str:
    text = pct(value)
    if text != _DASH and not missing(std):
        text += f" ± {100 * float(std):.2f}"
    if with_paper:
        text += f" ({pct(paper)})"
    return text


def table_layout(
    blocks: Mapping[str, Mapping[str, Any]], paper: Mapping[str, Any]
) -> tuple[list[str], list[str]]:
    """The columns and rows of a results table: the groups in order of first appearance over
    our blocks then the paper's, and the method names (with a reference: the paper's row order,
    S-extract ... MG-CNN, CRF, then our other methods)."""
    groups: list[str] = []
    for b in [*blocks.values(), *paper.values()]:
        for g in b.get("groups", {}):
            if g not in groups:
                groups.append(g)
    names = list(paper) + [n for n in blocks if n not in paper] if paper else list(blocks)
    return groups, names


def format_table(
    results: Mapping[str, Any],
    paper: Mapping[str, Any] | None = None,
    *,
    key: str | None = None,
    title: str | None = None,
    flags: bool = True,
) -> str:
    """A fixed-width table: one row per method, one column per group, then ``total``, ``mA`` and
    ``inst-F1``.

    Args:
        results: a ``results.json`` dict (with ``"methods"``) or its ``methods`` mapping
            ``{method: {"total", "groups", ["std"], ["balanced_accuracy"], ["instance"], ...}}``.
        paper: reference numbers in the same shape (e.g. :data:`PAPER_TABLE_III`), shown in
            parentheses after ours; methods only in ``paper`` get rows of their own.
        key: show the sub-block ``method[key]`` (e.g. ``"balanced_accuracy"``, or dotted:
            ``"instance.f1"``) instead of the headline metric; the title names it as
            :data:`METRIC_LABELS` does (balanced accuracy: ``mA``).
        title: first line; default names the metric (a given "accuracy (%)" becomes "accuracy,
            mA and instance F1 (%)" when those columns are there).
        flags: add the ``mA`` and ``inst-F1`` legends and the ``at chance`` lines
            (:func:`chance_lines`) below.

    Cells are percentages with two decimals, ``mean ± std`` where the block has a spread over
    several folds. When ``key`` is None, the ``mA`` column (mean balanced accuracy) is there when
    a method block has a ``balanced_accuracy`` sub-block, the ``inst-F1`` column (instance F1,
    total) when one has ``instance.f1``; the paper's numbers stay on the accuracy columns.
    """
    methods = methods_of(results)
    blocks: dict[str, Mapping[str, Any]] = {}
    for name, block in methods.items():
        b = sub_block(block, key)
        if isinstance(b, Mapping) and "total" in b:
            blocks[name] = b
    paper = dict(paper or {})
    groups, names = table_layout(blocks, paper)
    with_paper = bool(paper)
    with_ma = key is None and any(
        b.get("metric") != "balanced_accuracy" and isinstance(b.get("balanced_accuracy"), Mapping)
        for b in blocks.values()
    )
    with_if1 = key is None and any(
        isinstance(sub_block(b, "instance.f1"), Mapping) for b in blocks.values()
    )
    spread = any(has_spread(b) for b in blocks.values())

    header = ["method", *groups, "total"] + (["mA"] if with_ma else [])
    header += ["inst-F1"] if with_if1 else []
    rows = []
    for name in names:
        b = blocks.get(name, {})
        p = paper.get(name, {})
        std = (b.get("std") or {}) if spread else {}
        cells = [name]
        for g in groups:
            cells.append(
                _cell(
                    b.get("groups", {}).get(g),
                    (std.get("groups") or {}).get(g),
                    p.get("groups", {}).get(g),
                    with_paper,
                )
            )
        cells.append(_cell(b.get("total"), std.get("total"), p.get("total"), with_paper))
        if with_ma:
            ba = b.get("balanced_accuracy") or {}
            ba_std = ((ba.get("std") or {}).get("total")) if spread else None
            cells.append(_cell(ba.get("total"), ba_std, None, False))
        if with_if1:
            f1 = sub_block(b, "instance.f1") or {}
            f1_std = ((f1.get("std") or {}).get("total")) if spread else None
            cells.append(_cell(f1.get("total"), f1_std, None, False))
        rows.append(cells)

    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = [c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)]
        return "  ".join([first, *rest]).rstrip()

    extras = [n for n, on in (("mA", with_ma), ("instance F1", with_if1)) if on]
    if title is None:
        metric = key or next((b.get("metric") for b in blocks.values() if b.get("metric")), None)
        words = [METRIC_LABELS.get(metric, metric) if metric else "score", *extras]
        title = f"{_and(words)} (%)"
        if spread:
            title += ", mean ± std over folds"
        if with_paper:
            title += "; (paper)"
    elif extras and "mA" not in title:  # a caller's "accuracy (%) on ..." names every column
        title = title.replace("accuracy (%)", f"{_and(['accuracy', *extras])} (%)", 1)
    out = [title, line(header), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in rows]
    if flags and with_ma:
        out.append(MA_LEGEND)
    if flags and with_if1:
        out.append(INSTANCE_LEGEND)
    if flags and key is None:
        out += chance_lines({n: methods[n] for n in blocks})
    return "\n".join(out)


def _and(words: Sequence[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def instance_table(results: Mapping[str, Any]) -> str:
    """A fixed-width table of the instance-based metrics: one row per method with an
    ``instance`` sub-block, columns accuracy, precision, recall and F1 (totals, percentages,
    ``mean ± std`` over folds where there is a spread); ``""`` when no method has one."""
    methods = methods_of(results)
    names = ("accuracy", "precision", "recall", "f1")
    rows = []
    spread = False
    for method, block in methods.items():
        inst = sub_block(block, "instance")
        if not isinstance(inst, Mapping) or not all(
            isinstance(inst.get(n), Mapping) for n in names
        ):
            continue
        spread = spread or any(has_spread(inst[n]) for n in names)
        rows.append((method, inst))
    if not rows:
        return ""
    header = ["method", "accuracy", "precision", "recall", "F1"]
    cells = [
        [
            method,
            *(
                _cell(
                    inst[n].get("total"),
                    (inst[n].get("std") or {}).get("total") if spread else None,
                    None,
                    False,
                )
                for n in names
            ),
        ]
        for method, inst in rows
    ]
    widths = [max(len(r[i]) for r in [header, *cells]) for i in range(len(header))]

    def line(row: Sequence[str]) -> str:
        rest = [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
        return "  ".join([row[0].ljust(widths[0]), *rest]).rstrip()

    title = "instance-based metrics (%), per image over its labelled attributes"
    if spread:
        title += ", mean ± std over folds"
    return "\n".join(
        [title, line(header), "  ".join("-" * w for w in widths)] + [line(r) for r in cells]
    )


def thresholds_md(methods: Mapping[str, Any], schema: AttributeSchema) -> str:
    """Markdown: the decision rule of each method (its ``thresholds`` entry, ``train.threshold``)
    and a table of the per-attribute thresholds on the calibrated probability (decide
    p >= t); ``""`` when no method block has thresholds."""
    with_t = {
        n: b["thresholds"]
        for n, b in methods.items()
        if isinstance(b, Mapping) and isinstance(b.get("thresholds"), Mapping)
    }
    if not with_t:
        return ""
    lines = []
    for name, t in with_t.items():
        rule = str(t.get("rule"))
        text = THRESHOLD_RULE_TEXT.get(rule, rule)
        if isinstance(t.get("shift"), (int, float)):
            text += f" (w = {t['shift']:.2f})"
        lines.append(f"- {name}: `train.threshold: {rule}`, {text}")
    order, _ = group_order(schema)
    lines += [
        "",
        "| attribute | group | " + " | ".join(with_t) + " |",
        "|---|---|" + "---:|" * len(with_t),
    ]
    for i in order:
        a = schema.names[i]
        vals = []
        for t in with_t.values():
            v = (t.get("per_attribute") or {}).get(a)
            vals.append(_DASH if missing(v) else f"{float(v):.3f}")
        lines.append(f"| {a} | {schema.group_of(i)} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


def group_order(schema: AttributeSchema) -> tuple[list[int], list[tuple[str, int, int]]]:
    """Attribute order by group and the (group, start, stop) spans in that order."""
    order: list[int] = []
    spans = []
    for g, idx in schema.groups:
        start = len(order)
        order.extend(i for i in idx if i not in order)
        if len(order) > start:
            spans.append((g, start, len(order)))
    return order, spans


def per_attribute_md(methods: Mapping[str, Any], schema: AttributeSchema, key: str | None) -> str:
    """Markdown table: per attribute and method the accuracy and, where the blocks have it, the
    balanced accuracy (``mA``), ``(chance)`` after one within :data:`CHANCE_BAND` of 50 %."""
    names = [
        n
        for n, b in methods.items()
        if isinstance((b.get(key) if key else b), Mapping)
        and "per_attribute" in (b.get(key) if key else b)
    ]
    if not names:
        return ""
    balanced = {n: ((balanced_block(methods[n]) or {}).get("per_attribute") or {}) for n in names}
    with_ma = key is None and any(balanced.values())
    order, _ = group_order(schema)
    head = [f"{n} acc | {n} mA" if with_ma else n for n in names]
    lines = [
        "| attribute | group | " + " | ".join(head) + " |",
        "|---|---|" + "---:|" * (len(names) * (2 if with_ma else 1)),
    ]
    for i in order:
        a = schema.names[i]
        vals = []
        for n in names:
            vals.append(pct(((methods[n].get(key) if key else methods[n])["per_attribute"]).get(a)))
            if with_ma:
                v = balanced[n].get(a)
                chance = not missing(v) and abs(float(v) - 0.5) <= CHANCE_BAND + 1e-12
                vals.append(pct(v) + (" (chance)" if chance else ""))
        lines.append(f"| {a} | {schema.group_of(i)} | " + " | ".join(vals) + " |")
    return "\n".join(lines)
