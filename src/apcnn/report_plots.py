"""The report's figures: matplotlib's Agg renderer through the object API (no pyplot, no global
backend switch), imported only when a figure is drawn; plus :data:`HOW_TO`, the "how to read it"
sentence under each figure (report.md and report.html)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from apcnn.data.schema import AttributeSchema

from .report_tables import group_order


def _array(x: Any, name: str, ndim: int = 2) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {a.shape}")
    return a


def new_figure(width: float, height: float):
    """A matplotlib Figure (``width`` x ``height`` inches, 110 dpi); matplotlib imported here."""
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


def plot_per_attribute(path: Path, methods, schema, paper, key: str | None) -> bool:
    """Bars per attribute (ordered by group) and method of ``method[key]`` (the headline
    metric for None) -> ``path``; the paper's group means as dashed segments. False when no
    method has per-attribute numbers."""
    series = {}
    for name, block in methods.items():
        b = block.get(key) if key else block
        if isinstance(b, Mapping) and isinstance(b.get("per_attribute"), Mapping):
            series[name] = b
    if not series:
        return False
    order, spans = group_order(schema)
    m = len(order)
    fig = new_figure(max(6.0, 0.32 * m + 2), 4.2)
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


def plot_S(path: Path, S: Any, schema: AttributeSchema) -> None:
    """|S| (K, M), columns ordered by group, rows cropped to the latent tasks in use."""
    S = np.abs(_array(S, "S"))
    if S.shape[1] != schema.num_attributes:
        raise ValueError(f"S must be (K, {schema.num_attributes}), got {S.shape}")
    order, spans = group_order(schema)
    k_total, m = S.shape
    rows = latent_rows_in_use(S)
    if rows.size == 0:  # all zero: show it as it is
        rows = np.arange(k_total)
    S = S[rows]
    k = S.shape[0]
    fig = new_figure(max(6.0, 0.3 * m + 2), min(10.0, max(3.5, 0.06 * k + 2)))
    ax = fig.add_subplot()
    im = ax.imshow(S[:, order], aspect="auto", interpolation="nearest", cmap="viridis")
    _group_axis(ax, schema, order, spans)
    if k <= 40:
        ax.set_yticks(range(k), [str(r) for r in rows], fontsize=7)
    label = "latent task k" if k == k_total else f"latent task k ({k} of K = {k_total} in use)"
    ax.set_ylabel(label if k != k_total else f"latent task k (K = {k_total})")
    fig.colorbar(im, ax=ax, label="|S[k, m]|")
    fig.savefig(path)


def plot_sharing(path: Path, W: Any, schema: AttributeSchema) -> None:
    """cos(w_a, w_b) of the columns of W (D, M), attributes ordered by group -> ``path``."""
    W = _array(W, "W")
    if W.shape[1] != schema.num_attributes:
        raise ValueError(f"W must be (D, {schema.num_attributes}), got {W.shape}")
    norms = np.linalg.norm(W, axis=0)
    Wn = W / np.where(norms > 0, norms, 1.0)
    C = Wn.T @ Wn
    order, spans = group_order(schema)
    m = len(order)
    size = max(5.0, 0.28 * m + 2)
    fig = new_figure(size + 1, size)
    ax = fig.add_subplot()
    im = ax.imshow(C[np.ix_(order, order)], vmin=-1, vmax=1, cmap="RdBu_r", interpolation="nearest")
    _group_axis(ax, schema, order, spans, axis="both")
    fig.colorbar(im, ax=ax, label="cos(w_a, w_b)")
    fig.savefig(path)


def plot_history(path: Path, history: Any) -> None:
    """The solver objective per outer iteration (one curve per name) -> ``path``."""
    if isinstance(history, Mapping):
        curves = {str(k): np.asarray(v, dtype=np.float64).ravel() for k, v in history.items()}
    elif len(history) and isinstance(history[0], Mapping):
        curves = {"objective": np.asarray([h["objective"] for h in history], dtype=np.float64)}
    else:
        curves = {"objective": np.asarray(history, dtype=np.float64).ravel()}
    fig = new_figure(6.0, 3.8)
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
