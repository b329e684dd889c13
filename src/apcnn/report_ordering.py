"""The report's comparisons across methods and label budgets: does the paper's ordering S-CNN <
M-CNN < MG-CNN hold (overall and per fold), where ours is below the paper, and the label-budget
table and figure of ``apcnn reproduce --label-fraction``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .report_plots import new_figure
from .report_tables import has_spread, missing, pct

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
        spread = f" ± {100 * std:.2f}" if not missing(std) else ""
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
        + (" (mean ± std over folds)" if any(has_spread(b) for b in blocks) else "")
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
            if missing(mine):
                continue
            gap = 100 * (float(mine) - float(theirs))
            (above if gap >= 0 else below).append(f"{label} {gap:+.2f}")
        if not below and above:  # above[0]: the total (listed first)
            lines.append(f"- {name}: at or above the paper on every figure ({above[0]}).")
        elif below:
            rest = f"; at or above it on {', '.join(above)}" if above else ""
            lines.append(f"- {name}: **below** the paper on {', '.join(below)}{rest}.")
    return lines


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
        if len(fa) != len(fb) or any(missing(x) for x in fa + fb):
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
                pct(m) + ("" if missing(sd) else f" ± {100 * sd:.2f}")
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
    fig = new_figure(9.0, 3.6)
    axes = fig.subplots(1, len(BUDGET_METRICS))
    for ax, (key, label) in zip(axes, BUDGET_METRICS):
        for k, name in enumerate(shown):
            s = budget["methods"][name][key]
            mean = np.array([np.nan if missing(v) else 100 * v for v in s["mean"]])
            std = np.array([np.nan if missing(v) else 100 * v for v in s["std"]])
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
