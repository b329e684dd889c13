from __future__ import annotations

import hashlib

import pytest
import torch
import torch.nn.functional as F

from apcnn.models.backbone import (
    BackboneInfo,
    bundled_weights_path,
    create_backbone,
    file_sha256,
    load_state_dict_file,
    load_weights,
)


@pytest.fixture(scope="module")
def lite0():
    return create_backbone()


def _preprocess(img, info: BackboneInfo) -> torch.Tensor:
    """Resize the short side to 224/crop_pct (bicubic), centre-crop 224, normalise."""
    x = torch.from_numpy(img).permute(2, 0, 1).float()[None] / 255
    size = info.input_size[-1]
    short = round(size / info.crop_pct)
    h, w = x.shape[-2:]
    s = short / min(h, w)
    x = F.interpolate(x, size=(round(h * s), round(w * s)), mode="bicubic", antialias=True)
    x = x.clamp(0, 1)
    top, left = (x.shape[-2] - size) // 2, (x.shape[-1] - size) // 2
    return info.normalize(x[..., top : top + size, left : left + size])


def test_bundled_weights_loaded_by_position(lite0):
    model, info = lite0
    sd = torch.load(bundled_weights_path(), map_location="cpu", weights_only=True)
    assert len(sd) == len(model.state_dict()) == 296
    for (_, src), (_, dst) in zip(sd.items(), model.state_dict().items(), strict=True):
        assert torch.equal(src, dst)
    assert info.name == "tf_efficientnet_lite0"
    assert info.weights == "imagenet"
    assert info.extra["matched_by"] == "position"
    assert info.weights_sha256 == hashlib.sha256(bundled_weights_path().read_bytes()).hexdigest()
    assert info.feature_dim == 1280 and info.num_classes == 1000
    assert info.mean == (0.5, 0.5, 0.5) and info.std == (0.5, 0.5, 0.5)
    assert info.input_size == (3, 224, 224)
    assert not model.training


def test_classifies_real_photos(lite0):
    skimage_data = pytest.importorskip("skimage.data")
    model, info = lite0
    photos = [skimage_data.chelsea(), skimage_data.coffee()]
    x = torch.cat([_preprocess(img, info) for img in photos])
    with torch.no_grad():
        top5 = model(x).topk(5, dim=1).indices
    cats = set(range(281, 286))
    cup_like = {967, 968, 504}  # espresso, cup, coffee mug
    assert cats & set(top5[0].tolist())
    assert int(top5[0, 0]) in cats
    assert int(top5[1, 0]) in cup_like


def test_measured_normalisation_beats_imagenet_stats(lite0):
    """The recorded (0.5, 0.5) scaling is more confident on the right class than ImageNet stats."""
    skimage_data = pytest.importorskip("skimage.data")
    model, info = lite0
    imagenet = BackboneInfo(
        **{**info.__dict__, "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
    )
    img = skimage_data.coffee()
    with torch.no_grad():
        p_ours = model(_preprocess(img, info)).softmax(1)[0, 967]
        p_imnet = model(_preprocess(img, imagenet)).softmax(1)[0, 967]
    assert p_ours > p_imnet


def test_info_roundtrip_and_normalize():
    info = BackboneInfo("x", "none", None, (0.5, 0.5, 0.5), (0.25, 0.5, 1.0), (3, 8, 8), 4, 0)
    assert BackboneInfo.from_dict(info.to_dict()) == info
    x = torch.ones(2, 3, 4, 4)
    y = info.normalize(x)
    assert torch.allclose(y[:, 0], torch.full((2, 4, 4), 2.0))
    assert torch.allclose(y[:, 2], torch.full((2, 4, 4), 0.5))


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_local_weights_file_roundtrip(tmp_path, suffix):
    torch.manual_seed(0)
    src, _ = create_backbone("tf_efficientnet_lite0", weights="none")
    path = tmp_path / f"w{suffix}"
    sd = {k: v.clone() for k, v in src.state_dict().items()}
    if suffix == ".pth":
        torch.save({"state_dict": sd}, path)
    else:
        from safetensors.torch import save_file

        save_file(sd, str(path))
    model, info = create_backbone("tf_efficientnet_lite0", weights=path, num_classes=0)
    assert info.extra["matched_by"] == "name"
    assert info.weights_sha256 == file_sha256(path)
    assert info.mean == (0.5, 0.5, 0.5)  # timm's config for this name
    ref = src.state_dict()
    for k, v in model.state_dict().items():
        assert torch.equal(v, ref[k])
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 1280)


class _NotATensor:
    pass


def test_refuses_pickled_objects(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"weight": _NotATensor()}, path)
    with pytest.raises(ValueError, match="weights_only"):
        load_state_dict_file(path)


def test_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="unknown timm model"):
        create_backbone("not_a_model")
    with pytest.raises(ValueError, match="bundled only"):
        create_backbone("resnet18", weights="imagenet")
    with pytest.raises(FileNotFoundError):
        create_backbone("tf_efficientnet_lite0", weights=tmp_path / "missing.pth")


def test_positional_loading_checks_every_shape():
    model, _ = create_backbone("tf_efficientnet_lite0", weights="none")
    items = list(model.state_dict().items())
    renamed = {f"k{i}": v for i, (_, v) in enumerate(items)}
    assert load_weights(model, renamed) == "position"
    swapped = dict(renamed)
    keys = list(swapped)
    swapped[keys[0]], swapped[keys[6]] = renamed[keys[6]], renamed[keys[0]]
    with pytest.raises(ValueError, match="tensor 0"):
        load_weights(model, swapped)
    with pytest.raises(ValueError, match="296"):
        load_weights(model, dict(list(renamed.items())[:-1]))
