"""The HTML report's example cards: a missing true label is shown as unknown (grey, "?"),
never as a right answer and never as a mistake."""

from __future__ import annotations

import re

import numpy as np
from PIL import Image

from apcnn.data.schema import AttributeSchema
from apcnn.html_report import _example_card


class _Photos:
    """The two methods a card reads from a dataset."""

    def image_path(self, i: int):
        return None

    def load_image(self, i: int) -> Image.Image:
        return Image.new("RGB", (8, 8), (200, 30, 30))


def _lines(card: str) -> dict[str, str]:
    """attribute name -> the class of its line ('' for a plain line)."""
    out = {}
    for cls, text in re.findall(r'<div(?: class="(\w+)")?>([^<]*)</div>', card):
        name = text.lstrip("✗? ").split(":")[0]
        if cls != "id" and ":" in text:
            out[name] = cls
    return out


def test_missing_true_label_is_unknown_not_right_or_wrong():
    schema = AttributeSchema(
        names=("red", "blue", "striped", "collar"), groups=(("all", (0, 1, 2, 3)),)
    )
    # image 0: red predicted and true (right), blue predicted with its label missing (unknown),
    # striped predicted but false (wrong), collar not predicted and its label missing (left out)
    probs = np.array([[0.9, 0.8, 0.7, 0.1]], dtype=np.float32)
    thresholds = np.full(4, 0.5, dtype=np.float32)
    targets = np.array([[1, 0, -1, 0]], dtype=np.float32)
    mask = np.array([[True, False, True, False]])
    card = _example_card(
        _Photos(), 0, (0, 1, 2, 3), schema, probs, thresholds, targets, mask, wrong=True
    )
    lines = _lines(card)
    assert lines == {"red": "", "blue": "unk", "striped": "err"}, card
    assert "blue: yes (p=0.80), true unknown (label missing)" in card
    assert "true ?" not in card
    assert "red: yes (p=0.90), true yes" in card and "✗ striped: yes (p=0.70), true no" in card
