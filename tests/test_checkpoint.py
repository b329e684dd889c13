from __future__ import annotations

import json
import os
import pickle
import random

import numpy as np
import pytest
import torch

import apcnn
import apcnn.checkpoint as ck
from apcnn.checkpoint import (
    CheckpointError,
    CheckpointNotFoundError,
    capture_rng_state,
    checkpoint_meta,
    flatten_state_dict,
    load_checkpoint,
    read_checkpoint_meta,
    restore_rng_state,
    save_checkpoint,
    unflatten_state_dict,
)
from apcnn.config import TrainConfig
from apcnn.data.schema import AttributeSchema

# the global NumPy RNG is what capture_rng_state saves
# ruff: noqa: NPY002

SCHEMA = AttributeSchema(names=("a", "b", "c"), groups=(("g1", (0, 1)), ("g2", (2,))))


def tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "L": torch.randn(5, 3, generator=g),
        "S": torch.randn(3, 3, generator=g).t(),  # non-contiguous
        "step": torch.tensor(7),
        "flags": torch.tensor([True, False]),
        "half": torch.randn(4, generator=g).to(torch.bfloat16),
    }


def meta() -> dict:
    return checkpoint_meta(
        config=TrainConfig(),
        schema=SCHEMA,
        preprocessing={"mean": [0.5] * 3, "std": [0.5] * 3, "image_size": 224},
        epoch=3,
    )


def tensor_file(path):
    return path / read_checkpoint_meta(path)["checkpoint"]["tensor_file"]["name"]


def test_round_trip(tmp_path):
    t = tensors()
    path = save_checkpoint(tmp_path / "ckpt", t, meta())
    loaded, m = load_checkpoint(path)
    assert set(loaded) == set(t)
    for k in t:
        assert loaded[k].dtype == t[k].dtype and torch.equal(loaded[k], t[k])
    own = m["checkpoint"]
    assert own["format_version"] == ck.FORMAT_VERSION and own["format"] == "apcnn-checkpoint"
    assert own["apcnn_version"] == apcnn.__version__ and "meta_sha256" not in m
    assert m["epoch"] == 3 and m["preprocessing"]["image_size"] == 224
    assert m["config"]["mtl"]["mu"] == 0.01
    assert AttributeSchema.from_dict(m["schema"]) == SCHEMA
    assert len(own["tensor_file"]["sha256"]) == 64
    # loading through the meta.json path works as well
    assert load_checkpoint(path / "meta.json")[1]["epoch"] == 3


def test_shared_storage_and_bad_inputs(tmp_path):
    w = torch.randn(4, 4)
    loaded, _ = load_checkpoint(save_checkpoint(tmp_path / "c", {"a": w, "b": w, "c": w[1]}, {}))
    assert torch.equal(loaded["a"], w) and torch.equal(loaded["b"], w)
    assert torch.equal(loaded["c"], w[1])
    with pytest.raises(TypeError, match="not a torch.Tensor"):
        save_checkpoint(tmp_path / "d", {"a": np.zeros(2)}, {})
    with pytest.raises(ValueError, match="reserved"):
        save_checkpoint(tmp_path / "d", {}, {"meta_sha256": 9})
    # caller keys named like ours are fine (the bookkeeping lives under "checkpoint")
    path = save_checkpoint(tmp_path / "e", {}, {"format": "mine/1", "apcnn_version": "x"})
    assert load_checkpoint(path)[1]["format"] == "mine/1"


def test_resave_loaded_meta(tmp_path):
    _, m = load_checkpoint(save_checkpoint(tmp_path / "a", tensors(), meta()))
    m["epoch"] = 4
    _, m2 = load_checkpoint(save_checkpoint(tmp_path / "b", tensors(), m))
    assert m2["epoch"] == 4 and m2["schema"] == m["schema"]


