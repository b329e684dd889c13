"""A self-contained HTML report of a training run: ``apcnn report RUN_DIR``.

:func:`write_html_report` reads a run folder written by :func:`apcnn.engine.train`::

    RUN_DIR/metrics.json          results per method (apcnn.metrics.method_block)
    RUN_DIR/metrics.jsonl         one line per plan step (SGD epochs, solver calls)
    RUN_DIR/config.yaml           the resolved configuration
    RUN_DIR/checkpoints/<method>  predictor checkpoints: head.L (D, K), head.S (K, M), schema
    RUN_DIR/checkpoints/state     (optional) the solver objective histories

and writes ``RUN_DIR/report.html``: one HTML file with inline CSS and every figure embedded as a
``data:image/png;base64`` URI (no external resource, no JavaScript), plus the Markdown report
``RUN_DIR/report.md`` (:func:`apcnn.reports.write_report`). Sections (tables in
:mod:`apcnn.html_tables`, figures in :mod:`apcnn.html_figures`, examples in
:mod:`apcnn.html_examples`):

- results table (methods x groups + total, mA (the mean balanced accuracy) and inst-F1 (the
  instance F1); the paper's Table III numbers in parentheses when the schema has the Clothing
  groups), the attributes at chance (balanced accuracy within 2 points of 50 %), mA, average
  precision and instance-based (accuracy, precision, recall, F1) tables;
- examples: thumbnails of test photos per group (``data:image/jpeg`` URIs), the most confident
  right and most confident wrong, with predicted and true attributes (:func:`pick_examples`);
- per attribute: the decision threshold (the rule ``train.threshold`` that chose it, and the
  trained boundary σ(c_m) beside it when the rule moved it) and the confusion counts of
  ``p >= threshold``;
- label counts per split (positive / negative / missing);
- per-attribute bars (the paper's group means as dashed segments where it applies);
- per method: |S| (latent tasks in use x M, columns ordered by group) and the attribute-sharing
  matrix cos(w_a, w_b) of the columns of W = L S;
- precision-recall curves per attribute on the test split;
- training curves from metrics.jsonl (SGD loss, validation accuracy, solver objective per call)
  and the solver's objective history, solver calls marked;
- per-attribute table and the configuration.

Every figure has a one-sentence "how to read it" below it (:data:`apcnn.report_plots.HOW_TO`). The
checkpoints are re-run on the test split once (examples, decisions, PR curves); that part is
skipped with a note when the dataset is not available or ``pr_curves=False``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .html_examples import _example_card, examples_section, pick_examples
from .html_figures import (
    img,
    plot_to_png,
    pr_curves_png,
    solver_history_png,
    training_curves_png,
)
from .html_tables import (
    decisions_table,
    esc,
    instance_metrics_table,
    label_counts,
    label_counts_table,
    pct,
    per_attribute_table,
    results_table,
)
from .report_data import load_run, score_run, test_split_scores
from .report_plots import HOW_TO, latent_rows_in_use, plot_S, plot_sharing
from .report_tables import (
    GROUP_INSTANCE_NOTE,
    INSTANCE_LEGEND,
    MA_LEGEND,
    chance_lines,
    paper_for_schema,
    sub_block,
)
from .reports import write_report

__all__ = [
    "write_html_report",
    "load_run",
    "test_split_scores",
    # re-exported from html_examples and html_tables for the existing imports
    "label_counts",
    "pick_examples",
    "_example_card",
]

log = logging.getLogger(__name__)


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;
max-width:1200px;padding:0 16px;color:#222;line-height:1.45}
h1{font-size:1.6em;margin-bottom:4px}h2{border-bottom:1px solid #ddd;padding-bottom:4px;
margin-top:32px}h3{margin-bottom:6px}
table{border-collapse:collapse;margin:8px 0 16px;font-size:0.92em}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}
th:first-child,td:first-child{text-align:left}
thead th{background:#f3f3f3}tr:nth-child(even) td{background:#fafafa}
.paper{color:#888;font-size:0.85em}
figure{margin:10px 0 22px}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:0.88em;color:#555}
.note{background:#fff8e1;border-left:4px solid #f0c000;padding:6px 10px;font-size:0.9em}
pre{background:#f6f6f6;padding:8px;overflow-x:auto;font-size:0.85em}
.meta{color:#666;font-size:0.9em}
.how{font-size:0.86em;color:#444;margin:-14px 0 22px;max-width:900px}
.chance{color:#b00020;font-weight:600}
.examples{display:flex;flex-wrap:wrap;gap:8px;margin:6px 0 14px}
.ex{width:168px;border:2px solid #2e7d32;border-radius:4px;padding:4px;font-size:0.74em;
line-height:1.3;background:#fff}
.ex.wrong{border-color:#c62828}
.ex img{width:160px;height:160px;object-fit:contain;background:#f4f4f4;display:block}
.ex .id{color:#666;word-break:break-all}.ex .err{color:#c62828;font-weight:600}
.ex .unk{color:#777;font-style:italic}
"""


