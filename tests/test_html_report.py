"""The self-contained HTML report of a run: content, no external resources, and it renders in
headless Chromium without console errors (screenshot checked for non-blank content)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

CHROMIUM = next(
    (p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser") if Path(p).exists()), None
)


@pytest.fixture(scope="module")
def run_dir(tiny_run):
    """The session's tiny trained run (tests/conftest.py); the report is written into it."""
    return tiny_run[0]


@pytest.fixture(scope="module")
def report(run_dir):
    from apcnn.html_report import write_html_report

    return write_html_report(run_dir)


@pytest.mark.slow
def test_report_is_self_contained_and_complete(report, run_dir):
    text = report.read_text()
    assert report == run_dir / "report.html" and (run_dir / "report.md").is_file()
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    # no external resources, no scripts
    assert "<script" not in text.lower() and "<link" not in text.lower()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//|file:)""", text, re.I)
    srcs = re.findall(r'<img src="([^"]+)"', text)
    assert srcs and all(
        s.startswith(("data:image/png;base64,", "data:image/jpeg;base64,")) for s in srcs
    )
    # sections: results table, examples, decisions, labels, |S|, sharing, PR, training, config
    for needle in [
        "<h2>Results</h2>",
        "<table>",
        "MG-CNN",
        "S-CNN",
        "<th>mA</th>",
        "mA: mean balanced accuracy",
        "<h2>Examples</h2>",
        "<h2>Decisions per attribute: thresholds and confusion counts</h2>",
        "<th>threshold</th><th>TP</th><th>FP</th><th>FN</th><th>TN</th>",
        "Thresholds: <code>train.threshold: 0</code>, the trained boundary",
        "inst-F1</th>",
        "<h3>Instance-based metrics (%)</h3>",
        "<h3>Instance F1 per group (%)</h3>",
        "<h3>mA: mean balanced accuracy (%)</h3>",
        "<h2>Labels per split</h2>",
        "train (+ / − / ?)",
        "|S| of MG-CNN",
        "latent tasks in use",
        "attribute sharing of MG-CNN",
        "precision-recall curves of MG-CNN",
        "training curves",
        "solver objective history",
        "Configuration",
        "per-attribute scores",
    ]:
        assert needle in text, needle
    assert "Skipped" not in text
    # a "how to read it" sentence under every figure
    figures = text.count("<figure>")
    assert figures >= 6 and text.count('<p class="how">How to read it') >= figures
    # thumbnails: every group shows examples (a picture per card), with predicted and true values
    from apcnn.html_report import load_run

    groups = [g for g, _ in load_run(run_dir)["schema"].groups]
    examples = text.split("<h2>Examples</h2>")[1].split("<h2>")[0]
    assert all(f"<h3>{g}</h3>" in examples for g in groups)
    thumbs = re.findall(r'<img src="data:image/jpeg;base64,', examples)
    assert len(thumbs) >= 2 * len(groups) and "true " in examples and "p=" in examples
    import base64
    import io

    from PIL import Image

    for s in srcs:  # every embedded image decodes
        Image.open(io.BytesIO(base64.b64decode(s.split(",", 1)[1]))).verify()


@pytest.mark.slow
def test_cli_report_without_pr_curves(run_dir, tmp_path, capsys):
    from apcnn.cli import main

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    (copy / "report.html").unlink(missing_ok=True)
    assert main(["report", str(copy), "--no-pr"]) == 0
    text = (copy / "report.html").read_text()
    assert "Skipped (pr_curves=False" in text and "<h2>Results</h2>" in text
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "not found" in capsys.readouterr().err


