from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from apcnn.config import (
    REMOVED_KEYS,
    ConfigError,
    TrainConfig,
    apply_overrides,
    check_data_root,
    config_from_dict,
    config_to_dict,
    list_presets,
    load_config,
    parse_override,
    preset_path,
    preset_settings,
    save_config,
)


def write(tmp_path, text: str):
    p = tmp_path / "cfg.yaml"
    p.write_text(text)
    return p


def test_defaults():
    cfg = load_config(TrainConfig, None, [])
    assert cfg.data.name == "synthetic" and cfg.data.root is None and cfg.data.options == {}
    assert cfg.model.backbone == "tf_efficientnet_lite0" and cfg.model.tail == "head"
    assert cfg.model.rank == 64
    assert (cfg.mtl.mu, cfg.mtl.gamma, cfg.mtl.lam) == (0.01, 1e-4, 1e-3)
    assert cfg.mtl.loss == "squared_hinge" and cfg.mtl.method == "fista"
    assert cfg.train.amp == "auto" and cfg.train.schedule == "cosine"
    assert cfg.train.epochs_single == 5 and cfg.train.epochs_joint == 3 and cfg.train.rounds == 2
    assert cfg.run.out == "runs/default"


def test_precedence_defaults_yaml_overrides(tmp_path):
    p = write(tmp_path, "mtl:\n  mu: 0.5\n  gamma: 0.2\ndata:\n  name: clothing\n")
    cfg = load_config(TrainConfig, p, ["mtl.mu=0.1", "data.root=/x"])
    assert cfg.mtl.mu == 0.1  # override beats YAML
    assert cfg.mtl.gamma == 0.2  # YAML beats default
    assert cfg.mtl.lam == 1e-3  # default
    assert cfg.data.name == "clothing" and cfg.data.root == "/x"
    # later overrides win over earlier ones
    assert load_config(TrainConfig, p, ["mtl.mu=1", "mtl.mu=2"]).mtl.mu == 2.0


def test_value_parsing_and_coercion(tmp_path):
    cfg = load_config(
        TrainConfig,
        None,
        [
            "mtl.gamma=1e-4",  # PyYAML 1.1 would read this as a string
            "train.amp=off",  # YAML 1.1 would read this as False
            "train.lr=1",  # int -> float
            "data.skip_bad_images=true",
            "model.tail=3",
            "model.weights=null",
            "run.out=2024",  # str field keeps the text
            "data.options.split=a",
            "data.options.n=3",
            "data.options.sub.k=x",
        ],
    )
    assert cfg.mtl.gamma == 1e-4 and isinstance(cfg.train.lr, float) and cfg.train.lr == 1.0
    assert cfg.train.amp == "off"
    assert cfg.data.skip_bad_images is True
    assert cfg.model.tail == 3 and isinstance(cfg.model.tail, int)
    assert cfg.model.weights is None
    assert cfg.run.out == "2024"
    assert cfg.data.options == {"split": "a", "n": 3, "sub": {"k": "x"}}
    p = write(tmp_path, "train:\n  amp: off\n  epochs_single: 2.0\nmodel:\n  tail: head\n")
    cfg = load_config(TrainConfig, p, [])
    assert cfg.train.amp == "off" and cfg.train.epochs_single == 2 and cfg.model.tail == "head"


def test_unknown_key_override_one_line_with_suggestion():
    with pytest.raises(ConfigError) as e:
        load_config(TrainConfig, None, ["mtl.mu2=1"])
    msg = str(e.value)
    assert "\n" not in msg
    assert "'mtl.mu2'" in msg and "did you mean 'mtl.mu'" in msg
    for k in ("mu", "gamma", "lam", "loss", "method", "max_outer", "tol", "max_iter"):
        assert k in msg
    with pytest.raises(ConfigError, match="valid keys at the top level: data, model, mtl"):
        load_config(TrainConfig, None, ["trian.lr=1"])