def test_overwrite_replaces_and_cleans(tmp_path):
    path = tmp_path / "ckpt"
    save_checkpoint(path, tensors(0), {"v": 1})
    save_checkpoint(path, tensors(1), {"v": 2})
    loaded, m = load_checkpoint(path)
    assert m["v"] == 2 and torch.equal(loaded["L"], tensors(1)["L"])
    assert sorted(p.name for p in path.iterdir()) == sorted(["meta.json", tensor_file(path).name])


@pytest.mark.parametrize("fail_on", ["tensors", "meta"])
def test_crash_mid_write_keeps_previous(tmp_path, monkeypatch, fail_on):
    path = tmp_path / "ckpt"
    save_checkpoint(path, tensors(0), {"v": 1})
    real_replace = os.replace

    def crashing_replace(src, dst):
        name = os.path.basename(os.fspath(dst))
        if (fail_on == "meta") == (name == "meta.json"):
            raise OSError("simulated crash")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crashing_replace)
    with pytest.raises(OSError, match="simulated crash"):
        save_checkpoint(path, tensors(1), {"v": 2})
    monkeypatch.undo()
    loaded, m = load_checkpoint(path)
    assert m["v"] == 1 and torch.equal(loaded["L"], tensors(0)["L"])
    assert not [p for p in path.iterdir() if p.name.endswith(".tmp")]


def _mixed_tensors() -> dict[str, torch.Tensor]:
    """Every dtype both safetensors and this torch store, with 0-d, empty, non-contiguous,
    storage-sharing tensors and names that need JSON escapes or sort by UTF-8 bytes."""
    g = torch.Generator().manual_seed(3)
    w = torch.randn(6, 5, generator=g)
    out = {
        "f32": w,
        "f32/view": w[2],  # shares w's storage
        "f32.t": w.t(),  # non-contiguous
        "f16": torch.randn(3, 7, generator=g).half(),
        "bf16": torch.randn(5, generator=g).to(torch.bfloat16),
        "i64": torch.arange(-4, 5),
        "i64 0-d": torch.tensor(-9),
        "bool": torch.tensor([[True, False, True]]),
        "empty f32": torch.zeros(0, 3),
        "empty bool": torch.zeros(2, 0, dtype=torch.bool),
        'quote"back\\slash\nnew\x01ctl': torch.ones(2),
        "é": torch.tensor(1.5),
        "z": torch.tensor(2.5),
        "\U0001f600": torch.tensor(3.5),  # above U+FFFF: UTF-8 order, not UTF-16 order
        "ｚ": torch.tensor(4.5),
    }
    for dtype in ck._DTYPES:  # distinct bytes in every position (bool: only 0 and 1)
        raw = torch.arange(3 * dtype.itemsize) % (2 if dtype == torch.bool else 256)
        out[f"all/{dtype}"] = raw.to(torch.uint8).view(dtype)
    return out


def _raw(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1).view(torch.uint8)


def test_streamed_file_is_byte_identical_to_safetensors(tmp_path):
    import safetensors.torch

    t = _mixed_tensors()
    expected = {}
    for k, v in t.items():  # what the library accepts: contiguous, no shared storage
        v = v.contiguous().clone()
        try:
            safetensors.torch.save({"x": v})
        except Exception:  # a dtype this safetensors does not know
            continue
        expected[k] = v
    assert {"f32", "f16", "bf16", "i64", "bool", "empty f32"} <= set(expected)
    path = save_checkpoint(tmp_path / "c", {k: t[k] for k in expected}, {})
    assert tensor_file(path).read_bytes() == safetensors.torch.save(expected)
    loaded, _ = load_checkpoint(path)
    for k, v in expected.items():
        assert loaded[k].dtype == v.dtype and loaded[k].shape == v.shape
        assert torch.equal(_raw(loaded[k]), _raw(v))
    # no tensors at all: the 8-byte "{}" header, as the library writes it
    path = save_checkpoint(tmp_path / "empty", {}, {})
    assert tensor_file(path).read_bytes() == safetensors.torch.save({})


