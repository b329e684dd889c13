"""The demo preset and `apcnn demo --quick` (the embedded default, end to end)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from apcnn.config import TrainConfig, config_to_dict, list_presets, load_config, preset_path
from apcnn.demo import demo_config

ROOT = Path(__file__).resolve().parents[1]


def test_demo_is_the_demo_preset():
    """`apcnn demo` is `apcnn train -c configs/demo.yaml` (the checkout's link to the package)."""
    from_yaml = load_config(TrainConfig, ROOT / "configs" / "demo.yaml", ["train.seed=3"])
    from_code = demo_config(from_yaml.run.out, seed=3)
    assert config_to_dict(from_code) == config_to_dict(from_yaml)
    quick = demo_config("x", quick=True)
    assert quick.data.options == {"num_images": 300} and quick.model.rank == from_yaml.model.rank


def test_configs_folder_is_the_packaged_presets():
    assert (ROOT / "configs").resolve() == preset_path("demo").parent.resolve()
    assert sorted(p.stem for p in (ROOT / "configs").glob("*.yaml")) == list_presets()


@pytest.mark.parametrize("name", ["demo", "clothing", "awa2", "celeba", "cub", "folder"])
def test_presets_load(name):
    cfg = load_config(TrainConfig, ROOT / "configs" / f"{name}.yaml", [])
    assert cfg.data.name == ("synthetic" if name == "demo" else name)


def test_demo_quick_writes_results_json(tmp_path, monkeypatch, capsys):
    from apcnn.cli import main

    monkeypatch.setenv("APCNN_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "MG-CNN" in printed and "S-CNN" in printed
    results = json.loads((out / "results.json").read_text())
    assert set(results) >= {"protocol", "methods", "seconds"}
    for method in ("S-CNN", "MG-CNN"):
        block = results["methods"][method]
        assert set(block) >= {"total", "groups", "per_attribute", "folds", "metric"}
        assert 0 <= block["total"] <= 1
    assert (out / "report.md").exists()


def test_layer_demo_multitask_beats_independent():
    from apcnn.layer_demo import format_layer_demo, run_layer_demo

    result = run_layer_demo(seed=0)
    assert result.multitask_accuracy.mean() > result.independent_accuracy.mean()
    # group sparsity: the active latent tasks each serve (almost always) a single group
    active = result.group_support[result.group_support.any(axis=1)]
    assert len(active) >= len(result.groups)
    assert (active.sum(axis=1) > 1).sum() <= 2
    text = format_layer_demo(result)
    assert "Recovered sparsity of S" in text