@pytest.mark.slow
def test_rescored_test_split_reproduces_metrics_json(run_dir):
    """The PR curves' scores are the ones training evaluated (same split, same numbers), and
    the decisions the report shows (p >= the checkpoint's threshold) give the saved metrics;
    with the default rule (train.threshold: "0") they are the trained boundary's, score > 0."""
    import json

    from apcnn.html_report import load_run, test_split_scores
    from apcnn.metrics import attribute_metrics
    from apcnn.report_data import score_run

    data = load_run(run_dir)
    scores, targets, mask = test_split_scores(data["checkpoints"])
    scored, _ = score_run(data["checkpoints"], "test", None, "cpu", True)
    saved = json.loads((run_dir / "metrics.json").read_text())["methods"]
    assert set(scores) == set(saved) == {"S-CNN", "M-CNN", "MG-CNN"}
    for method, s in scores.items():
        np.testing.assert_array_equal(scored["scores"][method], s)
        assert scored["rules"][method] == "0" == saved[method]["thresholds"]["rule"]
        decided = scored["probs"][method] >= scored["thresholds"][method]
        by_threshold = attribute_metrics(s, targets, mask, data["schema"], decisions=decided)
        by_score = attribute_metrics(s, targets, mask, data["schema"])  # score > 0
        for metric in ("accuracy", "balanced_accuracy", "f1"):
            assert by_threshold[metric]["total"] == by_score[metric]["total"]
            assert by_threshold[metric]["per_attribute"] == pytest.approx(
                by_score[metric]["per_attribute"], nan_ok=True, rel=0, abs=0
            )
        assert by_threshold["instance"] == by_score["instance"]
        assert by_threshold["accuracy"]["total"] == pytest.approx(saved[method]["total"], abs=1e-6)
        f1 = saved[method]["instance"]["f1"]["total"]
        assert by_threshold["instance"]["f1"]["total"] == pytest.approx(f1, abs=1e-6)
        np.testing.assert_allclose(
            scored["thresholds"][method], scored["boundaries"][method], rtol=1e-6
        )
    # W = L S from the checkpoint tensors, S of MG-CNN has the configured rank
    assert data["S"]["MG-CNN"].shape == (8, 13)
    assert data["W"]["MG-CNN"].shape == (data["L"]["MG-CNN"].shape[0], 13)


def test_report_errors_on_unfinished_run(tmp_path):
    from apcnn.html_report import write_html_report

    (tmp_path / "run").mkdir()
    with pytest.raises(FileNotFoundError, match="metrics.json"):
        write_html_report(tmp_path / "run")


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="/usr/bin/chromium absent")
def test_report_renders_in_headless_chromium(report, tmp_path):
    from PIL import Image

    shot = tmp_path / "shot.png"
    profile = tmp_path / "profile"
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        "--enable-logging=stderr",
        "--v=0",
        "--hide-scrollbars",
        f"--screenshot={shot}",
        "--window-size=1280,2400",
        report.resolve().as_uri(),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    log = proc.stdout + proc.stderr
    assert shot.is_file(), log[-2000:]
    console = [
        ln
        for ln in log.splitlines()
        if "Uncaught" in ln
        or ("CONSOLE" in ln and "error" in ln.lower())
        or "Failed to load resource" in ln
        or "net::ERR_" in ln
    ]
    assert not console, "\n".join(console)
    img = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float64)
    assert img.shape[:2] == (2400, 1280)
    # not blank: plenty of non-white pixels (tables, text, plots) and colour (the figures)
    non_white = (img.min(axis=2) < 230).mean()
    coloured = (img.max(axis=2) - img.min(axis=2) > 60).mean()
    print(f"screenshot {shot}: non-white {non_white:.3f}, coloured {coloured:.3f}")
    assert non_white > 0.05 and coloured > 0.01
    keep = os.environ.get("APCNN_KEEP_SCREENSHOT")
    if keep:
        shutil.copy(shot, keep)


def test_pick_examples_most_confident_right_and_wrong():
    from apcnn.html_report import label_counts, pick_examples

    # 5 images, attributes 0 and 1 in the group; thresholds 0.5 and 0.7
    probs = np.array(
        [[0.99, 0.95], [0.6, 0.8], [0.1, 0.9], [0.45, 0.2], [0.3, 0.65]], dtype=np.float32
    )
    targets = np.array([[1, 1], [1, 1], [1, 1], [-1, -1], [-1, 1]], dtype=np.float32)
    mask = np.ones_like(targets, dtype=bool)
    mask[3, 1] = False  # image 3: only attribute 0 labelled (and right)
    right, wrong = pick_examples(probs, np.array([0.5, 0.7]), targets, mask, (0, 1), per_kind=2)
    assert right == [0, 1]  # mean |p - t|: 0.37, 0.1 (image 3: 0.05)
    assert wrong == [2, 4]  # image 2 misses attribute 0 by 0.4; image 4 attribute 1 by 0.05
    counts = label_counts({"test": type("D", (), {"targets": targets, "mask": mask})()})
    assert counts["test"].tolist() == [[3, 2, 0], [4, 0, 1]]