def test_save_streams_without_building_the_file_in_memory(tmp_path, monkeypatch):
    import safetensors
    import safetensors.torch

    def forbidden(*a, **k):
        raise AssertionError("the whole tensor file was built in memory")

    for mod, name in [(safetensors.torch, "save"), (safetensors.torch, "serialize")]:
        monkeypatch.setattr(mod, name, forbidden)
    written = []
    real = ck._tensor_bytes
    monkeypatch.setattr(ck, "_tensor_bytes", lambda x: written.append(x.numel()) or real(x))
    t = tensors()
    loaded, _ = load_checkpoint(save_checkpoint(tmp_path / "c", t, {}))
    assert sorted(written) == sorted(v.numel() for v in t.values())  # one tensor at a time
    assert all(torch.equal(loaded[k], t[k]) for k in t)


def test_bad_tensors_write_nothing(tmp_path):
    with pytest.raises(ValueError, match="__metadata__"):
        save_checkpoint(tmp_path / "a", {"__metadata__": torch.zeros(1)}, {})
    with pytest.raises(TypeError, match="sparse"):
        save_checkpoint(tmp_path / "a", {"s": torch.eye(2).to_sparse()}, {})
    with pytest.raises(TypeError, match="str"):
        save_checkpoint(tmp_path / "a", {1: torch.zeros(1)}, {})
    if hasattr(torch, "float8_e8m0fnu"):  # safetensors writes it but cannot load it
        with pytest.raises(TypeError, match="store and load"):
            save_checkpoint(tmp_path / "a", {"e": torch.zeros(2, dtype=torch.float8_e8m0fnu)}, {})
    assert not (tmp_path / "a").exists()


def test_truncated_tensor_file(tmp_path):
    path = save_checkpoint(tmp_path / "ckpt", tensors(), meta())
    f = tensor_file(path)
    f.write_bytes(f.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match="truncated") as e:
        load_checkpoint(path)
    assert f.name in str(e.value) and "train again" in str(e.value)


def test_flipped_byte_detected(tmp_path):
    path = save_checkpoint(tmp_path / "ckpt", tensors(), meta())
    f = tensor_file(path)
    data = bytearray(f.read_bytes())
    data[-3] ^= 0x01
    f.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupted or was modified"):
        load_checkpoint(path)


