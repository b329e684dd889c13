"""ONNX export: onnxruntime reproduces the PyTorch predictor (scores and probabilities)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

REAL_CLOTHING = (
    Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ClothingAttributeDataset"
)
TOL = 1e-4


def make_checkpoint(
    path: Path,
    schema,
    image_size: int,
    *,
    rank: int = 5,
    seed: int = 0,
    image_height: int | None = None,
    **model: object,
) -> Path:
    """A predictor with ImageNet trunk/tails and a random (seeded) W = L S, bias and calibration,
    saved like a trained one (no training needed to test the graph); ``model`` overrides
    entries of the model metadata (e.g. ``tail="fc"``), ``image_height`` gives portrait input."""
    import dataclasses

    from apcnn.config import TrainConfig, config_to_dict
    from apcnn.models.backbone import DEFAULT_BACKBONE, create_backbone
    from apcnn.models.spec import ModelSpec
    from apcnn.predictor import build_predictor, save_predictor

    _, info = create_backbone(DEFAULT_BACKBONE, weights="none")
    model_meta = {
        "backbone": DEFAULT_BACKBONE,
        "weights": "imagenet",
        "tail": "head",
        "freeze_trunk": True,
        "num_attributes": schema.num_attributes,
        "rank": rank,
        **model,
    }
    pre = {"image_size": image_size, "mean": list(info.mean), "std": list(info.std)}
    if image_height is not None:
        pre["image_height"] = image_height
    spec = ModelSpec.from_checkpoint_meta(model_meta, pre)
    predictor = build_predictor(spec, pretrained=True)
    spec = dataclasses.replace(spec, feature_dim=predictor.cnn.feature_dim)
    m = spec.num_attributes
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in predictor.head.state_dict().items():
            tensor.copy_(torch.randn(tensor.shape, generator=g) * (0.05 if "L" in name else 1.0))
        predictor.calibration[0] = torch.rand(m, generator=g) + 0.5
        predictor.calibration[1] = torch.randn(m, generator=g) * 0.3
    save_predictor(
        path,
        predictor,
        spec=spec,
        schema=schema,
        config=config_to_dict(TrainConfig()),
        extra={"method": "MG-CNN"},
    )
    return path


def eval_transform(meta: dict):
    """The evaluation transform a checkpoint's (or sidecar's) meta records."""
    from apcnn.models.spec import ModelSpec

    return ModelSpec.from_meta(meta).eval_transform()


def torch_outputs(checkpoint: Path, batch: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    from apcnn.predictor import load_predictor

    predictor, _ = load_predictor(checkpoint)
    with torch.inference_mode():
        scores = predictor(batch)
        return scores.numpy(), predictor.probabilities(scores).numpy()


def assert_parity(checkpoint: Path, onnx_path: Path, batch: torch.Tensor) -> float:
    from apcnn.export import run_onnx

    s_t, p_t = torch_outputs(checkpoint, batch)
    s_o, p_o = run_onnx(onnx_path, batch.numpy())
    assert s_o.shape == s_t.shape and p_o.shape == p_t.shape
    err = max(float(np.abs(s_o - s_t).max()), float(np.abs(p_o - p_t).max()))
    print(f"ONNX parity max abs error {err:.2e} on batch {tuple(batch.shape)}")
    assert err < TOL
    assert float(np.abs(s_t).max()) > 0.1  # outputs are not trivially zero
    return err


@pytest.fixture(scope="module")
def synthetic_export(tmp_path_factory):
    from apcnn.data.synthetic import synthetic_schema
    from apcnn.export import export_onnx

    base = tmp_path_factory.mktemp("export")
    ckpt = make_checkpoint(base / "ckpt", synthetic_schema(), image_size=64)
    onnx_path = export_onnx(ckpt, base / "model.onnx")
    return ckpt, onnx_path


def test_synthetic_parity_and_dynamic_batch(synthetic_export):
    from apcnn.checkpoint import read_checkpoint_meta
    from apcnn.data import create_dataset
    from apcnn.export import load_onnx_meta

    ckpt, onnx_path = synthetic_export
    meta = load_onnx_meta(onnx_path)
    pre = meta["preprocessing"]
    assert pre["image_size"] == 64 and meta["schema"]["names"][0] == "red"
    assert meta["outputs"] == {
        "scores": ["batch", 13],
        "probabilities": ["batch", 13],
        "decisions": ["batch", 13],
    }
    # the sidecar describes the model exactly as the checkpoint does
    source = read_checkpoint_meta(ckpt)
    assert meta["model"] == source["model"] and pre == source["preprocessing"]
    ds = create_dataset("synthetic", split="test", num_images=64, transform=eval_transform(meta))
    images = torch.stack([ds[i]["image"] for i in range(7)])
    for batch in (images[:1], images):  # batch 1 and 7 through one graph
        assert_parity(ckpt, onnx_path, batch)


def test_fc_tail_with_window_and_flip_average_parity(tmp_path):
    """model.flip_average and model.pool_region are part of the exported graph: onnxruntime
    matches PyTorch, and an image and its mirror image get the same scores."""
    from apcnn.data.synthetic import synthetic_schema
    from apcnn.export import export_onnx

    ckpt = make_checkpoint(
        tmp_path / "ckpt",
        synthetic_schema(),
        image_size=64,
        tail="fc",
        pool_region=[0.15, 0.85, 0.25, 0.75],
        flip_average=True,
    )
    onnx_path = export_onnx(ckpt, tmp_path / "model.onnx")
    images = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert_parity(ckpt, onnx_path, images)
    plain, _ = torch_outputs(ckpt, images)
    mirrored, _ = torch_outputs(ckpt, images.flip(-1))
    np.testing.assert_allclose(mirrored, plain, rtol=1e-4, atol=1e-4)


def test_cli_export_and_predict_onnx_match_checkpoint(synthetic_export, tmp_path, capsys):
    from apcnn.cli import main
    from apcnn.data import create_dataset

    ckpt, _ = synthetic_export
    out = tmp_path / "cli" / "m.onnx"
    assert main(["export", "--checkpoint", str(ckpt), "--format", "onnx", "--out", str(out)]) == 0
    assert out.is_file() and Path(str(out) + ".json").is_file()
    ds = create_dataset("synthetic", split="test", num_images=64)
    paths = []
    for i in range(3):
        paths.append(str(tmp_path / f"{i}.png"))
        ds.load_image(i).save(paths[-1])
    capsys.readouterr()
    assert main(["predict", "--onnx", str(out), "--json", *paths]) == 0
    via_onnx = json.loads(capsys.readouterr().out)
    assert main(["predict", "--checkpoint", str(ckpt), "--json", *paths]) == 0
    via_torch = json.loads(capsys.readouterr().out)
    assert len(via_onnx) == 3
    for a, b in zip(via_onnx, via_torch, strict=True):
        assert a["image"] == b["image"]
        for name, v in a["attributes"].items():
            assert v["probability"] == pytest.approx(b["attributes"][name]["probability"], abs=TOL)
            assert v["score"] == pytest.approx(b["attributes"][name]["score"], abs=TOL)
    assert main(["predict", "--onnx", str(tmp_path / "missing.onnx"), paths[0]]) == 2


def test_portrait_input_export_and_predict_match_checkpoint(tmp_path):
    """preprocessing.image_height (portrait input): the graph takes (B, 3, H, W) images and
    predict --onnx feeds the same (H, W) transform as predict --checkpoint."""
    from PIL import Image

    from apcnn.data.synthetic import synthetic_schema
    from apcnn.export import export_onnx, load_onnx_meta, predict_onnx
    from apcnn.inference import predict_images

    ckpt = make_checkpoint(tmp_path / "ckpt", synthetic_schema(), image_size=32, image_height=48)
    onnx_path = export_onnx(ckpt, tmp_path / "m.onnx")
    meta = load_onnx_meta(onnx_path)
    assert meta["inputs"] == {"images": ["batch", 3, 48, 32]}
    assert meta["preprocessing"]["image_height"] == 48
    images = torch.rand(2, 3, 48, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert_parity(ckpt, onnx_path, images)
    photo = tmp_path / "photo.png"
    Image.new("RGB", (60, 90), (30, 160, 90)).save(photo)
    (via_onnx,) = predict_onnx(onnx_path, [photo])
    (via_torch,) = predict_images(ckpt, [str(photo)])
    for name, v in via_onnx["attributes"].items():
        assert v["score"] == pytest.approx(via_torch["attributes"][name]["score"], abs=TOL)


def test_export_errors_are_clear(tmp_path):
    from apcnn.export import export_onnx, predict_onnx

    with pytest.raises(FileNotFoundError):
        export_onnx(tmp_path / "nope", tmp_path / "m.onnx")
    (tmp_path / "x.onnx").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="sidecar"):
        predict_onnx(tmp_path / "x.onnx", ["a.png"])
    with pytest.raises(ValueError, match="no 'model'"):
        predict_onnx(tmp_path / "x.onnx", ["a.png"], meta={"schema": {}, "preprocessing": {}})


@pytest.mark.skipif(not (REAL_CLOTHING / "images").is_dir(), reason="Clothing dataset absent")
def test_clothing_images_parity_at_224(tmp_path):
    from apcnn.data import create_dataset
    from apcnn.export import export_onnx, load_onnx_meta

    ds = create_dataset("clothing", root=str(REAL_CLOTHING), split="all")
    ckpt = make_checkpoint(tmp_path / "ckpt", ds.schema, image_size=224, rank=8, seed=1)
    onnx_path = export_onnx(ckpt, tmp_path / "clothing.onnx")
    transform = eval_transform(load_onnx_meta(onnx_path))
    ds = create_dataset("clothing", root=str(REAL_CLOTHING), split="all", transform=transform)
    batch = torch.stack([ds[i]["image"] for i in range(0, 400, 50)])  # 8 real photos
    assert batch.shape == (8, 3, 224, 224)
    assert_parity(ckpt, onnx_path, batch)