def _shown_arrays(scored: Mapping[str, Any], method: str) -> tuple[Any, Any, Any, Any]:
    """(probabilities, thresholds, targets, mask) of ``method`` on the re-scored split."""
    return (
        scored["probs"][method],
        scored["thresholds"][method],
        scored["targets"],
        scored["mask"],
    )


def _shown_method(scores: Mapping[str, Any]) -> str | None:
    """The method whose examples and decisions the report shows: MG-CNN, else the last."""
    if not scores:
        return None
    return "MG-CNN" if "MG-CNN" in scores else list(scores)[-1]


def _why_not(data: Mapping[str, Any], pr_curves: bool, error: str | None) -> str:
    if not data["checkpoints"]:
        return "the run has no predictor checkpoints"
    if error:
        return error
    if not pr_curves:
        return "the checkpoints were not re-run on the data (pr_curves=False / --no-pr)"
    return "no data"


def write_html_report(
    run_dir: str | Path,
    *,
    pr_curves: bool = True,
    split: str = "test",
    root: str | None = None,
    device: str = "cpu",
    markdown: bool = True,
    title: str | None = None,
) -> Path:
    """Write ``RUN_DIR/report.html`` (self-contained) and ``RUN_DIR/report.md``; returns the
    HTML path. See the module docstring for the sections.

    Args:
        run_dir: a finished run folder (``metrics.json`` present).
        pr_curves: re-run the checkpoints on ``split`` for precision-recall curves.
        split: ``"test"`` (default), ``"val"`` or ``"train"``.
        root: dataset folder overriding the run's ``data.root`` (for the PR curves).
        device: where the checkpoints run for the PR curves.
        markdown: also (re)write ``report.md`` and its PNGs with :func:`apcnn.reports.write_report`.
    """
    from . import __version__

    run = Path(run_dir)
    data = load_run(run)
    results, schema = data["results"], data["schema"]
    methods = results.get("methods", results)
    headline = next((b.get("metric") for b in methods.values() if isinstance(b, Mapping)), None)
    paper = paper_for_schema(schema) if headline in (None, "accuracy") else None
    last = list(data["S"])[-1] if data["S"] else None
    history = data["histories"].get(last) if last else None

    if markdown:
        write_report(
            run,
            results,
            schema=schema,
            S=data["S"][last] if last else None,
            W=data["W"][last] if last else None,
            history=history or None,
        )

    title = title or f"apcnn report: {run.resolve().name}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
    ]
    proto = results.get("protocol") or {}
    info = ", ".join(f"{esc(k)}: {esc(v)}" for k, v in proto.items())
    if "seconds" in results:
        info += f"{', ' if info else ''}wall time: {float(results['seconds']):.1f} s"
    parts.append(
        f'<p class="meta">{info}{"; " if info else ""}apcnn {esc(__version__)}; '
        f"{schema.num_attributes} attributes in {len(schema.groups)} groups</p>"
    )

    # ---------------------------------------------------------------- the data, scored once
    # the test split (for examples, decisions and PR curves) and every split's labels
    scored: dict[str, Any] = {}
    splits: dict[str, Any] = {}
    data_error = None
    if data["checkpoints"]:
        try:
            scored, splits = score_run(data["checkpoints"], split, root, device, pr_curves)
        except Exception as e:  # noqa: BLE001 - the report still has everything else
            log.warning("the %s split could not be scored: %s", split, e)
            data_error = f"could not score the {split} split ({type(e).__name__}: {e})"

    # ---------------------------------------------------------------- results
    parts.append("<h2>Results</h2>")
    metric = headline or "score"
    with_ma = any(isinstance(b, Mapping) and b.get("balanced_accuracy") for b in methods.values())
    with_if1 = any(isinstance(sub_block(b, "instance.f1"), Mapping) for b in methods.values())
    head_label = f"{metric}{' and mA' if with_ma else ''} (%)"
    if with_ma and with_if1:
        head_label = f"{metric}, mA and instance F1 (%)"
    parts.append(f"<h3>{esc(head_label)}</h3>" + results_table(methods, paper))
    if with_ma:
        parts.append(f'<p class="meta">{esc(MA_LEGEND)}.</p>')
    if paper:
        parts.append(
            '<p class="paper">Paper numbers in parentheses: Abdulnabi et al. 2015, '
            "Table III (Clothing Attribute Dataset).</p>"
        )
    for line in chance_lines(methods):
        parts.append(
            f'<p class="note"><span class="chance">{esc(line)}</span>: no better than always '
            "answering the most common label, whatever the accuracy says.</p>"
        )
    if any(isinstance(sub_block(b, "instance.f1"), Mapping) for b in methods.values()):
        parts.append(f'<p class="meta">{esc(INSTANCE_LEGEND)}.</p>')
    for key, label in (
        ("balanced_accuracy", "mA: mean balanced accuracy (%)"),
        ("average_precision", "Average precision (%)"),
    ):
        table = results_table(methods, None, key)
        if table:
            parts.append(f"<h3>{esc(label)}</h3>{table}")
    table = instance_metrics_table(methods)
    if table:
        parts.append(
            "<h3>Instance-based metrics (%)</h3><p>Per image over its labelled attributes, "
            "then averaged over images; F1 from the averaged precision and recall.</p>"
            + table
            + "<h3>Instance F1 per group (%)</h3>"
            + results_table(methods, None, "instance.f1")
            + f'<p class="meta">{esc(GROUP_INSTANCE_NOTE)}.</p>'
        )
    mc = [
        (n, b["multiclass"])
        for n, b in methods.items()
        if isinstance(b, Mapping) and b.get("multiclass")
    ]
    if mc:
        attrs = list(mc[0][1])
        head = "".join(f"<th>{esc(a)}</th>" for a in attrs)
        body = "".join(
            f"<tr><td>{esc(n)}</td>" + "".join(f"<td>{pct(v.get(a))}</td>" for a in attrs) + "</tr>"
            for n, v in mc
        )
        parts.append(
            "<h3>Multi-class accuracy (%)</h3>"
            f"<table><thead><tr><th>method</th>{head}</tr></thead><tbody>{body}"
            "</tbody></table>"
        )

    # ---------------------------------------------------------------- examples, decisions
    shown = _shown_method(scored.get("scores", {}))
    # why the sections that need the re-scored test split are missing, when they are
    not_scored = f'<p class="note">Skipped: {esc(_why_not(data, pr_curves, data_error))}.</p>'
    parts.append("<h2>Examples</h2>")
    if shown is None:
        parts.append(not_scored)
    else:
        parts.append(
            examples_section(scored["dataset"], shown, *_shown_arrays(scored, shown), schema)
        )
    parts.append("<h2>Decisions per attribute: thresholds and confusion counts</h2>")
    if shown is None:
        parts.append(not_scored)
    else:
        parts.append(
            decisions_table(
                shown,
                *_shown_arrays(scored, shown),
                schema,
                rule=(scored.get("rules") or {}).get(shown),
                boundary=(scored.get("boundaries") or {}).get(shown),
            )
        )
    parts.append("<h2>Labels per split</h2>")
    if splits:
        parts.append(label_counts_table(splits, schema))
    else:
        parts.append(f'<p class="note">Skipped: {esc(_why_not(data, True, data_error))}.</p>')

    # ---------------------------------------------------------------- per attribute
    per_png = run / "per_attribute.png"
    if markdown and per_png.is_file():
        parts.append("<h2>Per-attribute scores</h2>")
        caption = "Per-attribute accuracy by method, attributes ordered by group"
        if paper:
            caption += "; dashed: the paper's group means (it reports no per-attribute numbers)"
        parts.append(
            img(per_png.read_bytes(), "per-attribute scores", caption, HOW_TO["per_attribute"])
        )

    # ---------------------------------------------------------------- S and W
    if data["S"]:
        parts.append("<h2>Multi-task layer</h2>")
        parts.append(
            "<p>|S| (latent tasks in use × attributes, columns ordered by group) and the "
            "attribute-sharing matrix: cosine similarity of the columns of W = L S.</p>"
        )
        for method in data["S"]:
            S = data["S"][method]
            used = latent_rows_in_use(S).size
            parts.append(f"<h3>{esc(method)}</h3>")
            parts.append(
                img(
                    plot_to_png(plot_S, S, schema),
                    f"|S| of {method}",
                    f"{method}: |S|, {used} of K = {S.shape[0]} latent tasks in use "
                    f"(rows not all zero), {S.shape[1]} attributes",
                    HOW_TO["S"],
                )
            )
            parts.append(
                img(
                    plot_to_png(plot_sharing, data["W"][method], schema),
                    f"attribute sharing of {method}",
                    f"{method}: cos(w_a, w_b) of W's columns",
                    HOW_TO["sharing"],
                )
            )

    # ---------------------------------------------------------------- PR curves
    parts.append("<h2>Precision–recall curves</h2>")
    if not pr_curves:
        parts.append('<p class="note">Skipped (pr_curves=False / --no-pr).</p>')
    elif not scored:
        parts.append(not_scored)
    else:
        parts.append(
            f"<p>On the {esc(split)} split ({scored['targets'].shape[0]} images), raw "
            "scores; missing labels excluded.</p>"
        )
        for method, sc in scored["scores"].items():
            parts.append(
                img(
                    pr_curves_png(sc, scored["targets"], scored["mask"], schema, method),
                    f"precision-recall curves of {method}",
                    f"{method}: precision–recall per attribute, one panel per group",
                    HOW_TO["pr"],
                )
            )

    # ---------------------------------------------------------------- training curves
    parts.append("<h2>Training</h2>")
    curves = training_curves_png(data["rows"])
    if curves:
        parts.append(
            img(
                curves,
                "training curves",
                "From metrics.jsonl: per SGD epoch and per solver call",
                HOW_TO["training"],
            )
        )
    calls = data["history_calls"].get(last) if last else None
    if history and calls:
        parts.append(
            img(
                solver_history_png(calls, last),
                "solver objective history",
                f"{last}: objective of eq. 2 over the solver's outer iterations; dashed lines: "
                "a new solver call",
                HOW_TO["objective"],
            )
        )
    if not curves and not history:
        parts.append('<p class="note">No training log (metrics.jsonl) in the run folder.</p>')

    table = per_attribute_table(methods, schema)
    if table:
        parts.append("<h2>Per-attribute table (%)</h2>" + table)
    if data["config_text"]:
        parts.append("<h2>Configuration</h2><pre>" + esc(data["config_text"]) + "</pre>")
    parts.append("</body></html>")

    from .runlog import atomic_write_bytes

    path = run / "report.html"
    atomic_write_bytes(path, "\n".join(parts).encode("utf-8"))
    return path
