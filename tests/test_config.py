from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from apcnn.config import (
    ConfigError,
    TrainConfig,
    apply_overrides,
    check_data_root,
    config_from_dict,
    config_to_dict,
    load_config,
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
    assert cfg.run.out == "runs/default" and cfg.run.name is None


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
            "run.name=2024",  # str field keeps the text
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
    assert cfg.run.name == "2024"
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
