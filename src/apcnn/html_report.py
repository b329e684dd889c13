"""A self-contained HTML report of a training run: ``apcnn report RUN_DIR``.

:func:`write_html_report` reads a run folder written by :func:`apcnn.engine.train`::

    RUN_DIR/metrics.json          results per method (apcnn.metrics.method_block)
    RUN_DIR/metrics.jsonl         one line per plan step (SGD epochs, solver calls)
    RUN_DIR/config.yaml           the resolved configuration
    RUN_DIR/checkpoints/<method>  predictor checkpoints: head.L (D, K), head.S (K, M), schema
    RUN_DIR/checkpoints/state     (optional) the solver objective histories

and writes ``RUN_DIR/report.html``: one HTML file with inline CSS and every figure embedded as a
``data:image/png;base64`` URI (no external resource, no JavaScript), plus the Markdown report
``RUN_DIR/report.md`` (:func:`apcnn.reports.write_report`). Sections:

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

Every figure has a one-sentence "how to read it" below it (:data:`apcnn.reports.HOW_TO`). The
checkpoints are re-run on the test split once (examples, decisions, PR curves); that part is
skipped with a note when the dataset is not available or ``pr_curves=False``.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .report_data import load_run, method_key, score_run, test_split_scores

__all__ = ["write_html_report", "load_run", "test_split_scores"]

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


# ------------------------------------------------------------------------------------ figures
def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _plot_to_png(plot: Any, *args: Any) -> bytes:
    """Run one of apcnn.reports' ``_plot_*(path, ...)`` functions into PNG bytes."""
    buf = io.BytesIO()
    plot(buf, *args)
    return buf.getvalue()


def _training_curves(rows: Sequence[Mapping[str, Any]]) -> bytes | None:
    """SGD loss and validation accuracy per epoch, solver objective per call; x = plan step."""
    sgd = [r for r in rows if r.get("phase") == "sgd"]
    solve = [r for r in rows if r.get("phase") == "solve"]
    if not sgd and not solve:
        return None
    panels = [
        ("loss", "SGD loss (squared hinge)", sgd),
        ("val_accuracy", "validation accuracy", sgd),
        ("objective", "solver objective (eq. 2)", solve),
    ]
    panels = [p for p in panels if any(r.get(p[0]) is not None for r in p[2])]
    fig = _figure(4.2 * len(panels), 3.4)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    methods = sorted({str(r.get("method")) for r in rows if r.get("method")}, key=method_key)
    colours = {m: f"C{i}" for i, m in enumerate(methods)}
    for ax, (key, label, data) in zip(axes, panels, strict=True):
        for m in methods:
            pts = [
                (r["step"], r[key]) for r in data if r.get("method") == m and r.get(key) is not None
            ]
            if pts:
                x, y = zip(*pts, strict=True)
                ax.plot(x, y, marker="o", ms=3, color=colours[m], label=m)
        ys = [r[key] for r in data if r.get(key) is not None]
        if key == "objective" and ys and min(ys) > 0 and max(ys) > 20 * min(ys):
            ax.set_yscale("log")
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("plan step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _png(fig)


def _pr_curves(
    scores: np.ndarray, targets: np.ndarray, mask: np.ndarray, schema: Any, method: str
) -> bytes:
    """One panel per group: precision-recall curve of each attribute (AP in the legend)."""
    from sklearn.metrics import average_precision_score, precision_recall_curve

    groups = [(g, list(idx)) for g, idx in schema.groups]
    cols = min(3, len(groups))
    rows_n = math.ceil(len(groups) / cols)
    fig = _figure(4.3 * cols, 3.5 * rows_n)
    axes = fig.subplots(rows_n, cols, squeeze=False).ravel()
    for ax, (g, idx) in zip(axes[: len(groups)], groups, strict=True):
        many = len(idx) > 10
        for k, j in enumerate(idx):
            sel = mask[:, j] & (targets[:, j] != 0)
            y = targets[sel, j] > 0
            if y.sum() == 0 or y.sum() == y.size:
                continue
            prec, rec, _ = precision_recall_curve(y, scores[sel, j])
            ap = average_precision_score(y, scores[sel, j])
            ax.plot(
                rec,
                prec,
                lw=1.2,
                color=f"C{k % 10}",
                label=None if many else f"{schema.names[j]} (AP {ap:.2f})",
            )
        ax.set_title(f"{method}: {g}", fontsize=10)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6, loc="lower left")
    for ax in axes[len(groups) :]:
        ax.set_visible(False)
    return _png(fig)


