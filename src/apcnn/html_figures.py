"""The HTML report's figures as PNG bytes (training curves, precision-recall curves, the
solver's objective history) and :func:`img`, a figure embedded as a ``data:`` URI with its
caption; matplotlib (and scikit-learn) imported only when a figure is drawn."""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .html_tables import esc
from .report_data import method_key


def png_bytes(fig: Any) -> bytes:
    """A matplotlib figure as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def new_figure(width: float, height: float) -> Any:
    """A matplotlib Figure (``width`` x ``height`` inches, 100 dpi); matplotlib imported here."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def plot_to_png(plot: Any, *args: Any) -> bytes:
    """Run one of apcnn.report_plots' ``plot_*(path, ...)`` functions into PNG bytes."""
    buf = io.BytesIO()
    plot(buf, *args)
    return buf.getvalue()


def training_curves_png(rows: Sequence[Mapping[str, Any]]) -> bytes | None:
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
    fig = new_figure(4.2 * len(panels), 3.4)
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
    return png_bytes(fig)


def pr_curves_png(
    scores: np.ndarray, targets: np.ndarray, mask: np.ndarray, schema: Any, method: str
) -> bytes:
    """One panel per group: precision-recall curve of each attribute (AP in the legend)."""
    from sklearn.metrics import average_precision_score, precision_recall_curve

    groups = [(g, list(idx)) for g, idx in schema.groups]
    cols = min(3, len(groups))
    rows_n = math.ceil(len(groups) / cols)
    fig = new_figure(4.3 * cols, 3.5 * rows_n)
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
    return png_bytes(fig)


def img(png: bytes, alt: str, caption: str | None = None, how: str | None = None) -> str:
    """A figure with an embedded PNG, its caption and a "how to read it" sentence below."""
    data = base64.b64encode(png).decode("ascii")
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    how_p = f'<p class="how">{esc(how)}</p>' if how else ""
    return f'<figure><img src="data:image/png;base64,{data}" alt="{esc(alt)}">{cap}</figure>{how_p}'


def solver_history_png(calls: Sequence[Sequence[float]], method: str) -> bytes:
    """Objective per outer iteration, solver calls one after the other, a dashed line where a
    new call starts (its objective is on new features: the jump is expected)."""
    fig = new_figure(6.5, 3.6)
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
    return png_bytes(fig)
