"""Results tables and the Markdown report with its figures.

:func:`format_table` turns the ``methods`` of a ``results.json`` (docs/design.md section 3) into a
fixed-width table of percentages (methods x groups + total, then mA: the mean balanced accuracy
beside the accuracy), ``mean ± std`` when a method block has a spread over several folds, the
paper's numbers in parentheses next to ours when ``paper`` is given, and a line naming the
attributes at chance (:func:`at_chance`): a model that always predicts the majority class has a
high accuracy on a skewed attribute but a balanced accuracy of exactly 50 %.
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
    """A fixed-width table: one row per method, one column per group, then ``total`` and ``mA``.

    Args:
        results: a ``results.json`` dict (with ``"methods"``) or its ``methods`` mapping
            ``{method: {"total", "groups", ["std"], ["balanced_accuracy"], ...}}``.
        paper: reference numbers in the same shape (e.g. :data:`PAPER_TABLE_III`), shown in
            parentheses after ours; methods only in ``paper`` get rows of their own.
        key: show the sub-block ``method[key]`` (e.g. ``"balanced_accuracy"``) instead of the
            headline metric.
        title: first line; default names the metric (a given "accuracy (%)" becomes "accuracy
            and mA (%)" when the mA column is there).
        flags: add the ``mA`` legend and the ``at chance`` lines (:func:`chance_lines`) below.

    Cells are percentages with two decimals, ``mean ± std`` where the block has a spread over
    several folds. The ``mA`` column (mean balanced accuracy, beside the headline accuracy) is
    there when ``key`` is None and a method block has a ``balanced_accuracy`` sub-block.
    """
    methods = _methods(results)
    blocks: dict[str, Mapping[str, Any]] = {}
    for name, block in methods.items():
        b = block.get(key) if key else block
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
    spread = any(_has_spread(b) for b in blocks.values())

    header = ["method", *groups, "total"] + (["mA"] if with_ma else [])
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
        rows.append(cells)

    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = [c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)]
        return "  ".join([first, *rest]).rstrip()

    if title is None:
        metric = key or next((b.get("metric") for b in blocks.values() if b.get("metric")), None)
        title = f"{metric or 'score'} (%)"
        if with_ma:
            title = f"{metric or 'score'} and mA (%)"
        if spread:
            title += ", mean ± std over folds"
        if with_paper:
            title += "; (paper)"
    elif with_ma and "mA" not in title:  # a caller's "accuracy (%) on ..." names both columns
        title = title.replace("accuracy (%)", "accuracy and mA (%)", 1)
    out = [title, line(header), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in rows]
    if flags and with_ma:
        out.append(MA_LEGEND)
    if flags and key is None:
        out += chance_lines({n: methods[n] for n in blocks})
    return "\n".join(out)


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
        "predicted or truly present; red lines are mistakes, p is the calibrated probability "
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
    steps = []
    for (na, a), (nb, b) in zip(zip(PAPER_ORDER, blocks), zip(PAPER_ORDER[1:], blocks[1:])):
        fa, fb = a.get("folds") or [], b.get("folds") or []
        if len(fa) == len(fb) and len(fa) > 1:
            wins = sum(y > x for x, y in zip(fa, fb))
            steps.append(f"{nb} > {na} in {wins} of {len(fa)} folds")
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
        ("balanced_accuracy", "Balanced accuracy"),
        ("average_precision", "Average precision"),
    ):
        if any(
            isinstance(b, Mapping) and isinstance(b.get(key), Mapping) for b in methods.values()
        ):
            md += [f"### {label}", "", "```", format_table(methods, key=key), "```", ""]
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
