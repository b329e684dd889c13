"""Results tables and the Markdown report with its figures.

:func:`format_table` turns the ``methods`` of a ``results.json`` (docs/design.md section 3) into a
fixed-width table of percentages (methods x groups + total), ``mean ± std`` when a method block
has ``std``, the paper's numbers in parentheses next to ours when ``paper`` is given.
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
) -> str:
    """A fixed-width table: one row per method, one column per group, then ``total``.

    Args:
        results: a ``results.json`` dict (with ``"methods"``) or its ``methods`` mapping
            ``{method: {"total", "groups", ["std"], ...}}``.
        paper: reference numbers in the same shape (e.g. :data:`PAPER_TABLE_III`), shown in
            parentheses after ours; methods only in ``paper`` get rows of their own.
        key: show the sub-block ``method[key]`` (e.g. ``"balanced_accuracy"``) instead of the
            headline metric.
        title: first line; default names the metric.

    Cells are percentages with two decimals, ``mean ± std`` where the block has ``std``.
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

    header = ["method", *groups, "total"]
    rows = []
    for name in names:
        b = blocks.get(name, {})
        p = paper.get(name, {})
        std = b.get("std") or {}
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
        rows.append(cells)

    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = [c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)]
        return "  ".join([first, *rest]).rstrip()

    if title is None:
        metric = key or next((b.get("metric") for b in blocks.values() if b.get("metric")), None)
        title = f"{metric or 'score'} (%)"
        if any(b.get("std") for b in blocks.values()):
            title += ", mean ± std over folds"
        if with_paper:
            title += "; (paper)"
    out = [title, line(header), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in rows]
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


def _plot_S(path: Path, S: Any, schema: AttributeSchema) -> None:
    S = np.abs(_array(S, "S"))
    if S.shape[1] != schema.num_attributes:
        raise ValueError(f"S must be (K, {schema.num_attributes}), got {S.shape}")
    order, spans = _order(schema)
    k, m = S.shape
    fig = _figure(max(6.0, 0.3 * m + 2), min(10.0, max(3.5, 0.06 * k + 2)))
    ax = fig.add_subplot()
    im = ax.imshow(S[:, order], aspect="auto", interpolation="nearest", cmap="viridis")
    _group_axis(ax, schema, order, spans)
    ax.set_ylabel(f"latent task k (K = {k})")
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
def _per_attribute_md(methods: Mapping[str, Any], schema: AttributeSchema, key: str | None) -> str:
    names = [
        n
        for n, b in methods.items()
        if isinstance((b.get(key) if key else b), Mapping)
        and "per_attribute" in (b.get(key) if key else b)
    ]
    if not names:
        return ""
    order, _ = _order(schema)
    lines = [
        "| attribute | group | " + " | ".join(names) + " |",
        "|---|---|" + "---:|" * len(names),
    ]
    for i in order:
        a = schema.names[i]
        vals = [
            _pct(((methods[n].get(key) if key else methods[n])["per_attribute"]).get(a))
            for n in names
        ]
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
        spread = f" ± {100 * std:.2f}" if std is not None else ""
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
        + " (mean ± std over folds)"
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
    md += ["## Results", "", "```", format_table(methods, ref), "```", ""]
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
        md += ["![per-attribute scores](per_attribute.png)", ""]
    if S is not None:
        _plot_S(out / "S_abs.png", S, schema)
        md += [
            "Combination matrix |S| (latent tasks x attributes, columns by group):",
            "",
            "![|S|](S_abs.png)",
            "",
        ]
    if W is not None:
        _plot_sharing(out / "attribute_sharing.png", W, schema)
        md += [
            "Attribute sharing: cosine similarity of the columns of W = L S:",
            "",
            "![attribute sharing](attribute_sharing.png)",
            "",
        ]
    if history is not None and len(history):
        _plot_history(out / "objective.png", history)
        md += ["![objective history](objective.png)", ""]
    table = _per_attribute_md(methods, schema, None)
    if table:
        md += ["## Per-attribute scores (%)", "", table, ""]
    if "seconds" in results:
        md += [f"Wall time: {float(results['seconds']):.1f} s", ""]

    from apcnn.runlog import atomic_write_bytes

    path = out / "report.md"
    atomic_write_bytes(path, "\n".join(md).encode("utf-8"))
    return path