def test_meta_tampering_and_truncation(tmp_path):
    path = save_checkpoint(tmp_path / "ckpt", tensors(), meta())
    mp = path / "meta.json"
    good = mp.read_text()
    mp.write_text(good.replace('"epoch": 3', '"epoch": 4'))
    with pytest.raises(CheckpointError, match="modified after it was saved"):
        load_checkpoint(path)
    mp.write_text(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(path)
    d = json.loads(good)
    d["checkpoint"]["format_version"] = ck.FORMAT_VERSION + 1
    mp.write_text(json.dumps(d))
    with pytest.raises(CheckpointError, match="upgrade apcnn"):
        load_checkpoint(path)


def test_missing_pieces(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()  # e.g. the first save crashed before meta.json
    with pytest.raises(CheckpointNotFoundError, match="meta.json"):
        load_checkpoint(tmp_path / "empty")
    assert issubclass(CheckpointNotFoundError, FileNotFoundError)
    assert issubclass(CheckpointNotFoundError, CheckpointError)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "meta.json").write_text('{"format": "something else"}')
    with pytest.raises(CheckpointError, match="not an apcnn checkpoint"):
        load_checkpoint(tmp_path / "other")
    path = save_checkpoint(tmp_path / "ckpt", tensors(), meta())
    tensor_file(path).unlink()
    with pytest.raises(CheckpointError, match="is missing"):
        load_checkpoint(path)


def test_load_never_unpickles(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "ckpt", tensors(), meta())

    def forbidden(*a, **k):
        raise AssertionError("unpickling during load")

    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "Unpickler", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    loaded, _ = load_checkpoint(path)
    assert torch.equal(loaded["L"], tensors()["L"])


def test_flatten_round_trip_of_odd_values():
    state = {
        "state": {0: {"buf": torch.arange(3.0), "step": torch.tensor(2.0)}, 1: {}},
        "param_groups": [{"betas": (0.9, 0.999), "params": [0, 1], "foreach": None, "lr": 0.1}],
        "scale": float("inf"),
        "nan": float("nan"),
        "name": "x",
        "flag": True,
        "arr": np.arange(4, dtype=np.uint32),
        "np_scalar": np.float32(1.5),
        "__tensor__": 3,  # a key that collides with an encoding marker
        2.5: "float key",
    }
    t, structure = flatten_state_dict(state, prefix="opt/")
    text = json.dumps(structure, allow_nan=False)  # strict JSON
    back = unflatten_state_dict(t, json.loads(text))
    assert torch.equal(back["state"][0]["buf"], state["state"][0]["buf"])
    assert back["state"][1] == {} and back["param_groups"][0]["betas"] == (0.9, 0.999)
    group = back["param_groups"][0]
    assert group["params"] == [0, 1] and group["foreach"] is None
    assert back["scale"] == float("inf") and np.isnan(back["nan"])
    assert back["name"] == "x" and back["flag"] is True and back["__tensor__"] == 3
    assert back["arr"].dtype == np.uint32 and back["arr"].tolist() == [0, 1, 2, 3]
    assert back["np_scalar"] == 1.5 and back[2.5] == "float key"
    assert all(k.startswith("opt/") for k in t)
    with pytest.raises(TypeError, match="without pickle"):
        flatten_state_dict({"f": lambda: 0})
    with pytest.raises(CheckpointError, match="does not contain"):
        unflatten_state_dict({}, structure)


def _train_setup(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10)
    return model, opt, sched


def _step(model, opt, sched, x, y):
    opt.zero_grad()
    loss = torch.nn.functional.mse_loss(model(x), y)
    loss.backward()
    opt.step()
    sched.step()


def test_optimizer_state_round_trip_gives_identical_steps(tmp_path):
    g = torch.Generator().manual_seed(1)
    data = [(torch.randn(16, 4, generator=g), torch.randn(16, 2, generator=g)) for _ in range(5)]
    model, opt, sched = _train_setup()
    for x, y in data[:2]:
        _step(model, opt, sched, x, y)
    # save model + optimizer + scheduler state
    state_t, state_s = flatten_state_dict(
        {"optimizer": opt.state_dict(), "scheduler": sched.state_dict()}, prefix="state/"
    )
    model_t = {f"model/{k}": v for k, v in model.state_dict().items()}
    save_checkpoint(tmp_path / "ckpt", {**model_t, **state_t}, {"state": state_s})
    for x, y in data[2:]:  # reference continuation
        _step(model, opt, sched, x, y)

    loaded, m = load_checkpoint(tmp_path / "ckpt")
    model2, opt2, sched2 = _train_setup(seed=123)  # different init: must be overwritten
    model2.load_state_dict({k[6:]: v for k, v in loaded.items() if k.startswith("model/")})
    state = unflatten_state_dict(loaded, m["state"])
    opt2.load_state_dict(state["optimizer"])
    sched2.load_state_dict(state["scheduler"])
    for x, y in data[2:]:
        _step(model2, opt2, sched2, x, y)
    for p, q in zip(model.parameters(), model2.parameters(), strict=True):
        assert torch.equal(p, q)
    assert sched.get_last_lr() == sched2.get_last_lr()


def test_adam_and_grad_scaler_state_round_trip():
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.Adam([p], lr=0.01)
    p.grad = torch.full((3,), 0.5)
    opt.step()
    scaler_state = {
        "scale": 65536.0,
        "growth_factor": 2.0,
        "backoff_factor": 0.5,
        "growth_interval": 2000,
        "_growth_tracker": 3,
    }
    sd = {"opt": opt.state_dict(), "scaler": scaler_state}
    back = unflatten_state_dict(*flatten_state_dict(sd))
    assert back["scaler"] == scaler_state
    opt2 = torch.optim.Adam([torch.nn.Parameter(torch.ones(3))], lr=0.01)
    opt2.load_state_dict(back["opt"])
    exp_avg = opt.state_dict()["state"][0]["exp_avg"]
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], exp_avg)
    assert opt2.state_dict()["param_groups"][0]["betas"] == (0.9, 0.999)


