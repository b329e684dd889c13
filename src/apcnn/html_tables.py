"""The HTML report's tables: results (with mA and inst-F1), instance-based metrics, per
attribute, the decisions (thresholds and confusion counts) and the label counts per split;
plus :func:`esc` and :func:`pct`, the HTML escaping and percentage cells the other html_*
modules share."""

from __future__ import annotations

import html
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from .report_tables import CHANCE_BAND, THRESHOLD_RULE_TEXT, has_spread, sub_block, table_layout


def esc(x: Any) -> str:
    """HTML-escaped ``str(x)``, quotes included."""
    return html.escape(str(x), quote=True)


def pct(x: Any) -> str:
    """A fraction as a percentage with two decimals, ``–`` for a missing one."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{100 * float(x):.2f}"


def results_table(
    methods: Mapping[str, Any], paper: Mapping[str, Any] | None, key: str | None = None
) -> str:
    """The results table: one row per method (the paper's first), one column per group, then
    ``total``, mA and inst-F1 (``key`` None), ``± std`` over folds, the paper's numbers in
    parentheses; ``method[key]`` instead with ``key``. ``""`` when no method has a block."""
    blocks = {}
    for name, block in methods.items():
        b = sub_block(block, key)
        if isinstance(b, Mapping) and "total" in b:
            blocks[name] = b
    if not blocks:
        return ""

    paper = dict(paper or {})
    groups, names = table_layout(blocks, paper)
    with_ma = key is None and any(
        isinstance(b.get("balanced_accuracy"), Mapping) for b in blocks.values()
    )
    with_if1 = key is None and any(
        isinstance(sub_block(b, "instance.f1"), Mapping) for b in blocks.values()
    )
    spread = any(has_spread(b) for b in blocks.values())
    head = "".join(f"<th>{esc(g)}</th>" for g in [*groups, "total"])
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
            text = pct(v) if name in blocks else "–"
            if s is not None and name in blocks:
                text += f" ± {pct(s)}"
            if paper:
                text += f' <span class="paper">({pct(pv)})</span>'
            cells.append(f"<td>{text}</td>")
        extra = [b.get("balanced_accuracy")] if with_ma else []
        extra += [sub_block(b, "instance.f1")] if with_if1 else []
        for sub in extra:  # mA, inst-F1: totals only, no paper numbers
            sub = sub if isinstance(sub, Mapping) else {}
            sub_std = (sub.get("std") or {}).get("total") if spread else None
            text = pct(sub.get("total")) if name in blocks else "–"
            if sub_std is not None and name in blocks:
                text += f" ± {pct(sub_std)}"
            cells.append(f"<td>{text}</td>")
        label = esc(name) + ("" if name in blocks else ' <span class="paper">(paper)</span>')
        out.append(f"<tr><td>{label}</td>{''.join(cells)}</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def instance_metrics_table(methods: Mapping[str, Any]) -> str:
    """Per method the instance-based accuracy, precision, recall and F1 (totals, ± std over
    folds where there is a spread); ``""`` when no method block has them."""
    names = ("accuracy", "precision", "recall", "f1")
    rows = {
        m: inst
        for m, b in methods.items()
        if isinstance(inst := sub_block(b, "instance"), Mapping)
        and all(isinstance(inst.get(n), Mapping) for n in names)
    }
    if not rows:
        return ""
    spread = any(has_spread(inst[n]) for inst in rows.values() for n in names)
    out = [
        "<table><thead><tr><th>method</th><th>accuracy</th><th>precision</th><th>recall</th>"
        "<th>F1</th></tr></thead><tbody>"
    ]
    for method, inst in rows.items():
        cells = []
        for n in names:
            text = pct(inst[n].get("total"))
            std = (inst[n].get("std") or {}).get("total") if spread else None
            cells.append(f"<td>{text}{f' ± {pct(std)}' if std is not None else ''}</td>")
        out.append(f"<tr><td>{esc(method)}</td>{''.join(cells)}</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def per_attribute_table(methods: Mapping[str, Any], schema: Any) -> str:
    """Per attribute and method: accuracy, mA (marked at chance) and AP."""
    names = [n for n, b in methods.items() if isinstance(b.get("per_attribute"), Mapping)]
    if not names:
        return ""
    ap = {n: (methods[n].get("average_precision") or {}).get("per_attribute") or {} for n in names}
    ba = {n: (methods[n].get("balanced_accuracy") or {}).get("per_attribute") or {} for n in names}
    head = "".join(f"<th>{esc(n)} acc</th><th>{esc(n)} mA</th><th>{esc(n)} AP</th>" for n in names)
    out = [f"<table><thead><tr><th>attribute</th><th>group</th>{head}</tr></thead><tbody>"]
    for _g, idx in schema.groups:
        for i in idx:
            a = schema.names[i]
            cells = "".join(
                f"<td>{pct(methods[n]['per_attribute'].get(a))}</td>"
                f"<td>{chance_cell(ba[n].get(a))}</td><td>{pct(ap[n].get(a))}</td>"
                for n in names
            )
            out.append(f"<tr><td>{esc(a)}</td><td>{esc(schema.group_of(i))}</td>{cells}</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def chance_cell(v: Any) -> str:
    """A balanced accuracy, red and marked when it is within CHANCE_BAND of 50 %."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if abs(float(v) - 0.5) <= CHANCE_BAND + 1e-12:
        return f'<span class="chance" title="at chance">{pct(v)} (chance)</span>'
    return pct(v)


def decisions_table(
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
        f" Thresholds: <code>train.threshold: {esc(rule)}</code>, "
        f"{esc(THRESHOLD_RULE_TEXT.get(rule, rule))}."
        if rule is not None
        else ""
    )
    out = [
        f"<p>{esc(method)} on the test split, deciding as <code>apcnn predict</code> does: "
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
                f"<tr><td>{esc(schema.names[j])}</td><td>{esc(g)}</td>"
                f"<td>{float(thresholds[j]):.3f}</td>"
                + (f"<td>{float(boundary[j]):.3f}</td>" if show_boundary else "")
                + f"<td>{tp}</td><td>{fp}</td><td>{fn}</td>"
                f"<td>{tn}</td><td>{pct(acc)}</td><td>{chance_cell(ba)}</td></tr>"
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


def label_counts_table(datasets: Mapping[str, Any], schema: Any) -> str:
    """Per attribute and split: positive / negative / missing label counts."""
    counts = label_counts(datasets)
    splits = [s for s in ("train", "val", "test") if s in counts] + [
        s for s in counts if s not in ("train", "val", "test")
    ]
    head = "".join(f"<th>{esc(s)} (+ / − / ?)</th>" for s in splits)
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
            out.append(f"<tr><td>{esc(schema.names[j])}</td><td>{esc(g)}</td>{cells}</tr>")
    out.append("</tbody></table>")
    return "".join(out)
