"""Decision thresholds chosen on validation (``train.threshold: balanced``) in a real training
run: saved in the checkpoint and in metrics.json, used by the test metrics, ``evaluate``,
``predict``, the ONNX model and the reports."""

from __future__ import annotations

import json

import numpy as np
import pytest


@pytest.fixture(scope="module")
def balanced_run(tmp_path_factory, session_cache):
    """The tiny synthetic run (tests/_tiny.py), S-CNN and MG-CNN, thresholds for balanced
    accuracy."""
    from _tiny import tiny_config
    from apcnn.training import train

    out = tmp_path_factory.mktemp("balanced") / "run"
    extra = ("train.threshold=balanced", "train.methods=[S-CNN, MG-CNN]")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("APCNN_CACHE", str(session_cache))
        result = train(tiny_config(out, *extra))
    return out, result


@pytest.mark.slow
def test_balanced_thresholds_are_chosen_saved_and_decide_everywhere(balanced_run, tmp_path):
    from apcnn.calibration import boundary_thresholds
    from apcnn.checkpoint import load_checkpoint
    from apcnn.inference import evaluate_checkpoint, predict_images
    from apcnn.metrics import attribute_metrics
    from apcnn.report_data import score_run

    out, result = balanced_run
    saved = json.loads((out / "metrics.json").read_text())["methods"]
    schema = result["schema"]
    names = list(schema.names)
    ckpts = {m: out / "checkpoints" / m for m in ("S-CNN", "MG-CNN")}
    val, _ = score_run(ckpts, "val", None, "cpu", True)
    test, _ = score_run(ckpts, "test", None, "cpu", True)
    for method, ckpt in ckpts.items():
        tensors, meta = load_checkpoint(ckpt)
        thr = tensors["threshold"].numpy()
        boundary = boundary_thresholds(tensors["calibration"].double().numpy())
        moved = ~np.isclose(thr, boundary, rtol=1e-6, atol=0)
        assert moved.any(), f"{method}: no threshold moved off the boundary"
        log = (out / "train.log").read_text()
        assert f"{method} thresholds (train.threshold=balanced): {moved.sum()} of 13 " in log
        # recorded where users look: metrics.json (results.json fields) and the checkpoint
        block = saved[method]["thresholds"]
        assert block["rule"] == "balanced" == meta["config"]["train"]["threshold"]
        np.testing.assert_allclose([block["per_attribute"][n] for n in names], thr, rtol=1e-6)
        # chosen on validation: each moved attribute raises its validation balanced accuracy
        s_val = val["scores"][method]

        def on_val(t, s_val=s_val, p=val["probs"][method], schema=schema):
            return attribute_metrics(s_val, val["targets"], val["mask"], schema, decisions=p >= t)

        chosen = on_val(thr)["balanced_accuracy"]["per_attribute"]
        at_boundary = on_val(boundary.astype(np.float32))["balanced_accuracy"]["per_attribute"]
        for j in np.flatnonzero(moved):
            assert chosen[names[j]] > at_boundary[names[j]], names[j]
        # the test metrics are the predictor's decisions p >= threshold, as evaluate's
        decided = test["probs"][method] >= test["thresholds"][method]
        mine = attribute_metrics(
            test["scores"][method], test["targets"], test["mask"], schema, decisions=decided
        )
        assert mine["accuracy"]["total"] == pytest.approx(saved[method]["total"], abs=1e-6)
        ma = saved[method]["balanced_accuracy"]["total"]
        assert mine["balanced_accuracy"]["total"] == pytest.approx(ma, abs=1e-6)
        f1 = saved[method]["instance"]["f1"]["total"]
        assert mine["instance"]["f1"]["total"] == pytest.approx(f1, abs=1e-6)
        evaluated = evaluate_checkpoint(ckpt)
        assert evaluated["metrics"]["accuracy"]["total"] == pytest.approx(
            saved[method]["total"], abs=1e-6
        )
        assert "train.threshold=balanced" in evaluated["table"]
        assert "inst-F1" in evaluated["table"] and "instance-based metrics" in evaluated["table"]

    # predict and the ONNX model decide p >= the saved threshold
    from apcnn.data import create_dataset

    ds = create_dataset("synthetic", split="test", num_images=160, image_size=64)
    paths = []
    for i in range(6):
        paths.append(str(tmp_path / f"{i}.png"))
        ds.load_image(i).save(paths[-1])
    ckpt = ckpts["MG-CNN"]
    thr = load_checkpoint(ckpt)[0]["threshold"].numpy()
    via_torch = predict_images(ckpt, paths)
    for item in via_torch:
        for j, v in enumerate(item["attributes"].values()):
            assert v["threshold"] == pytest.approx(float(thr[j]))
            assert v["decision"] == bool(np.float32(v["probability"]) >= thr[j])
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from apcnn.export import export_onnx, predict_onnx

    onnx_path = export_onnx(ckpt, tmp_path / "m.onnx")
    sidecar = json.loads((tmp_path / "m.onnx.json").read_text())
    np.testing.assert_allclose(sidecar["thresholds"], thr, rtol=1e-6)
    for a, b in zip(predict_onnx(onnx_path, paths), via_torch, strict=True):
        for va, vb in zip(a["attributes"].values(), b["attributes"].values(), strict=True):
            assert va["decision"] == bool(
                np.float32(va["probability"]) >= np.float32(va["threshold"])
            )
            assert (
                va["decision"] == vb["decision"] or abs(va["probability"] - va["threshold"]) < 1e-5
            )


@pytest.mark.slow
def test_reports_name_the_rule_and_show_the_chosen_thresholds(balanced_run):
    from apcnn.html_report import write_html_report

    out, _ = balanced_run
    text = write_html_report(out).read_text()
    decisions = text.split("<h2>Decisions per attribute")[1].split("<h2>")[0]
    assert "<code>train.threshold: balanced</code>" in decisions
    assert "boundary σ(c)</th>" in decisions
    md = (out / "report.md").read_text()
    assert "`train.threshold: balanced`, chosen on the validation split" in md
    assert "### Decision thresholds (decide p >= t)" in md
