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

- results table (methods x groups + total; the paper's Table III numbers in parentheses when the
  schema has the Clothing groups), balanced accuracy and average precision tables;
- per-attribute bars (the paper's group means as dashed segments where it applies);
- per method: |S| (K x M, columns ordered by group) and the attribute-sharing matrix
  cos(w_a, w_b) of the columns of W = L S;
- precision-recall curves per attribute on the test split (the checkpoints are re-run on it;
  skipped with a note when the dataset is not available or ``pr_curves=False``);
- training curves from metrics.jsonl (SGD loss, validation accuracy, solver objective per call)
  and the solver's objective history;
- per-attribute table and the configuration.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["write_html_report", "load_run", "test_split_scores"]

log = logging.getLogger(__name__)

_METHOD_ORDER = ("S-CNN", "M-CNN", "MG-CNN")

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
"""


# ------------------------------------------------------------------------------------ loading
def _method_key(name: str) -> tuple[int, str]:
    return (_METHOD_ORDER.index(name) if name in _METHOD_ORDER else len(_METHOD_ORDER), name)


def load_run(run_dir: str | Path) -> dict[str, Any]:
    """Everything the report needs from a run folder.

    Returns ``{"results": metrics.json, "rows": metrics.jsonl rows, "config_text": str | None,
    "schema": AttributeSchema, "checkpoints": {method: path}, "L": {method: (D, K)},
    "S": {method: (K, M)}, "W": {method: (D, M)}, "histories": {method: [objective]}}``
    (methods ordered S-CNN, M-CNN, MG-CNN, then others).
    """
    from .checkpoint import CheckpointError, load_checkpoint, read_checkpoint_meta
    from .data.schema import AttributeSchema
    from .predictor import FORMAT
    from .runlog import read_metrics

    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"run folder {run} not found; pass the --out folder of a training")
    metrics_path = run / "metrics.json"
    if not metrics_path.is_file():
        raise FileNotFoundError(
            f"{metrics_path} not found; the run has not finished (train it, or --resume it)"
        )
    results = json.loads(metrics_path.read_text())
    rows = read_metrics(run / "metrics.jsonl") if (run / "metrics.jsonl").is_file() else []
    config_text = (run / "config.yaml").read_text() if (run / "config.yaml").is_file() else None

    ckpts: dict[str, Path] = {}
    L: dict[str, np.ndarray] = {}
    S: dict[str, np.ndarray] = {}
    schema = None
    ck_root = run / "checkpoints"
    for path in sorted(ck_root.iterdir()) if ck_root.is_dir() else []:
        if not path.is_dir() or path.name == "state":
            continue
        try:
            tensors, meta = load_checkpoint(path)
        except (CheckpointError, FileNotFoundError) as e:
            log.warning("skipping checkpoint %s: %s", path, e)
            continue
        if meta.get("format") != FORMAT or "head.S" not in tensors:
            continue
        method = str(meta.get("method") or path.name)
        ckpts[method] = path
        L[method] = tensors["head.L"].float().numpy()
        S[method] = tensors["head.S"].float().numpy()
        if schema is None:
            schema = AttributeSchema.from_dict(meta["schema"])
    if schema is None:  # no predictor checkpoint: one group over the metrics' attributes
        block = next(iter(results.get("methods", {}).values()), {})
        names = list(block.get("per_attribute", {}))
        if not names:
            raise ValueError(f"{run}: no predictor checkpoint and no per-attribute metrics")
        schema = AttributeSchema(names=tuple(names), groups=(("all", tuple(range(len(names)))),))
    order = sorted(ckpts, key=_method_key)
    histories: dict[str, list[float]] = {}
    if (ck_root / "state").is_dir():
        try:
            raw = read_checkpoint_meta(ck_root / "state").get("histories") or {}
            # one list per solver call; concatenated for the curve (jumps = new features)
            histories = {
                m: [v for solve in h for v in (solve if isinstance(solve, list) else [solve])]
                for m, h in raw.items()
            }
        except (CheckpointError, FileNotFoundError, ValueError) as e:
            log.warning("no solver histories: %s", e)
    return {
        "results": results,
        "rows": rows,
        "config_text": config_text,
        "schema": schema,
        "checkpoints": {m: ckpts[m] for m in order},
        "L": {m: L[m] for m in order},
        "S": {m: S[m] for m in order},
        "W": {m: L[m] @ S[m] for m in order},
        "histories": histories,
    }


def test_split_scores(
    checkpoints: Mapping[str, str | Path],
    *,
    split: str = "test",
    root: str | None = None,
    device: str = "cpu",
    batch_size: int | None = None,
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Scores of each checkpoint on ``split`` of its dataset: ``({method: (N, M)}, targets (N, M)
    in {-1, 0, +1}, mask (N, M) bool)``.

    The split is rebuilt with :func:`apcnn.inference.checkpoint_dataset` from the first checkpoint's
    config (``root`` overrides ``data.root``); each checkpoint sees it through its own evaluation
    transform (:meth:`~apcnn.models.spec.ModelSpec.eval_transform`). The frozen trunk is run once
    when every checkpoint has the same trunk weights and preprocessing; each method then only
    runs its tails and head.
    """
    import copy

    import torch

    from .features import extract_features
    from .inference import checkpoint_dataset
    from .predictor import checkpoint_spec, load_predictor

    if not checkpoints:
        raise ValueError("no checkpoints to score")
    loaded = {m: load_predictor(p) for m, p in checkpoints.items()}
    specs = {m: checkpoint_spec(meta, checkpoints[m]) for m, (_, meta) in loaded.items()}
    first_pred, meta = next(iter(loaded.values()))
    cfg, dataset = checkpoint_dataset(meta, split=split, root=root)
    first_pre = next(iter(specs.values())).preprocessing_dict()
    datasets = {}
    for method, spec in specs.items():
        datasets[method] = dataset
        if spec.preprocessing_dict() != first_pre:  # same images and labels, its own transform
            datasets[method] = copy.copy(dataset)
            datasets[method].transform = spec.eval_transform()
    bs = batch_size or cfg.train.batch_size
    dev = torch.device(device)

    def trunk_state(pred: Any) -> dict[str, torch.Tensor]:
        return {k: v for k, v in pred.state_dict().items() if k.startswith("cnn.trunk.")}

    ref = trunk_state(first_pred)
    shared = all(
        trunk_state(p).keys() == ref.keys()
        and all(torch.equal(v, ref[k]) for k, v in trunk_state(p).items())
        for p, _ in loaded.values()
    ) and all(s.freeze_trunk and datasets[m] is dataset for m, s in specs.items())
    scores: dict[str, np.ndarray] = {}
    trunk = None
    if shared:
        first_pred.to(dev)
        trunk = extract_features(
            first_pred.cnn.forward_trunk,
            dataset,
            batch_size=bs,
            num_workers=cfg.data.num_workers,
            device=dev,
            desc="trunk",
        )
    for method, (pred, _) in loaded.items():
        pred.to(dev).eval()
        if trunk is not None:
            with torch.inference_mode():
                out = [pred.forward_from_trunk(c.to(dev)).float().cpu() for c in trunk.split(bs)]
            scores[method] = torch.cat(out).numpy()
        else:
            scores[method] = extract_features(
                pred, datasets[method], batch_size=bs, num_workers=cfg.data.num_workers, device=dev
            ).numpy()
    return scores, np.asarray(dataset.targets), np.asarray(dataset.mask, dtype=bool)


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
    methods = sorted({str(r.get("method")) for r in rows if r.get("method")}, key=_method_key)
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


def _img(png: bytes, alt: str, caption: str | None = None) -> str:
    data = base64.b64encode(png).decode("ascii")
    cap = f"<figcaption>{_esc(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="data:image/png;base64,{data}" alt="{_esc(alt)}">{cap}</figure>'


def _results_table(
    methods: Mapping[str, Any], paper: Mapping[str, Any] | None, key: str | None = None
) -> str:
    blocks = {}
    for name, block in methods.items():
        b = block.get(key) if key else block
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
    head = "".join(f"<th>{_esc(g)}</th>" for g in [*groups, "total"])
    out = [f"<table><thead><tr><th>method</th>{head}</tr></thead><tbody>"]
    for name in names:
        b, p = blocks.get(name, {}), paper.get(name, {})
        std = b.get("std") or {}
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
        label = _esc(name) + ("" if name in blocks else ' <span class="paper">(paper)</span>')
        out.append(f"<tr><td>{label}</td>{''.join(cells)}</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _per_attribute_table(methods: Mapping[str, Any], schema: Any) -> str:
    names = [n for n, b in methods.items() if isinstance(b.get("per_attribute"), Mapping)]
    if not names:
        return ""
    ap = {n: (methods[n].get("average_precision") or {}).get("per_attribute") or {} for n in names}
    head = "".join(f"<th>{_esc(n)} acc</th><th>{_esc(n)} AP</th>" for n in names)
    out = [f"<table><thead><tr><th>attribute</th><th>group</th>{head}</tr></thead><tbody>"]
    for _g, idx in schema.groups:
        for i in idx:
            a = schema.names[i]
            cells = "".join(
                f"<td>{_pct(methods[n]['per_attribute'].get(a))}</td><td>{_pct(ap[n].get(a))}</td>"
                for n in names
            )
            out.append(f"<tr><td>{_esc(a)}</td><td>{_esc(schema.group_of(i))}</td>{cells}</tr>")
    out.append("</tbody></table>")
    return "".join(out)


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
    from .reports import _plot_S, _plot_sharing, paper_for_schema, write_report

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

    # ---------------------------------------------------------------- results
    parts.append("<h2>Results</h2>")
    metric = headline or "score"
    parts.append(f"<h3>{_esc(metric)} (%)</h3>" + _results_table(methods, paper))
    if paper:
        parts.append(
            '<p class="paper">Paper numbers in parentheses: Abdulnabi et al. 2015, '
            "Table III (Clothing Attribute Dataset).</p>"
        )
    for key, label in (
        ("balanced_accuracy", "Balanced accuracy (%)"),
        ("average_precision", "Average precision (%)"),
    ):
        table = _results_table(methods, None, key)
        if table:
            parts.append(f"<h3>{_esc(label)}</h3>{table}")
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

    # ---------------------------------------------------------------- per attribute
    per_png = run / "per_attribute.png"
    if markdown and per_png.is_file():
        parts.append("<h2>Per-attribute scores</h2>")
        caption = "Per-attribute accuracy by method, attributes ordered by group"
        if paper:
            caption += "; dashed: the paper's group means (it reports no per-attribute numbers)"
        parts.append(_img(per_png.read_bytes(), "per-attribute scores", caption))

    # ---------------------------------------------------------------- S and W
    if data["S"]:
        parts.append("<h2>Multi-task layer</h2>")
        parts.append(
            "<p>|S| (latent tasks × attributes, columns ordered by group) and the "
            "attribute-sharing matrix: cosine similarity of the columns of W = L S.</p>"
        )
        for method in data["S"]:
            parts.append(f"<h3>{_esc(method)}</h3>")
            parts.append(
                _img(
                    _plot_to_png(_plot_S, data["S"][method], schema),
                    f"|S| of {method}",
                    f"{method}: |S|, shape "
                    f"{data['S'][method].shape[0]} × {data['S'][method].shape[1]}",
                )
            )
            parts.append(
                _img(
                    _plot_to_png(_plot_sharing, data["W"][method], schema),
                    f"attribute sharing of {method}",
                    f"{method}: cos(w_a, w_b) of W's columns",
                )
            )

    # ---------------------------------------------------------------- PR curves
    parts.append("<h2>Precision–recall curves</h2>")
    if not pr_curves:
        parts.append('<p class="note">Skipped (pr_curves=False / --no-pr).</p>')
    elif not data["checkpoints"]:
        parts.append('<p class="note">Skipped: the run has no predictor checkpoints.</p>')
    else:
        try:
            scores, targets, mask = test_split_scores(
                data["checkpoints"], split=split, root=root, device=device
            )
        except Exception as e:  # noqa: BLE001 - the report still has everything else
            log.warning("precision-recall curves skipped: %s", e)
            parts.append(
                f'<p class="note">Skipped: could not score the {_esc(split)} split '
                f"({_esc(type(e).__name__)}: {_esc(e)}).</p>"
            )
        else:
            parts.append(
                f"<p>On the {_esc(split)} split ({targets.shape[0]} images), raw "
                "scores; missing labels excluded.</p>"
            )
            for method, s in scores.items():
                parts.append(
                    _img(
                        _pr_curves(s, targets, mask, schema, method),
                        f"precision-recall curves of {method}",
                        f"{method}: precision–recall per attribute, one panel per group",
                    )
                )

    # ---------------------------------------------------------------- training curves
    parts.append("<h2>Training</h2>")
    curves = _training_curves(data["rows"])
    if curves:
        parts.append(
            _img(curves, "training curves", "From metrics.jsonl: per SGD epoch and per solver call")
        )
    obj_png = run / "objective.png"
    if markdown and history and obj_png.is_file():
        parts.append(
            _img(
                obj_png.read_bytes(),
                "solver objective history",
                f"{last}: objective of eq. 2 over the solver's outer iterations",
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
