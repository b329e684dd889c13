"""`apcnn reproduce clothing --quick` on the real data (skips when ../shared/data is absent)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ClothingAttributeDataset"


def test_missing_dataset_folder_gives_one_clear_error(tmp_path, capsys):
    from apcnn.cli import main

    assert main(["reproduce", "clothing", "--root", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "nope" in err and "\n" == err[-1] and err.count("\n") == 1


@pytest.mark.slow
@pytest.mark.skipif(not DATA.exists(), reason="real Clothing data not present")
def test_reproduce_quick_on_real_data(tmp_path, monkeypatch, capsys):
    """The whole `reproduce --quick` path (trunk adaptation, all five methods, report) on the
    real photos, cut to their first 400 (a copy in the published layout) so that it takes about
    a minute; the full --quick run and its figures are in the README."""
    from _clothing_subset import clothing_subset
    from apcnn.reproduce import METHODS, reproduce_clothing

    monkeypatch.setenv("APCNN_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "repro"
    root = clothing_subset(tmp_path / "clothing", 400, DATA)
    results = reproduce_clothing(root, out=out, quick=True)
    printed = capsys.readouterr().out
    assert "against the paper" in printed and "- MG-CNN: " in printed  # after the table
    saved = json.loads((out / "results.json").read_text())
    assert saved["methods"].keys() == set(METHODS)
    for block in saved["methods"].values():
        assert set(block["groups"]) == {"colors", "patterns", "cloth_parts", "appearance"}
        assert len(block["per_attribute"]) == 23
        assert 0.5 < block["total"] <= 1.0
    assert (out / "report.md").exists()
    # beyond the paper: the 3 multi-class attributes (argmax over one-vs-rest members)
    mc = saved["methods"]["S-extract"]["multiclass"]
    assert set(mc) == {"sleevelength", "neckline", "category"}
    assert all(1 / 7 < v <= 1.0 for v in mc.values())
    assert "Multi-class accuracy" in (out / "report.md").read_text()
    assert "Against the paper" in (out / "report.md").read_text()
    # a finished fold is not redone
    again = reproduce_clothing(root, out=out, quick=True)
    assert again["methods"] == results["methods"]


def test_per_attribute_ridge_chooses_a_weight_per_attribute():
    import numpy as np

    from apcnn.selection import per_attribute_ridge
    from apcnn.solvers import fit_independent

    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 8))
    clean = np.sign(x[:, 0])  # attribute 0: a clean linear rule
    noisy = np.where(rng.random(120) < 0.45, -1.0, 1.0) * np.sign(x[:, 1])  # attribute 1: noise
    y = np.stack([clean, noisy], axis=1)
    mask = np.ones_like(y, dtype=bool)
    lambdas = (1e-3, 10.0)
    W, b, lam = per_attribute_ridge(x, y, mask, lambdas, seed=0)
    assert W.shape == (8, 2) and b.shape == (2,) and set(lam) <= set(lambdas)
    assert lam[0] == 1e-3  # the clean rule wants little regularisation
    for m in range(2):  # each column is the full-data fit at its chosen weight (solved to 1e-4)
        w_ref, b_ref = fit_independent(x, y, mask, lam[m] * 120, bias=True, tol=1e-10)
        err = np.linalg.norm(W[:, m] - w_ref[:, m]) / np.linalg.norm(w_ref[:, m])
        assert err < 1e-2, err
        same = np.sign(x @ W[:, m] + b[m]) == np.sign(x @ w_ref[:, m] + b_ref[m])
        assert same.mean() >= 0.99


def test_clothing_preset_is_the_reproduce_recipe(tmp_path):
    """The CNN methods train the packaged preset (configs/clothing.yaml), plus the protocol."""
    from apcnn.config import TrainConfig, config_to_dict, load_config, preset_settings
    from apcnn.reproduce import CLOTHING_SETTINGS, fold_config

    root = Path(__file__).resolve().parents[1]
    protocol = ["data.root=DATA", "data.fold=1", "data.folds=5", f"run.out={tmp_path}"]
    preset = load_config(TrainConfig, root / "configs" / "clothing.yaml", protocol)
    recipe = fold_config("DATA", tmp_path, 1, 5, quick=False)
    assert config_to_dict(recipe) == config_to_dict(preset)
    assert CLOTHING_SETTINGS == preset_settings("clothing")
    # the recipe's numbers (docs/benchmarks.md measured them)
    assert (recipe.data.image_size, recipe.data.image_height) == (224, 336)
    assert (recipe.train.adapt_blocks, recipe.train.epochs_single, recipe.train.rounds) == (5, 4, 1)
    assert recipe.mtl.mu_grid == [0.002, 0.008, 0.03] and recipe.mtl.task_weights == "auto"
    quick = fold_config("DATA", tmp_path, 0, 5, quick=True)
    assert (quick.train.adapt_epochs, quick.mtl.mu_grid) == (4, [0.008])
    assert quick.model == recipe.model


def test_set_changes_the_recipe_but_never_the_protocol(tmp_path):
    from apcnn.config import ConfigError
    from apcnn.reproduce import fold_config

    cfg = fold_config("DATA", tmp_path, 2, 5, quick=False, overrides=["model.flip_average=false"])
    assert cfg.model.flip_average is False and cfg.train.adapt_blocks == 5
    assert (cfg.data.root, cfg.data.fold, cfg.data.folds) == ("DATA", 2, 5)
    with pytest.raises(ConfigError, match="data.fold would change the protocol"):
        fold_config("DATA", tmp_path, 0, 5, quick=False, overrides=["data.fold=3"])
    with pytest.raises(ConfigError, match="must look like key=value"):
        fold_config("DATA", tmp_path, 0, 5, quick=False, overrides=["model.tail"])
    with pytest.raises(ConfigError, match="model.nope"):
        fold_config("DATA", tmp_path, 0, 5, quick=False, overrides=["model.nope=1"])


def test_cli_set_error_is_one_clear_line(tmp_path, capsys):
    from apcnn.cli import main

    argv = ["reproduce", "clothing", "--root", str(tmp_path), "--set", "run.out=x"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "run.out would change the protocol" in err and err.count("\n") == 1


def test_a_finished_fold_is_reused_only_with_the_same_set(tmp_path):
    from apcnn.config import ConfigError
    from apcnn.reproduce import run_fold

    fold = tmp_path / "fold0"
    fold.mkdir()
    record = {"fold": 0, "results": {}, "overrides": ["model.flip_average=false"]}
    (fold / "fold.json").write_text(json.dumps(record))
    assert run_fold("DATA", fold, 0, 5, False, ["model.flip_average=false"]) == record
    with pytest.raises(ConfigError, match="pass a new --out"):
        run_fold("DATA", fold, 0, 5, False, [])


def test_run_folds_chooses_the_folds_and_names_the_valid_range(tmp_path, capsys):
    from apcnn.cli import main
    from apcnn.reproduce import check_run_folds

    assert check_run_folds(None, 5, quick=False) == [0, 1, 2, 3, 4]
    assert check_run_folds(None, 5, quick=True) == [0]
    assert check_run_folds([4, 1, 1], 5, quick=True) == [1, 4]  # --quick on chosen folds
    assert main(["reproduce", "clothing", "--root", str(tmp_path), "--run-folds", "5"]) == 2
    err = capsys.readouterr().err
    assert "--run-folds 5" in err and "0..4" in err and err.count("\n") == 1