# --------------------------------------------------------------------------------------- HTML
def _esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _pct(x: Any) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{100 * float(x):.2f}"


def _img(png: bytes, alt: str, caption: str | None = None, how: str | None = None) -> str:
    """A figure with an embedded PNG, its caption and a "how to read it" sentence below."""
    data = base64.b64encode(png).decode("ascii")
    cap = f"<figcaption>{_esc(caption)}</figcaption>" if caption else ""
    how_p = f'<p class="how">{_esc(how)}</p>' if how else ""
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{_esc(alt)}">{cap}</figure>{how_p}'
    )


def _results_table(
    methods: Mapping[str, Any], paper: Mapping[str, Any] | None, key: str | None = None
) -> str:
    from .reports import _has_spread, _sub

    blocks = {}
    for name, block in methods.items():
        b = _sub(block, key)
        if isinstance(b, Mapping) and "total" in b:
            blocks[name] = b
    if not blocks:
        return ""

    paper = dict(paper or {})
    groups: list[str] = []
    for b in [*blocks.values(), *paper.values()]:
        for g in b.get("groups", {}):
            if g not in groups:
                groups.append(g)
    names = list(paper) + [n for n in blocks if n not in paper] if paper else list(blocks)
    with_ma = key is None and any(
        isinstance(b.get("balanced_accuracy"), Mapping) for b in blocks.values()
    )
    with_if1 = key is None and any(
        isinstance(_sub(b, "instance.f1"), Mapping) for b in blocks.values()
    )
    spread = any(_has_spread(b) for b in blocks.values())
    head = "".join(f"<th>{_esc(g)}</th>" for g in [*groups, "total"])
    if with_ma:
        head += '<th title="mean balanced accuracy">mA</th>'
    if with_if1:
        head += '<th title="instance F1, per image over its labelled attributes">inst-F1</th>'
    out = [f"<table><thead><tr><th>method</th>{head}</tr></thead><tbody>"]
    for name in names:
        b, p = blocks.get(name, {}), paper.get(name, {})
        std = (b.get("std") or {}) if spread else {}
        cells = []
        for g in [*groups, None]:
            v = b.get("total") if g is None else b.get("groups", {}).get(g)
            s = std.get("total") if g is None else (std.get("groups") or {}).get(g)
            pv = p.get("total") if g is None else p.get("groups", {}).get(g)
            text = _pct(v) if name in blocks else "–"
            if s is not None and name in blocks:
                text += f" ± {_pct(s)}"
            if paper:
                text += f' <span class="paper">({_pct(pv)})</span>'
            cells.append(f"<td>{text}</td>")
        extra = [b.get("balanced_accuracy")] if with_ma else []
        extra += [_sub(b, "instance.f1")] if with_if1 else []
        for sub in extra:  # mA, inst-F1: totals only, no paper numbers
            sub = sub if isinstance(sub, Mapping) else {}
            sub_std = (sub.get("std") or {}).get("total") if spread else None
            text = _pct(sub.get("total")) if name in blocks else "–"
            if sub_std is not None and name in blocks:
                text += f" ± {_pct(sub_std)}"
            cells.append(f"<td>{text}</td>")
        label = _esc(name) + ("" if name in blocks else ' <span class="paper">(paper)</span>')
        out.append(f"<tr><td>{label}</td>{''.join(cells)}</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _instance_table(methods: Mapping[str, Any]) -> str:
    """Per method the instance-based accuracy, precision, recall and F1 (totals, ± std over
    folds where there is a spread); ``""`` when no method block has them."""
    from .reports import _has_spread, _sub

    names = ("accuracy", "precision", "recall", "f1")
    rows = {
        m: inst
        for m, b in methods.items()
        if isinstance(inst := _sub(b, "instance"), Mapping)
        and all(isinstance(inst.get(n), Mapping) for n in names)
    }
    if not rows:
        return ""
    spread = any(_has_spread(inst[n]) for inst in rows.values() for n in names)
    out = [
        "<table><thead><tr><th>method</th><th>accuracy</th><th>precision</th><th>recall</th>"
        "<th>F1</th></tr></thead><tbody>"
    ]
    for method, inst in rows.items():
        cells = []
        for n in names:
            text = _pct(inst[n].get("total"))
            std = (inst[n].get("std") or {}).get("total") if spread else None
            cells.append(f"<td>{text}{f' ± {_pct(std)}' if std is not None else ''}</td>")
        out.append(f"<tr><td>{_esc(method)}</td>{''.join(cells)}</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _per_attribute_table(methods: Mapping[str, Any], schema: Any) -> str:
    names = [n for n, b in methods.items() if isinstance(b.get("per_attribute"), Mapping)]
    if not names:
        return ""
    ap = {n: (methods[n].get("average_precision") or {}).get("per_attribute") or {} for n in names}
    ba = {n: (methods[n].get("balanced_accuracy") or {}).get("per_attribute") or {} for n in names}
    head = "".join(
        f"<th>{_esc(n)} acc</th><th>{_esc(n)} mA</th><th>{_esc(n)} AP</th>" for n in names
    )
    out = [f"<table><thead><tr><th>attribute</th><th>group</th>{head}</tr></thead><tbody>"]
    for _g, idx in schema.groups:
        for i in idx:
            a = schema.names[i]
            cells = "".join(
                f"<td>{_pct(methods[n]['per_attribute'].get(a))}</td>"
                f"<td>{_chance_cell(ba[n].get(a))}</td><td>{_pct(ap[n].get(a))}</td>"
                for n in names
            )
            out.append(f"<tr><td>{_esc(a)}</td><td>{_esc(schema.group_of(i))}</td>{cells}</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _chance_cell(v: Any) -> str:
    """A balanced accuracy, red and marked when it is within CHANCE_BAND of 50 %."""
    from .reports import CHANCE_BAND

    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if abs(float(v) - 0.5) <= CHANCE_BAND + 1e-12:
        return f'<span class="chance" title="at chance">{_pct(v)} (chance)</span>'
    return _pct(v)


def _thumbnail(image: Any, size: int = 160) -> str:
    """A PIL image as a ``data:image/jpeg;base64`` URI, at most ``size`` pixels a side."""
    img = image.convert("RGB")
    img.thumbnail((size, size))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=82)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def pick_examples(
    probs: np.ndarray,
    thresholds: np.ndarray,
    targets: np.ndarray,
    mask: np.ndarray,
    members: Sequence[int],
    per_kind: int = 3,
) -> tuple[list[int], list[int]]:
    """(most confidently right, most confidently wrong) images for one group of attributes.

    The decision is p >= threshold; confidence c = |p − threshold| (N, M). Right: every labelled
    member attribute decided correctly, ranked by the mean c over them. Wrong: at least one
    labelled member decided wrongly, ranked by the largest c among the wrong ones. At most
    ``per_kind`` image indices each, most confident first.
    """
    idx = list(members)
    p = np.asarray(probs, dtype=np.float32)[:, idx]
    t = np.asarray(thresholds, dtype=np.float32)[idx]
    labelled = np.asarray(mask, dtype=bool)[:, idx] & (np.asarray(targets)[:, idx] != 0)
    correct = (p >= t) == (np.asarray(targets)[:, idx] > 0)
    conf = np.abs(p - t)
    n_lab = labelled.sum(axis=1)
    wrong_any = (labelled & ~correct).any(axis=1)
    right = (n_lab > 0) & ~wrong_any
    mean_conf = np.where(labelled, conf, 0.0).sum(axis=1) / np.maximum(n_lab, 1)
    worst = np.where(labelled & ~correct, conf, -1.0).max(axis=1)

    def top(sel: np.ndarray, key: np.ndarray) -> list[int]:
        cand = np.flatnonzero(sel)
        return [int(i) for i in cand[np.argsort(-key[cand], kind="stable")][:per_kind]]

    return top(right, mean_conf), top(wrong_any, worst)


def _example_card(
    dataset: Any,
    i: int,
    members: Sequence[int],
    schema: Any,
    probs: np.ndarray,
    thresholds: np.ndarray,
    targets: np.ndarray,
    mask: np.ndarray,
    wrong: bool,
) -> str:
    path = dataset.image_path(i) if hasattr(dataset, "image_path") else None
    ident = path.name if path is not None else f"test image #{i}"
    lines = []
    for j in members:
        pred = bool(np.float32(probs[i, j]) >= np.float32(thresholds[j]))
        known = bool(mask[i, j]) and targets[i, j] != 0
        truth = bool(targets[i, j] > 0) if known else None
        if not pred and not truth and not (known and pred != truth):
            continue  # neither predicted nor present: not listed
        # a missing true label is unknown: its line is neither right nor wrong (grey, "?")
        true_text = "unknown (label missing)" if truth is None else ("yes" if truth else "no")
        text = (
            f"{schema.names[j]}: {'yes' if pred else 'no'} (p={float(probs[i, j]):.2f}), "
            f"true {true_text}"
        )
        if not known:
            lines.append(f'<div class="unk">? {_esc(text)}</div>')
        elif pred != truth:
            lines.append(f'<div class="err">✗ {_esc(text)}</div>')
        else:
            lines.append(f"<div>{_esc(text)}</div>")
    if not lines:
        lines.append("<div>none of the group's attributes predicted or present</div>")
    try:
        src = _thumbnail(dataset.load_image(i))
    except Exception as e:  # noqa: BLE001 - one unreadable image must not sink the report
        log.warning("no thumbnail for %s: %s", ident, e)
        src = None
    img = f'<img src="{src}" alt="{_esc(ident)}">' if src else ""
    kind = "ex wrong" if wrong else "ex"
    return f'<div class="{kind}">{img}<div class="id">{_esc(ident)}</div>{"".join(lines)}</div>'


def _examples_section(
    dataset: Any,
    method: str,
    probs: np.ndarray,
    thresholds: np.ndarray,
    targets: np.ndarray,
    mask: np.ndarray,
    schema: Any,
    per_kind: int = 3,
) -> str:
    from .reports import HOW_TO

    parts = [
        f"<p>{_esc(method)} on {len(dataset)} test photos: per group, the {per_kind} it is most "
        f"sure it got right and the {per_kind} it got wrong most confidently.</p>"
    ]
    for g, members in schema.groups:
        right, wrong = pick_examples(probs, thresholds, targets, mask, members, per_kind)
        cards = [
            _example_card(dataset, i, members, schema, probs, thresholds, targets, mask, False)
            for i in right
        ] + [
            _example_card(dataset, i, members, schema, probs, thresholds, targets, mask, True)
            for i in wrong
        ]
        parts.append(f"<h3>{_esc(g)}</h3>")
        if not cards:
            parts.append('<p class="note">No labelled test photo for this group.</p>')
            continue
        if not wrong:
            cards.append('<div class="ex"><div>no mistake in this group</div></div>')
        parts.append(f'<div class="examples">{"".join(cards)}</div>')
    parts.append(f'<p class="how">{_esc(HOW_TO["examples"])}</p>')
    return "".join(parts)


def _decisions_table(
    method: str,
    probs: np.ndarray,
    thresholds: np.ndarray,
    targets: np.ndarray,
    mask: np.ndarray,
    schema: Any,
    *,
    rule: str | None = None,
    boundary: np.ndarray | None = None,
) -> str:
    """Per attribute: threshold, confusion counts TP FP FN TN, accuracy and balanced accuracy of
    the decisions p >= threshold (as ``apcnn predict`` makes them). ``rule``: the checkpoint's
    ``train.threshold``, named above the table; ``boundary`` (M,): the trained boundary's
    thresholds σ(c_m), a column of their own when the rule is not ``"0"``."""
    from .reports import THRESHOLD_RULE_TEXT

    show_boundary = boundary is not None and rule not in (None, "0")
    head = (
        "<th>attribute</th><th>group</th><th>threshold</th>"
        + (
            '<th title="the trained boundary, p at score 0">boundary σ(c)</th>'
            if show_boundary
            else ""
        )
        + "<th>TP</th><th>FP</th><th>FN</th><th>TN</th><th>accuracy</th><th>mA</th>"
    )
    how = (
        f" Thresholds: <code>train.threshold: {_esc(rule)}</code>, "
        f"{_esc(THRESHOLD_RULE_TEXT.get(rule, rule))}."
        if rule is not None
        else ""
    )
    out = [
        f"<p>{_esc(method)} on the test split, deciding as <code>apcnn predict</code> does: "
        "present iff the calibrated probability p &gt;= the attribute's threshold (saved in the "
        f"checkpoint).{how} TP: predicted and present, FP: predicted but absent, FN: missed, TN: "
        "correctly absent; missing labels are not counted.</p>",
        f"<table><thead><tr>{head}</tr></thead><tbody>",
    ]
    decided = np.asarray(probs, dtype=np.float32) >= np.asarray(thresholds, dtype=np.float32)
    for g, members in schema.groups:
        for j in members:
            sel = np.asarray(mask[:, j], dtype=bool) & (targets[:, j] != 0)
            y, d = targets[sel, j] > 0, decided[sel, j]
            tp, fp = int(np.sum(d & y)), int(np.sum(d & ~y))
            fn, tn = int(np.sum(~d & y)), int(np.sum(~d & ~y))
            n = tp + fp + fn + tn
            acc = (tp + tn) / n if n else None
            recalls = ([tp / (tp + fn)] if tp + fn else []) + ([tn / (tn + fp)] if tn + fp else [])
            ba = float(np.mean(recalls)) if recalls else None
            out.append(
                f"<tr><td>{_esc(schema.names[j])}</td><td>{_esc(g)}</td>"
                f"<td>{float(thresholds[j]):.3f}</td>"
                + (f"<td>{float(boundary[j]):.3f}</td>" if show_boundary else "")
                + f"<td>{tp}</td><td>{fp}</td><td>{fn}</td>"
                f"<td>{tn}</td><td>{_pct(acc)}</td><td>{_chance_cell(ba)}</td></tr>"
            )
    out.append("</tbody></table>")
    return "".join(out)


def label_counts(datasets: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Per split: (M, 3) int counts of positive, negative and missing labels per attribute."""
    out = {}
    for name, ds in datasets.items():
        t = np.asarray(ds.targets)
        m = np.asarray(ds.mask, dtype=bool) & (t != 0)
        pos = np.sum(m & (t > 0), axis=0)
        neg = np.sum(m & (t < 0), axis=0)
        out[name] = np.stack([pos, neg, t.shape[0] - pos - neg], axis=1).astype(np.int64)
    return out


def _label_counts_table(datasets: Mapping[str, Any], schema: Any) -> str:
    counts = label_counts(datasets)
    splits = [s for s in ("train", "val", "test") if s in counts] + [
        s for s in counts if s not in ("train", "val", "test")
    ]
    head = "".join(f"<th>{_esc(s)} (+ / − / ?)</th>" for s in splits)
    sizes = "".join(f"<td>{len(datasets[s])} images</td>" for s in splits)
    out = [
        "<p>Labels per split: positive / negative / missing (missing labels are left out of "
        "training and of every metric). An attribute with few positives in a split gives noisy "
        "figures there.</p>",
        f"<table><thead><tr><th>attribute</th><th>group</th>{head}</tr></thead><tbody>",
        f"<tr><td><b>all attributes</b></td><td></td>{sizes}</tr>",
    ]
    for g, members in schema.groups:
        for j in members:
            cells = "".join(
                "<td>{} / {} / {}</td>".format(*counts[s][j])
                if j < len(counts[s])
                else "<td>–</td>"
                for s in splits
            )
            out.append(f"<tr><td>{_esc(schema.names[j])}</td><td>{_esc(g)}</td>{cells}</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _solver_history_png(calls: Sequence[Sequence[float]], method: str) -> bytes:
    """Objective per outer iteration, solver calls one after the other, a dashed line where a
    new call starts (its objective is on new features: the jump is expected)."""
    fig = _figure(6.5, 3.6)
    ax = fig.add_subplot()
    x0 = 0
    for k, call in enumerate(calls):
        y = np.asarray(call, dtype=np.float64).ravel()
        if not y.size:
            continue
        x = np.arange(x0 + 1, x0 + y.size + 1)
        ax.plot(x, y, marker="o" if y.size < 40 else None, ms=3, color="C0")
        if k:
            ax.axvline(x0 + 0.5, color="#999", ls="--", lw=0.8)
        x0 += y.size
    ys = np.concatenate([np.asarray(c, dtype=np.float64).ravel() for c in calls if len(c)])
    ys = ys[np.isfinite(ys)]
    if ys.size and ys.min() > 0 and ys.max() > 20 * ys.min():
        ax.set_yscale("log")
    ax.set_xlabel(f"outer iteration ({len(calls)} solver call{'s' if len(calls) != 1 else ''})")
    ax.set_ylabel("objective (eq. 2)")
    ax.set_title(f"{method}: solver objective", fontsize=10)
    ax.grid(alpha=0.3)
    return _png(fig)


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
    from .reports import (
        GROUP_INSTANCE_NOTE,
        HOW_TO,
        INSTANCE_LEGEND,
        MA_LEGEND,
        _plot_S,
        _plot_sharing,
        _sub,
        chance_lines,
        latent_rows_in_use,
        paper_for_schema,
        write_report,
    )

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
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_esc(title)}</h1>",
    ]
    proto = results.get("protocol") or {}
    info = ", ".join(f"{_esc(k)}: {_esc(v)}" for k, v in proto.items())
    if "seconds" in results:
        info += f"{', ' if info else ''}wall time: {float(results['seconds']):.1f} s"
    parts.append(
        f'<p class="meta">{info}{"; " if info else ""}apcnn {_esc(__version__)}; '
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
    with_if1 = any(isinstance(_sub(b, "instance.f1"), Mapping) for b in methods.values())
    head_label = f"{metric}{' and mA' if with_ma else ''} (%)"
    if with_ma and with_if1:
        head_label = f"{metric}, mA and instance F1 (%)"
    parts.append(f"<h3>{_esc(head_label)}</h3>" + _results_table(methods, paper))
    if with_ma:
        parts.append(f'<p class="meta">{_esc(MA_LEGEND)}.</p>')
    if paper:
        parts.append(
            '<p class="paper">Paper numbers in parentheses: Abdulnabi et al. 2015, '
            "Table III (Clothing Attribute Dataset).</p>"
        )
    for line in chance_lines(methods):
        parts.append(
            f'<p class="note"><span class="chance">{_esc(line)}</span>: no better than always '
            "answering the most common label, whatever the accuracy says.</p>"
        )
    if any(isinstance(_sub(b, "instance.f1"), Mapping) for b in methods.values()):
        parts.append(f'<p class="meta">{_esc(INSTANCE_LEGEND)}.</p>')
    for key, label in (
        ("balanced_accuracy", "mA: mean balanced accuracy (%)"),
        ("average_precision", "Average precision (%)"),
    ):
        table = _results_table(methods, None, key)
        if table:
            parts.append(f"<h3>{_esc(label)}</h3>{table}")
    table = _instance_table(methods)
    if table:
        parts.append(
            "<h3>Instance-based metrics (%)</h3><p>Per image over its labelled attributes, "
            "then averaged over images; F1 from the averaged precision and recall.</p>"
            + table
            + "<h3>Instance F1 per group (%)</h3>"
            + _results_table(methods, None, "instance.f1")
            + f'<p class="meta">{_esc(GROUP_INSTANCE_NOTE)}.</p>'
        )
    mc = [
        (n, b["multiclass"])
        for n, b in methods.items()
        if isinstance(b, Mapping) and b.get("multiclass")
    ]
    if mc:
        attrs = list(mc[0][1])
        head = "".join(f"<th>{_esc(a)}</th>" for a in attrs)
        body = "".join(
            f"<tr><td>{_esc(n)}</td>"
            + "".join(f"<td>{_pct(v.get(a))}</td>" for a in attrs)
            + "</tr>"
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
    not_scored = f'<p class="note">Skipped: {_esc(_why_not(data, pr_curves, data_error))}.</p>'
    parts.append("<h2>Examples</h2>")
    if shown is None:
        parts.append(not_scored)
    else:
        parts.append(
            _examples_section(scored["dataset"], shown, *_shown_arrays(scored, shown), schema)
        )
    parts.append("<h2>Decisions per attribute: thresholds and confusion counts</h2>")
    if shown is None:
        parts.append(not_scored)
    else:
        parts.append(
            _decisions_table(
                shown,
                *_shown_arrays(scored, shown),
                schema,
                rule=(scored.get("rules") or {}).get(shown),
                boundary=(scored.get("boundaries") or {}).get(shown),
            )
        )
    parts.append("<h2>Labels per split</h2>")
    if splits:
        parts.append(_label_counts_table(splits, schema))
    else:
        parts.append(f'<p class="note">Skipped: {_esc(_why_not(data, True, data_error))}.</p>')

    # ---------------------------------------------------------------- per attribute
    per_png = run / "per_attribute.png"
    if markdown and per_png.is_file():
        parts.append("<h2>Per-attribute scores</h2>")
        caption = "Per-attribute accuracy by method, attributes ordered by group"
        if paper:
            caption += "; dashed: the paper's group means (it reports no per-attribute numbers)"
        parts.append(
            _img(per_png.read_bytes(), "per-attribute scores", caption, HOW_TO["per_attribute"])
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
            parts.append(f"<h3>{_esc(method)}</h3>")
            parts.append(
                _img(
                    _plot_to_png(_plot_S, S, schema),
                    f"|S| of {method}",
                    f"{method}: |S|, {used} of K = {S.shape[0]} latent tasks in use "
                    f"(rows not all zero), {S.shape[1]} attributes",
                    HOW_TO["S"],
                )
            )
            parts.append(
                _img(
                    _plot_to_png(_plot_sharing, data["W"][method], schema),
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
            f"<p>On the {_esc(split)} split ({scored['targets'].shape[0]} images), raw "
            "scores; missing labels excluded.</p>"
        )
        for method, sc in scored["scores"].items():
            parts.append(
                _img(
                    _pr_curves(sc, scored["targets"], scored["mask"], schema, method),
                    f"precision-recall curves of {method}",
                    f"{method}: precision–recall per attribute, one panel per group",
                    HOW_TO["pr"],
                )
            )

    # ---------------------------------------------------------------- training curves
    parts.append("<h2>Training</h2>")
    curves = _training_curves(data["rows"])
    if curves:
        parts.append(
            _img(
                curves,
                "training curves",
                "From metrics.jsonl: per SGD epoch and per solver call",
                HOW_TO["training"],
            )
        )
    calls = data["history_calls"].get(last) if last else None
    if history and calls:
        parts.append(
            _img(
                _solver_history_png(calls, last),
                "solver objective history",
                f"{last}: objective of eq. 2 over the solver's outer iterations; dashed lines: "
                "a new solver call",
                HOW_TO["objective"],
            )
        )
    if not curves and not history:
        parts.append('<p class="note">No training log (metrics.jsonl) in the run folder.</p>')

    table = _per_attribute_table(methods, schema)
    if table:
        parts.append("<h2>Per-attribute table (%)</h2>" + table)
    if data["config_text"]:
        parts.append("<h2>Configuration</h2><pre>" + _esc(data["config_text"]) + "</pre>")
    parts.append("</body></html>")

    from .runlog import atomic_write_bytes

    path = run / "report.html"
    atomic_write_bytes(path, "\n".join(parts).encode("utf-8"))
    return path
