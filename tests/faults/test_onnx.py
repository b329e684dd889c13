"""ONNX faults: an exported file that is truncated or replaced after export."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory):
    from apcnn.export import export_onnx

    out = tmp_path_factory.mktemp("onnx") / "model.onnx"
    export_onnx(tiny_run[0] / "checkpoints" / "S-CNN", out)
    return out


def _image(tmp_path):
    from PIL import Image

    path = tmp_path / "x.png"
    Image.new("RGB", (64, 64), (120, 30, 200)).save(path)
    return str(path)


def test_truncated_onnx_is_caught_by_the_sidecar_hash(exported, tmp_path, capsys):
    from apcnn.cli import main

    bad = tmp_path / "model.onnx"
    bad.write_bytes(exported.read_bytes()[: exported.stat().st_size // 2])
    (tmp_path / "model.onnx.json").write_text((exported.parent / "model.onnx.json").read_text())
    assert main(["predict", "--onnx", str(bad), _image(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "sha256" in err and "export it again" in err and len(err.splitlines()) == 1, err


def test_truncated_onnx_without_a_hash_is_one_line(exported, tmp_path):
    from apcnn.export import predict_onnx

    bad = tmp_path / "model.onnx"
    bad.write_bytes(exported.read_bytes()[:1000])
    meta = json.loads((exported.parent / "model.onnx.json").read_text())
    del meta["sha256"]
    with pytest.raises(ValueError, match="onnxruntime cannot load it") as info:
        predict_onnx(bad, [_image(tmp_path)], meta)
    assert len(str(info.value).splitlines()) == 1
