"""The Markdown report of a results dict: :func:`write_report` writes ``OUT/report.md`` plus PNG
figures next to it.

Its parts live in their own modules, re-exported here for the existing imports:
:mod:`apcnn.report_tables` (results tables, legends, the paper's Table III),
:mod:`apcnn.report_plots` (the figures and their "how to read it" sentences) and
:mod:`apcnn.report_ordering` (the paper's ordering, the comparison with the paper, label
budgets).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from apcnn.data.schema import AttributeSchema

from .report_ordering import (
    BUDGET_METRICS,
    PAPER_ORDER,
    label_budget_md,
    label_budget_section,
    ordering_folds,
    ordering_summary,
    paper_comparison,
    plot_label_budget,
)
from .report_plots import (
    HOW_TO,
    latent_rows_in_use,
    plot_history,
    plot_per_attribute,
    plot_S,
    plot_sharing,
)
from .report_tables import (
    CHANCE_BAND,
    GROUP_INSTANCE_NOTE,
    INSTANCE_LEGEND,
    MA_LEGEND,
    METRIC_LABELS,
    PAPER_METHODS,
    PAPER_TABLE_III,
    THRESHOLD_RULE_TEXT,
    at_chance,
    balanced_block,
    chance_lines,
    format_table,
    instance_table,
    methods_of,
    paper_for_schema,
    pct,
    per_attribute_md,
    sub_block,
    thresholds_md,
)

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
    # re-exported from the report_* modules for the existing imports
    "BUDGET_METRICS",
    "GROUP_INSTANCE_NOTE",
    "HOW_TO",
    "INSTANCE_LEGEND",
    "MA_LEGEND",
    "METRIC_LABELS",
    "PAPER_ORDER",
    "THRESHOLD_RULE_TEXT",
    "chance_lines",
    "label_budget_md",
    "label_budget_section",
    "latent_rows_in_use",
    "ordering_folds",
    "ordering_summary",
    "plot_label_budget",
]

#: the old private name (tests draw |S| through it)
_plot_S = plot_S


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
    methods = methods_of(results)
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
    if any(balanced_block(b) for b in methods.values()):
        md += [MA_LEGEND + ".", ""]
    if any(isinstance(sub_block(b, "instance.f1"), Mapping) for b in methods.values()):
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
            n = len((balanced_block(methods[name]) or {}).get("per_attribute") or {})
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
        md += [f"| {n} | " + " | ".join(pct(v.get(a)) for a in attrs) + " |" for n, v in mc_rows]
        md.append("")
    md += label_budget_section(out, results)  # with a label_budget block (reproduce)

    md += ["## Figures", ""]
    if plot_per_attribute(out / "per_attribute.png", methods, schema, ref, None):
        md += ["![per-attribute scores](per_attribute.png)", "", f"*{HOW_TO['per_attribute']}*", ""]
    if S is not None:
        plot_S(out / "S_abs.png", S, schema)
        md += [
            "Combination matrix |S| (latent tasks in use x attributes, columns by group):",
            "",
            "![|S|](S_abs.png)",
            "",
            f"*{HOW_TO['S']}*",
            "",
        ]
    if W is not None:
        plot_sharing(out / "attribute_sharing.png", W, schema)
        md += [
            "Attribute sharing: cosine similarity of the columns of W = L S:",
            "",
            "![attribute sharing](attribute_sharing.png)",
            "",
            f"*{HOW_TO['sharing']}*",
            "",
        ]
    if history is not None and len(history):
        plot_history(out / "objective.png", history)
        md += ["![objective history](objective.png)", "", f"*{HOW_TO['objective']}*", ""]
    table = per_attribute_md(methods, schema, None)
    if table:
        md += ["## Per-attribute scores (%)", "", table, ""]
    if "seconds" in results:
        md += [f"Wall time: {float(results['seconds']):.1f} s", ""]

    from apcnn.runlog import atomic_write_bytes

    path = out / "report.md"
    atomic_write_bytes(path, "\n".join(md).encode("utf-8"))
    return path
