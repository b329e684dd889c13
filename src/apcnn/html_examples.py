"""The HTML report's examples: per group of attributes, thumbnails of the test photos the model
is most sure it got right and those it got wrong most confidently (:func:`pick_examples`), each
card listing the predicted and the true attributes."""

from __future__ import annotations

import base64
import io
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from .html_tables import esc
from .report_plots import HOW_TO

log = logging.getLogger("apcnn.html_report")  # the report's logger, as before the split


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
    """One card: image ``i``'s thumbnail and a line per member attribute predicted or present
    (red when wrong, grey "?" when its true label is missing)."""
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
            lines.append(f'<div class="unk">? {esc(text)}</div>')
        elif pred != truth:
            lines.append(f'<div class="err">✗ {esc(text)}</div>')
        else:
            lines.append(f"<div>{esc(text)}</div>")
    if not lines:
        lines.append("<div>none of the group's attributes predicted or present</div>")
    try:
        src = _thumbnail(dataset.load_image(i))
    except Exception as e:  # noqa: BLE001 - one unreadable image must not sink the report
        log.warning("no thumbnail for %s: %s", ident, e)
        src = None
    img = f'<img src="{src}" alt="{esc(ident)}">' if src else ""
    kind = "ex wrong" if wrong else "ex"
    return f'<div class="{kind}">{img}<div class="id">{esc(ident)}</div>{"".join(lines)}</div>'


def examples_section(
    dataset: Any,
    method: str,
    probs: np.ndarray,
    thresholds: np.ndarray,
    targets: np.ndarray,
    mask: np.ndarray,
    schema: Any,
    per_kind: int = 3,
) -> str:
    """Per group: cards of the ``per_kind`` most confidently right and wrong test photos
    (:func:`pick_examples`), then the "how to read it" line."""
    parts = [
        f"<p>{esc(method)} on {len(dataset)} test photos: per group, the {per_kind} it is most "
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
        parts.append(f"<h3>{esc(g)}</h3>")
        if not cards:
            parts.append('<p class="note">No labelled test photo for this group.</p>')
            continue
        if not wrong:
            cards.append('<div class="ex"><div>no mistake in this group</div></div>')
        parts.append(f'<div class="examples">{"".join(cards)}</div>')
    parts.append(f'<p class="how">{esc(HOW_TO["examples"])}</p>')
    return "".join(parts)