def test_rng_state_round_trip(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.randn()  # leave a cached gaussian / mid-stream position
    t, s = flatten_state_dict(capture_rng_state(), prefix="rng/")
    save_checkpoint(tmp_path / "ckpt", t, {"rng": s})
    expected = (random.random(), np.random.randn(3).tolist(), torch.rand(3).tolist())
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    loaded, m = load_checkpoint(tmp_path / "ckpt")
    restore_rng_state(unflatten_state_dict(loaded, m["rng"]))
    got = (random.random(), np.random.randn(3).tolist(), torch.rand(3).tolist())
    assert got == expected


# ------------------------------------------------------------------- predictor checkpoints
OLD_MODEL = {  # a predictor's "model" entry as the first versions wrote it (no optional keys)
    "backbone": "tf_efficientnet_lite0",
    "weights": "none",
    "tail": "head",
    "freeze_trunk": True,
    "num_attributes": 3,
    "rank": 2,
}
OLD_PRE = {"image_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3}


def _predictor_checkpoint(path, model: dict, pre: dict):
    """Write a predictor checkpoint with exactly these ``model``/``preprocessing`` entries
    (save_checkpoint directly: save_predictor would refuse the invalid ones)."""
    from apcnn.predictor import FORMAT, build_predictor

    weights = build_predictor(OLD_MODEL, pretrained=False).state_dict()
    body = {"format": FORMAT, "model": model, "schema": SCHEMA.to_dict(), "preprocessing": pre}
    save_checkpoint(path, weights, {**body, "config": {}})
    return path


def test_old_predictor_checkpoints_load_and_keep_their_meta(tmp_path):
    from apcnn.predictor import checkpoint_spec, load_predictor

    for name, model in [("bare", OLD_MODEL), ("with_dim", {**OLD_MODEL, "feature_dim": 1280})]:
        path = _predictor_checkpoint(tmp_path / name, model, OLD_PRE)
        predictor, m = load_predictor(path)
        assert m["model"] == model and m["preprocessing"] == OLD_PRE
        spec = checkpoint_spec(m)
        assert spec.model_dict() == model and spec.preprocessing_dict() == OLD_PRE
        assert spec.input_shape == (32, 32) and spec.crop_fraction == 0.875
        assert predictor(torch.zeros(1, 3, 32, 32)).shape == (1, 3)


@pytest.mark.parametrize(
    "model, pre, match",
    [
        ({**OLD_MODEL, "colour": "red"}, OLD_PRE, r"bad: invalid model description.*'colour'"),
        (OLD_MODEL, {**OLD_PRE, "crop_fraction": 0}, r"preprocessing\.crop_fraction"),
        ({**OLD_MODEL, "feature_dim": 7}, OLD_PRE, r"feature_dim is 7 but"),
    ],
)
def test_bad_predictor_meta_is_a_checkpoint_error_naming_the_key(tmp_path, model, pre, match):
    from apcnn.predictor import load_predictor

    path = _predictor_checkpoint(tmp_path / "bad", model, pre)
    with pytest.raises(CheckpointError, match=match):
        load_predictor(path)


def test_save_predictor_checks_the_dicts_it_is_given(tmp_path):
    from apcnn.predictor import build_predictor, save_predictor

    predictor = build_predictor(OLD_MODEL, pretrained=False)
    kw = {"schema": SCHEMA, "config": {}}
    bad = {**OLD_MODEL, "rank": 0}
    with pytest.raises(ValueError, match=r"model\.rank"):
        save_predictor(tmp_path / "a", predictor, model_meta=bad, preprocessing=OLD_PRE, **kw)
    with pytest.raises(TypeError, match="spec="):
        save_predictor(tmp_path / "b", predictor, model_meta=OLD_MODEL, **kw)
