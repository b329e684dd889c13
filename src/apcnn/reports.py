"""Results tables and the Markdown report with its figures.

:func:`format_table` turns the ``methods`` of a ``results.json`` (docs/design.md section 3) into a
fixed-width table of percentages (methods x groups + total, then mA: the mean balanced accuracy,
and inst-F1: the instance F1, beside the accuracy), ``mean ± std`` when a method block has a
spread over several folds, the
paper's numbers in parentheses next to ours when ``paper`` is given, and a line naming the
attributes at chance (:func:`at_chance`): a model that always predicts the majority class has a
high accuracy on a skewed attribute but a balanced accuracy of exactly 50 %.
:func:`instance_table` lists the instance-based accuracy, precision, recall and F1.
:func:`write_report` writes ``OUT/report.md`` plus PNG figures next to it (matplotlib's Agg
renderer through the object API: no pyplot, no global backend switch).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from apcnn.data.schema import AttributeSchema

__all__ = [
    "PAPER_TABLE_III",
    "PAPER_METHODS",
    "format_table",
    "instance_table",
    "thresholds_md",
    "at_chance",
    "CHANCE_BAND",
    "write_report",
    "paper_for_schema",
    "paper_comparison",
]


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
    "mixed": "different rules in different folds",
}


def _sub(block: Any, key: str | None) -> Any:
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


def _methods(results: Mapping[str, Any]) -> Mapping[str, Any]:
    if "methods" in results and isinstance(results["methods"], Mapping):
        return results["methods"]
    return results


def _missing(x: Any) -> bool:
    """No figure: None or NaN (a method without that group, an empty fold)."""
    return x is None or (isinstance(x, float) and math.isnan(x))


def _pct(x: Any) -> str:
    if _missing(x):
        return _DASH
    return f"{100 * float(x):.2f}"


def _balanced(block: Any) -> Mapping[str, Any] | None:
    """The balanced-accuracy summary of a method block (the block itself when it is one)."""
    if not isinstance(block, Mapping):
        return None
    if block.get("metric") == "balanced_accuracy":
        return block
    b = block.get("balanced_accuracy")
    return b if isinstance(b, Mapping) else None


def _has_spread(block: Mapping[str, Any]) -> bool:
    """True when ``block`` has a standard deviation to show (several folds), not just ``std``
    entries that are all None (one evaluation)."""
    std = block.get("std") or {}
    values = [std.get("total"), *(std.get("groups") or {}).values()]
    return any(not _missing(v) for v in values)


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
    for name, block in _methods(results).items():
        ba = _balanced(block)
        per = (ba or {}).get("per_attribute") or {}
        flagged = [
            (attr, float(v))
            for attr, v in per.items()
            if not _missing(v) and abs(float(v) - 0.5) <= band + 1e-12
        ]
        if flagged:
            out[name] = flagged
    return out


def chance_lines(results: Mapping[str, Any], band: float = CHANCE_BAND) -> list[str]:
    """``at chance (...): a, b`` lines, one per method with attributes at chance."""
    lines = []
    for name, flagged in at_chance(results, band).items():
        n = len(((_balanced(_methods(results)[name]) or {}).get("per_attribute")) or {})
        attrs = ", ".join(a for a, _ in flagged)
        lines.append(
            f"at chance ({name}, balanced accuracy within {100 * band:.0f} points of 50 %, "
            f"{len(flagged)} of {n}): {attrs}"
        )
    return lines


def _cell(value: Any, std: Any, paper: Any, with_paper: bool) -> str:
    text = _pct(value)
    if text != _DASH and not _missing(std):
        text += f" ± {100 * float(std):.2f}"
    if with_paper:
        text += f" ({_pct(paper)})"
    return text


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
    methods = _methods(results)
    blocks: dict[str, Mapping[str, Any]] = {}
    for name, block in methods.items():
        b = _sub(block, key)
        if isinstance(b, Mapping) and "total" in b:
            blocks[name] = b
    paper = dict(paper or {})
    groups: list[str] = []
    for b in [*blocks.values(), *paper.values()]:
        for g in b.get("groups", {}):
            if g not in groups:
                groups.append(g)
    # with a reference: the paper's row order (S-extract ... MG-CNN, CRF), then our other methods
    names = [p for p in paper] + [n for n in blocks if n not in paper] if paper else list(blocks)
    with_paper = bool(paper)
    with_ma = key is None and any(
        b.get("metric") != "balanced_accuracy" and isinstance(b.get("balanced_accuracy"), Mapping)
        for b in blocks.values()
    )
    with_if1 = key is None and any(
        isinstance(_sub(b, "instance.f1"), Mapping) for b in blocks.values()
    )
    spread = any(_has_spread(b) for b in blocks.values())

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
            f1 = _sub(b, "instance.f1") or {}
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
    methods = _methods(results)
    names = ("accuracy", "precision", "recall", "f1")
    rows = []
    spread = False
    for method, block in methods.items():
        inst = _sub(block, "instance")
        if not isinstance(inst, Mapping) or not all(
            isinstance(inst.get(n), Mapping) for n in names
        ):
            continue
        spread = spread or any(_has_spread(inst[n]) for n in names)
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
        lines.append(f"- {name}: `train.threshold: {rule}`, {THRESHOLD_RULE_TEXT.get(rule, rule)}")
    order, _ = _order(schema)
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
            vals.append(_DASH if _missing(v) else f"{float(v):.3f}")
        lines.append(f"| {a} | {schema.group_of(i)} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------- figures
def _array(x: Any, name: str, ndim: int = 2) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {a.shape}")
    return a


def _order(schema: AttributeSchema) -> tuple[list[int], list[tuple[str, int, int]]]:
    """Attribute order by group and the (group, start, stop) spans in that order."""
    order: list[int] = []
    spans = []
    for g, idx in schema.groups:
        start = len(order)
        order.extend(i for i in idx if i not in order)
        if len(order) > start:
            spans.append((g, start, len(order)))
    return order, spans


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def _group_axis(ax, schema: AttributeSchema, order, spans, *, axis: str = "x") -> None:
    labels = [schema.names[i] for i in order]
    if axis in ("x", "both"):
        ax.set_xticks(range(len(order)), labels, rotation=90, fontsize=7)
        for _, start, _stop in spans[1:]:
            ax.axvline(start - 0.5, color="k", lw=0.8)
        sec = ax.secondary_xaxis("top")
        sec.set_xticks([(a + b - 1) / 2 for _, a, b in spans], [g for g, _, _ in spans])
        sec.tick_params(length=0, labelsize=8)
    if axis in ("y", "both"):
        ax.set_yticks(range(len(order)), labels, fontsize=7)
        for _, start, _stop in spans[1:]:
            ax.axhline(start - 0.5, color="k", lw=0.8)


def _plot_per_attribute(path: Path, methods, schema, paper, key: str | None) -> bool:
    series = {}
    for name, block in methods.items():
        b = block.get(key) if key else block
        if isinstance(b, Mapping) and isinstance(b.get("per_attribute"), Mapping):
            series[name] = b
    if not series:
        return False
    order, spans = _order(schema)
    m = len(order)
    fig = _figure(max(6.0, 0.32 * m + 2), 4.2)
    ax = fig.add_subplot()
    width = 0.8 / len(series)
    colors = [f"C{i}" for i in range(len(series))]
    lowest = 1.0
    for k, (name, b) in enumerate(series.items()):
        vals = np.array(
            [
                np.nan
                if b["per_attribute"].get(schema.names[i]) is None
                else b["per_attribute"][schema.names[i]]
                for i in order
            ],
            dtype=np.float64,
        )
        if np.isfinite(vals).any():
            lowest = min(lowest, float(np.nanmin(vals)))
        x = np.arange(m) - 0.4 + width * (k + 0.5)
        ax.bar(x, np.nan_to_num(vals), width=width, color=colors[k], label=name)
        ref = (paper or {}).get(name)
        if ref:  # the paper only reports group means: draw them as reference segments
            for g, a, z in spans:
                v = ref["groups"].get(g)
                if v is not None:
                    lowest = min(lowest, v)
                    ax.hlines(v, a - 0.45, z - 0.55, colors=colors[k], linestyles="--", lw=1.5)
    if paper and any(n in paper for n in series):
        ax.plot([], [], "k--", label="paper (group mean)")
    _group_axis(ax, schema, order, spans)
    ax.set_xlim(-0.6, m - 0.4)
    ax.set_ylim(max(0.0, lowest - 0.05), 1.0)
    ax.set_ylabel(key or next(iter(series.values())).get("metric", "score"))
    fig.legend(fontsize=7, loc="outside right upper")
    fig.savefig(path)
    return True


def latent_rows_in_use(S: Any) -> np.ndarray:
    """Indices of the rows of S (K, M) that are not all zero: the latent tasks some attribute
    uses (the group penalties of eq. 2 zero whole rows)."""
    S = np.abs(_array(S, "S"))
    return np.flatnonzero(S.max(axis=1) > 0) if S.size else np.arange(0)


def _plot_S(path: Path, S: Any, schema: AttributeSchema) -> None:
    """|S| (K, M), columns ordered by group, rows cropped to the latent tasks in use."""
    S = np.abs(_array(S, "S"))
    if S.shape[1] != schema.num_attributes:
        raise ValueError(f"S must be (K, {schema.num_attributes}), got {S.shape}")
    order, spans = _order(schema)
    k_total, m = S.shape
    rows = latent_rows_in_use(S)
    if rows.size == 0:  # all zero: show it as it is
        rows = np.arange(k_total)
    S = S[rows]
    k = S.shape[0]
    fig = _figure(max(6.0, 0.3 * m + 2), min(10.0, max(3.5, 0.06 * k + 2)))
    ax = fig.add_subplot()
    im = ax.imshow(S[:, order], aspect="auto", interpolation="nearest", cmap="viridis")
    _group_axis(ax, schema, order, spans)
    if k <= 40:
        ax.set_yticks(range(k), [str(r) for r in rows], fontsize=7)
    label = "latent task k" if k == k_total else f"latent task k ({k} of K = {k_total} in use)"
    ax.set_ylabel(label if k != k_total else f"latent task k (K = {k_total})")
    fig.colorbar(im, ax=ax, label="|S[k, m]|")
    fig.savefig(path)


def _plot_sharing(path: Path, W: Any, schema: AttributeSchema) -> None:
    W = _array(W, "W")
    if W.shape[1] != schema.num_attributes:
        raise ValueError(f"W must be (D, {schema.num_attributes}), got {W.shape}")
    norms = np.linalg.norm(W, axis=0)
    Wn = W / np.where(norms > 0, norms, 1.0)
    C = Wn.T @ Wn
    order, spans = _order(schema)
    m = len(order)
    size = max(5.0, 0.28 * m + 2)
    fig = _figure(size + 1, size)
    ax = fig.add_subplot()
    im = ax.imshow(C[np.ix_(order, order)], vmin=-1, vmax=1, cmap="RdBu_r", interpolation="nearest")
    _group_axis(ax, schema, order, spans, axis="both")
    fig.colorbar(im, ax=ax, label="cos(w_a, w_b)")
    fig.savefig(path)


def _plot_history(path: Path, history: Any) -> None:
    if isinstance(history, Mapping):
        curves = {str(k): np.asarray(v, dtype=np.float64).ravel() for k, v in history.items()}
    elif len(history) and isinstance(history[0], Mapping):
        curves = {"objective": np.asarray([h["objective"] for h in history], dtype=np.float64)}
    else:
        curves = {"objective": np.asarray(history, dtype=np.float64).ravel()}
    fig = _figure(6.0, 3.8)
    ax = fig.add_subplot()
    positive = True
    for name, y in curves.items():
        ax.plot(np.arange(1, y.size + 1), y, marker="o" if y.size < 40 else None, ms=3, label=name)
        positive = positive and bool(np.all(y[np.isfinite(y)] > 0))
    finite = np.concatenate([y[np.isfinite(y)] for y in curves.values()])
    if positive and finite.size and finite.max() > 20 * finite.min():
        ax.set_yscale("log")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("iteration")
    ax.set_ylabel("objective (eq. 2)")
    if len(curves) > 1:
        ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.savefig(path)


# --------------------------------------------------------------------------------------- report
#: one sentence under every figure (report.md and report.html): how to read it
HOW_TO: dict[str, str] = {
    "per_attribute": (
        "How to read it: one bar per attribute and method (test accuracy, attributes ordered by "
        "group); higher is better, but read it with the mA column, since an attribute where one "
        "answer is rare scores high by always giving the common one."
    ),
    "S": (
        "How to read it: a column is an attribute, a row a latent task some attribute uses "
        "(all-zero rows dropped); a bright cell means that attribute's classifier is built from "
        "that latent task, so attributes bright in the same rows share features."
    ),
    "sharing": (
        "How to read it: cell (a, b) is the cosine between two attributes' classifiers: red "
        "(+1) means they are predicted from the same feature direction, blue (−1) from opposite "
        "ones, white means unrelated; blocks on the diagonal are sharing within a group."
    ),
    "objective": (
        "How to read it: the objective of eq. 2 over the solver's outer iterations, one solver "
        "call after the other; it falls within a call and jumps up where a new call starts on "
        "new features (after an SGD round), which is not divergence."
    ),
    "training": (
        "How to read it: against the step of the training plan, the SGD loss (should fall), "
        "the validation accuracy (should rise, then flatten) and the solver objective per call."
    ),
    "pr": (
        "How to read it: one curve per attribute as its decision threshold sweeps from strict "
        "to lenient; the closer to the top-right corner the better, a flat line at the "
        "attribute's positive rate is chance, and AP is the area under the curve."
    ),
    "examples": (
        "How to read it: each card is a test photo with the group's attributes that are "
        "predicted or truly present; red lines are mistakes, grey lines (?) have no true label "
        "(unknown: neither right nor wrong), p is the calibrated probability "
        "and the decision is p >= the attribute's threshold."
    ),
}


def _per_attribute_md(methods: Mapping[str, Any], schema: AttributeSchema, key: str | None) -> str:
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
    balanced = {n: ((_balanced(methods[n]) or {}).get("per_attribute") or {}) for n in names}
    with_ma = key is None and any(balanced.values())
    order, _ = _order(schema)
    head = [f"{n} acc | {n} mA" if with_ma else n for n in names]
    lines = [
        "| attribute | group | " + " | ".join(head) + " |",
        "|---|---|" + "---:|" * (len(names) * (2 if with_ma else 1)),
    ]
    for i in order:
        a = schema.names[i]
        vals = []
        for n in names:
            vals.append(
                _pct(((methods[n].get(key) if key else methods[n])["per_attribute"]).get(a))
            )
            if with_ma:
                v = balanced[n].get(a)
                chance = not _missing(v) and abs(float(v) - 0.5) <= CHANCE_BAND + 1e-12
                vals.append(_pct(v) + (" (chance)" if chance else ""))
        lines.append(f"| {a} | {schema.group_of(i)} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


PAPER_ORDER = ("S-CNN", "M-CNN", "MG-CNN")  # the paper's claim: each step adds accuracy


def ordering_summary(methods: Mapping[str, Any]) -> str | None:
    """One paragraph: does the paper's ordering S-CNN < M-CNN < MG-CNN hold on these totals?

    States the totals with their fold spread, per step how many folds agree, and the best
    method. None when a method of the ordering is missing.
    """
    blocks = [methods.get(name) for name in PAPER_ORDER]
    if not all(isinstance(b, Mapping) and "total" in b for b in blocks):
        return None

    def fmt(name: str, block: Mapping[str, Any]) -> str:
        std = (block.get("std") or {}).get("total")
        spread = f" ± {100 * std:.2f}" if not _missing(std) else ""
        return f"{name} {100 * block['total']:.2f}{spread}"

    holds = all(a["total"] < b["total"] for a, b in zip(blocks, blocks[1:]))
    steps = [
        f"{pair} in {v['folds']} of {v['of']} fold{'s' if v['of'] > 1 else ''}"
        for pair, v in (ordering_folds(methods) or {}).items()
    ]
    verdict = "holds" if holds else "does **not** hold"
    text = (
        f"The paper's ordering S-CNN < M-CNN < MG-CNN {verdict} here: "
        + ", ".join(fmt(n, b) for n, b in zip(PAPER_ORDER, blocks))
        + (" (mean ± std over folds)" if any(_has_spread(b) for b in blocks) else "")
        + (f"; {'; '.join(steps)}." if steps else ".")
    )
    totals = {n: b["total"] for n, b in methods.items() if isinstance(b, Mapping) and "total" in b}
    best = max(totals, key=totals.get)
    if best not in PAPER_ORDER:
        text += f" The best method is {best} ({100 * totals[best]:.2f})."
    return text


def paper_comparison(methods: Mapping[str, Any], paper: Mapping[str, Any]) -> list[str]:
    """One line per method that the paper reports too: where ours is at or above the paper's
    figure and where it is **below**, total and groups, in percentage points.

    ``methods`` and ``paper`` map a method name to a block with ``total`` and ``groups``
    (fractions, as in ``results.json``). Methods missing from either side are skipped.
    """
    lines = []
    for name, ours in methods.items():
        ref = paper.get(name)
        if not (isinstance(ours, Mapping) and "total" in ours and isinstance(ref, Mapping)):
            continue
        pairs = [("total", ours["total"], ref["total"])] + [
            (group, (ours.get("groups") or {}).get(group), value)
            for group, value in ref["groups"].items()
        ]
        above, below = [], []
        for label, mine, theirs in pairs:
            if _missing(mine):
                continue
            gap = 100 * (float(mine) - float(theirs))
            (above if gap >= 0 else below).append(f"{label} {gap:+.2f}")
        if not below and above:  # above[0]: the total (listed first)
            lines.append(f"- {name}: at or above the paper on every figure ({above[0]}).")
        elif below:
            rest = f"; at or above it on {', '.join(above)}" if above else ""
            lines.append(f"- {name}: **below** the paper on {', '.join(below)}{rest}.")
    return lines


def write_report(
    out_dir: str | Path,
    results: Mapping[str, Any],
    *,
    schema: AttributeSchema | Mapping[str, Any],
    S: Any = None,
    W: Any = None,
    history: Any = None,
    paper: Mapping[str, Any] | str | None = "auto",
    title: str = "apcnn results",
) -> Path:
    """Write ``out_dir/report.md`` and its PNG figures; returns the report path.

    Args:
        out_dir: folder (created).
        results: ``results.json`` dict (or its ``methods`` mapping).
        schema: the attribute schema (or its ``to_dict()``).
        S: (K, M) combination matrix -> ``S_abs.png``, |S| with columns ordered by group.
        W: (D, M) last-layer weights (``L @ S``) -> ``attribute_sharing.png``, the cosine
            similarity of W's columns.
        history: objective values (list, or ``{name: list}``, or list of dicts with
            ``"objective"``) -> ``objective.png``.
        paper: reference numbers; ``"auto"``: :data:`PAPER_TABLE_III` when the schema has the
            paper's Clothing groups, else none.

    Figures always written: ``per_attribute.png`` (bars per attribute and method; the paper's
    group means as dashed segments, it has no per-attribute numbers).
    """
    if not isinstance(schema, AttributeSchema):
        schema = AttributeSchema.from_dict(schema)
    if isinstance(paper, str):
        if paper != "auto":
            raise ValueError(f"paper must be a dict, None or 'auto', got {paper!r}")
        paper = paper_for_schema(schema)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    methods = _methods(results)
    headline = next((b.get("metric") for b in methods.values() if isinstance(b, Mapping)), None)
    ref = paper if headline in (None, "accuracy") else None

    md = [f"# {title}", ""]
    protocol = results.get("protocol") if "methods" in results else None
    if protocol:
        md += ["## Protocol", ""]
        md += [
            f"- **{k}**: {json.dumps(v) if not isinstance(v, str) else v}"
            for k, v in protocol.items()
        ]
        md.append("")
    md += ["## Results", "", "```", format_table(methods, ref, flags=False), "```", ""]
    if any(_balanced(b) for b in methods.values()):
        md += [MA_LEGEND + ".", ""]
    if any(isinstance(_sub(b, "instance.f1"), Mapping) for b in methods.values()):
        md += [INSTANCE_LEGEND + ".", ""]
    flagged = chance_lines(methods)
    if flagged:
        md += [
            "**Attributes at chance** (their balanced accuracy is within "
            f"{100 * CHANCE_BAND:.0f} points of 50 %: the model does no better than always "
            "answering the majority class, whatever its accuracy):",
            "",
        ]
        for name, attrs in at_chance(methods).items():
            n = len((_balanced(methods[name]) or {}).get("per_attribute") or {})
            md.append(f"- {name} ({len(attrs)} of {n}): " + ", ".join(a for a, _ in attrs))
        md.append("")
    if ref:
        md += ["Paper numbers (in parentheses): Abdulnabi et al. 2015, Table III.", ""]
        comparison = paper_comparison(methods, ref)
        if comparison:
            md += ["Against the paper (percentage points, ours minus the paper's):", ""]
            md += comparison + [""]
    summary = ordering_summary(methods)
    if summary:
        md += [summary, ""]
    for key, label in (
        ("balanced_accuracy", "mA (mean balanced accuracy)"),
        ("average_precision", "Average precision"),
    ):
        if any(
            isinstance(b, Mapping) and isinstance(b.get(key), Mapping) for b in methods.values()
        ):
            md += [f"### {label}", "", "```", format_table(methods, key=key), "```", ""]
    inst = instance_table(methods)
    if inst:
        md += [
            "### Instance-based metrics",
            "",
            "```",
            inst,
            "",
            format_table(methods, key="instance.f1"),
            "```",
            "",
            GROUP_INSTANCE_NOTE + ".",
            "",
        ]
    thresholds = thresholds_md(methods, schema)
    if thresholds:
        md += ["### Decision thresholds (decide p >= t)", "", thresholds, ""]
    mc_rows = [
        (n, b["multiclass"])
        for n, b in methods.items()
        if isinstance(b, Mapping) and b.get("multiclass")
    ]
    if mc_rows:
        attrs = list(mc_rows[0][1])
        md += [
            "### Multi-class accuracy (%)",
            "",
            "| method | " + " | ".join(attrs) + " |",
            "|---|" + "---:|" * len(attrs),
        ]
        md += [f"| {n} | " + " | ".join(_pct(v.get(a)) for a in attrs) + " |" for n, v in mc_rows]
        md.append("")
    md += label_budget_section(out, results)  # with a label_budget block (reproduce)

    md += ["## Figures", ""]
    if _plot_per_attribute(out / "per_attribute.png", methods, schema, ref, None):
        md += ["![per-attribute scores](per_attribute.png)", "", f"*{HOW_TO['per_attribute']}*", ""]
    if S is not None:
        _plot_S(out / "S_abs.png", S, schema)
        md += [
            "Combination matrix |S| (latent tasks in use x attributes, columns by group):",
            "",
            "![|S|](S_abs.png)",
            "",
            f"*{HOW_TO['S']}*",
            "",
        ]
    if W is not None:
        _plot_sharing(out / "attribute_sharing.png", W, schema)
        md += [
            "Attribute sharing: cosine similarity of the columns of W = L S:",
            "",
            "![attribute sharing](attribute_sharing.png)",
            "",
            f"*{HOW_TO['sharing']}*",
            "",
        ]
    if history is not None and len(history):
        _plot_history(out / "objective.png", history)
        md += ["![objective history](objective.png)", "", f"*{HOW_TO['objective']}*", ""]
    table = _per_attribute_md(methods, schema, None)
    if table:
        md += ["## Per-attribute scores (%)", "", table, ""]
    if "seconds" in results:
        md += [f"Wall time: {float(results['seconds']):.1f} s", ""]

    from apcnn.runlog import atomic_write_bytes

    path = out / "report.md"
    atomic_write_bytes(path, "\n".join(md).encode("utf-8"))
    return path


# ------------------------------------------------------------------ fold ordering, label budgets
def ordering_folds(methods: Mapping[str, Any]) -> dict[str, Any] | None:
    """Per step of the paper's ordering (:data:`PAPER_ORDER`), in how many folds the later method
    beats the earlier one: ``{"M-CNN > S-CNN": {"folds": wins, "of": n, "gain": [b - a per
    fold]}, "MG-CNN > M-CNN": {...}}`` from the methods' per-fold totals (``folds``; a strict
    ``>``, so a tie is no win). None when a method of the ordering or its folds are missing."""
    blocks = [methods.get(name) for name in PAPER_ORDER]
    if not all(isinstance(b, Mapping) and b.get("folds") for b in blocks):
        return None
    out: dict[str, Any] = {}
    for (na, a), (nb, b) in zip(zip(PAPER_ORDER, blocks), zip(PAPER_ORDER[1:], blocks[1:])):
        fa, fb = list(a["folds"]), list(b["folds"])
        if len(fa) != len(fb) or any(_missing(x) for x in fa + fb):
            return None
        out[f"{nb} > {na}"] = {
            "folds": sum(y > x for x, y in zip(fa, fb)),
            "of": len(fa),
            "gain": [float(y) - float(x) for x, y in zip(fa, fb)],
        }
    return out


#: the label-budget figures: (key of the series in the block, axis label)
BUDGET_METRICS = (("accuracy", "accuracy (%)"), ("balanced_accuracy", "mA (%)"))


def label_budget_md(budget: Mapping[str, Any]) -> str:
    """Markdown table of a ``results.json`` ``label_budget`` block: one row per method and
    metric (accuracy, mA), one column per label fraction, ``mean ± std`` over folds in %."""
    fractions = list(budget["fractions"])
    head = "| method | metric | " + " | ".join(f"{100 * f:g} %" for f in fractions) + " |"
    lines = [head, "|---|---|" + "---:|" * len(fractions)]
    for name, series in budget["methods"].items():
        for key, label in BUDGET_METRICS:
            s = series.get(key)
            if not s:
                continue
            cells = [
                _pct(m) + ("" if _missing(sd) else f" ± {100 * sd:.2f}")
                for m, sd in zip(s["mean"], s["std"])
            ]
            lines.append(f"| {name} | {label.split(' ')[0]} | " + " | ".join(cells) + " |")
    kept = (budget.get("labels_kept") or {}).get("train")
    if kept and not all(k is None for k in kept):
        cells = ["-" if k is None else f"{k:.0f}" for k in kept]
        lines.append("| training labels kept | (mean over folds) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_label_budget(
    path: str | Path,
    budget: Mapping[str, Any],
    methods: Sequence[str] = ("S-CNN", "M-CNN", "MG-CNN"),
) -> bool:
    """Accuracy and mA against the label fraction (log x axis), one line per method of
    ``methods`` present in the ``label_budget`` block, its mean over folds with a band of
    ± one std (none with one fold). Writes ``path`` (PNG); False when no method is present."""
    shown = [m for m in methods if m in budget.get("methods", {})]
    if not shown:
        return False
    x = np.asarray(budget["fractions"], dtype=np.float64)
    fig = _figure(9.0, 3.6)
    axes = fig.subplots(1, len(BUDGET_METRICS))
    for ax, (key, label) in zip(axes, BUDGET_METRICS):
        for k, name in enumerate(shown):
            s = budget["methods"][name][key]
            mean = np.array([np.nan if _missing(v) else 100 * v for v in s["mean"]])
            std = np.array([np.nan if _missing(v) else 100 * v for v in s["std"]])
            ax.plot(x, mean, "o-", color=f"C{k}", label=name, lw=1.5, ms=4)
            if np.isfinite(std).any():
                ax.fill_between(x, mean - std, mean + std, color=f"C{k}", alpha=0.2, lw=0)
        ax.set_xscale("log")
        ax.set_xticks(x, [f"{100 * f:g}" for f in x])
        ax.minorticks_off()
        ax.set_xlabel("share of the training labels (%)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.savefig(path)
    return True


def label_budget_section(out: Path, results: Mapping[str, Any]) -> list[str]:
    """The report's label-budget lines (table and ``label_budget.png``); [] without a
    ``label_budget`` block in ``results``."""
    budget = results.get("label_budget") if isinstance(results, Mapping) else None
    if not isinstance(budget, Mapping):
        return []
    md = [
        "## Label budgets",
        "",
        "Each attribute's training labels (train and validation splits) cut to a stratified "
        "share, the rest treated as missing; the same labels for every method, test labels "
        "untouched. Mean ± std over folds (%):",
        "",
        label_budget_md(budget),
        "",
    ]
    if plot_label_budget(Path(out) / "label_budget.png", budget):
        md += [
            "![label budget](label_budget.png)",
            "",
            "*How to read it: test accuracy (left) and mA (right) against the share of training "
            "labels kept (log scale), mean over folds with a band of ± one std; where sharing "
            "helps, M-CNN and MG-CNN stay above S-CNN as labels get scarce.*",
            "",
        ]
    return md