def test_unknown_key_in_yaml_names_file(tmp_path):
    p = write(tmp_path, "data:\n  rooot: /x\n")
    with pytest.raises(ConfigError) as e:
        load_config(TrainConfig, p, [])
    msg = str(e.value)
    assert "'data.rooot'" in msg and "did you mean 'data.root'" in msg and str(p) in msg
    assert "\n" not in msg


@pytest.mark.parametrize(
    "override, expected",
    [
        ("mtl.mu=abc", "'mtl.mu' expects float, got 'abc'"),
        ("train.batch_size=1.5", "'train.batch_size' expects int, got 1.5"),
        ("data.skip_bad_images=maybe", "'data.skip_bad_images' expects bool"),
        ("train.epochs_single=[1, 2]", "'train.epochs_single' expects int"),
        ("data.options=3", "'data.options' expects dict"),
        ("model.tail=1.5", "'model.tail' expects str or int, got 1.5"),
    ],
)
def test_wrong_type(override, expected):
    with pytest.raises(ConfigError) as e:
        load_config(TrainConfig, None, [override])
    assert expected in str(e.value) and "\n" not in str(e.value)


def test_literal_lists_choices(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(TrainConfig, None, ["mtl.loss=hing"])
    msg = str(e.value)
    assert "'squared_hinge', 'hinge', 'logistic'" in msg and "did you mean 'hinge'" in msg
    p = write(tmp_path, "train:\n  schedule: linear\n")
    with pytest.raises(ConfigError, match="'train.schedule' expects one of 'cosine', 'step'"):
        load_config(TrainConfig, p, [])


def test_value_checks_and_bad_override_syntax():
    with pytest.raises(ConfigError, match=r"'data.fold' must be in 0..4"):
        load_config(TrainConfig, None, ["data.fold=5"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config(TrainConfig, None, ["mtl.mu"])
    with pytest.raises(ConfigError, match="has no key"):
        load_config(TrainConfig, None, ["mtl.mu.x=1"])
    with pytest.raises(ConfigError, match=r"'mtl' expects a mapping \(MTLConfig\), got 3"):
        config_from_dict(TrainConfig, {"mtl": 3})
    with pytest.raises(ConfigError, match="must be a mapping"):
        config_from_dict(TrainConfig, [1])


@pytest.mark.parametrize(
    "key, reason",
    [
        ("model.bias", "always has a per-attribute bias"),
        ("train.checkpoint_every", "checkpoints after every step"),
        ("train.calibrate", "always fitted on the validation split"),
        ("train.log_every", "once per epoch"),
        ("run.name", "use --out DIR"),
    ],
)
def test_removed_key_is_refused_with_the_reason(tmp_path, key, reason):
    assert key in REMOVED_KEYS
    section, name = key.split(".")
    with pytest.raises(ConfigError) as e:
        load_config(TrainConfig, None, [f"{key}=1"])
    msg = str(e.value)
    assert f"'{key}' was removed in overrides: " in msg and reason in msg and "\n" not in msg
    p = write(tmp_path, f"{section}:\n  {name}: 1\n")
    with pytest.raises(ConfigError) as e:
        load_config(TrainConfig, p, [])
    assert f"'{key}' was removed in {p}: " in str(e.value) and reason in str(e.value)
    with pytest.raises(ConfigError, match=f"'{key}' was removed"):
        apply_overrides(TrainConfig(), [f"{key}=1"])


def test_stored_config_with_removed_keys_still_loads():
    """Checkpoints and run folders written before the removal carry the old keys."""
    stored = config_to_dict(TrainConfig())
    stored["model"]["bias"] = True
    stored["train"].update(checkpoint_every=1, calibrate=True, log_every=10)
    stored["run"]["name"] = None
    assert config_from_dict(TrainConfig, stored) == TrainConfig()
    assert "bias" in stored["model"]  # the caller's mapping is left alone


def test_parse_override():
    assert parse_override("mtl.mu=0.1") == ("mtl.mu", "0.1")
    assert parse_override(" data.root = /a=b") == ("data.root", " /a=b")  # value stays raw text
    assert parse_override("run.out=") == ("run.out", "")
    with pytest.raises(ConfigError, match=r"override 'mtl.mu' must look like key=value"):
        parse_override("mtl.mu")
    with pytest.raises(
        ConfigError, match=r"--option '=3' has an empty key; write e.g. decode=true"
    ):
        parse_override("=3", what="--option", example="decode=true")
    with pytest.raises(ConfigError, match="empty key"):
        parse_override("mtl..mu=1")


def test_presets_are_packaged():
    names = list_presets()
    assert {"demo", "clothing", "awa2", "celeba", "cub", "folder"} <= set(names)
    for name in names:
        path = preset_path(name)
        assert path.parent.name == "configs" and path.parent.parent.name == "apcnn"
        load_config(TrainConfig, path, [])  # every preset loads
    with pytest.raises(ConfigError, match="no preset 'nope'; the presets are: .*clothing"):
        preset_path("nope")
    settings = preset_settings("clothing")
    assert settings["train.adapt_blocks"] == 5 and settings["mtl.lam"] == "auto"
    assert settings["model.pool_region"] == [0.15, 0.85, 0.25, 0.75]


def test_yaml_round_trip(tmp_path):
    cfg = load_config(
        TrainConfig, None, ["train.amp=off", "data.options={a: [1, 2]}", "model.tail=2"]
    )
    path = save_config(cfg, tmp_path / "resolved.yaml")
    again = load_config(TrainConfig, path, [])
    assert again == cfg
    assert config_from_dict(TrainConfig, config_to_dict(cfg)) == cfg


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config(TrainConfig, tmp_path / "nope.yaml", [])
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(TrainConfig, write(tmp_path, "data: [1,\n"), [])
    assert load_config(TrainConfig, write(tmp_path, ""), []) == TrainConfig()


def test_quoted_and_json_overrides():
    # the form json.dumps produces: quoted strings, JSON lists and mappings
    cfg = load_config(
        TrainConfig,
        None,
        ['run.out="runs/demo"', 'train.methods=["S-CNN", "MG-CNN"]', 'data.options={"n": 300}'],
    )
    assert cfg.run.out == "runs/demo"
    assert cfg.train.methods == ["S-CNN", "MG-CNN"] and cfg.data.options == {"n": 300}
    with pytest.raises(ConfigError, match=r"'train.methods\[1\]' expects one of 'S-CNN'"):
        load_config(TrainConfig, None, ["train.methods=[S-CNN, X-CNN]"])


def test_apply_overrides_copies():
    cfg = TrainConfig()
    new = apply_overrides(cfg, ["mtl.mu=0.3"])
    assert new.mtl.mu == 0.3 and cfg.mtl.mu == 0.01


def test_check_data_root():
    check_data_root(TrainConfig())  # synthetic needs no root
    cfg = load_config(TrainConfig, None, ["data.name=clothing"])
    with pytest.raises(ConfigError, match=r"data.root is not set: .*--set data.root=DIR"):
        check_data_root(cfg)
    check_data_root(load_config(TrainConfig, None, ["data.name=clothing", "data.root=/d"]))


@dataclass
class Inner:
    xs: list[int] = field(default_factory=list)
    mode: Literal["a", "b"] = "a"
    opt: float | None = None
    pair: tuple[int, str] = (0, "a")


@dataclass
class Outer:
    inner: Inner = field(default_factory=Inner)
    flag: bool = False


def test_generic_dataclass():
    cfg = load_config(Outer, None, ["inner.xs=[1, '2']", "inner.opt=0.5", "flag=yes"])
    assert cfg.inner.xs == [1, 2] and cfg.inner.opt == 0.5 and cfg.flag is True
    with pytest.raises(ConfigError, match=r"'inner.xs\[1\]' expects int"):
        load_config(Outer, None, ["inner.xs=[1, x]"])
    assert load_config(Outer, None, ["inner.pair=[3, b]"]).inner.pair == (3, "b")
    with pytest.raises(ConfigError, match=r"'inner.pair' expects tuple\[int, str\]"):
        load_config(Outer, None, ["inner.pair=[1, 2, 3]"])
    with pytest.raises(ConfigError, match=r"'inner.mode' expects one of 'a', 'b'"):
        load_config(Outer, None, ["inner.mode=c"])
