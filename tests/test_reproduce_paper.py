"""`apcnn reproduce clothing --protocol paper` and `--label-fraction`: the preset, the fold
records, per-attribute gradients of the head tails, the label-budget block and report, and the
quick paper protocol on the real photos (skips without ../shared/data)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ClothingAttributeDataset"


def _flat(cfg) -> dict:
    from apcnn.config import config_to_dict

    return {f"{s}.{k}": v for s, keys in config_to_dict(cfg).items() for k, v in keys.items()}


def test_paper_preset_is_the_papers_setting(tmp_path):
    """Per-attribute head copies from ImageNet weights, nothing adapted jointly, no mirror
    average; everything else (input, schedule, selection) as the adapted protocol."""
    from apcnn.config import TrainConfig, load_config, preset_settings
    from apcnn.reproduce import PAPER_SETTINGS, fold_config

    paper = fold_config("DATA", tmp_path, 1, 5, quick=False, protocol="paper")
    assert (paper.model.tail, paper.train.adapt_blocks) == ("head", 0)
    assert paper.model.flip_average is False and paper.model.freeze_trunk is True
    assert paper.model.weights == "imagenet" and paper.data.label_fraction == 1.0
    adapted = fold_config("DATA", tmp_path, 1, 5, quick=False)
    a, p = _flat(adapted), _flat(paper)
    differ = {k for k in a if a[k] != p[k]}
    assert differ <= {
        "model.tail",
        "model.flip_average",
        "train.adapt_blocks",
        "train.adapt_epochs",
        "train.adapt_lr",
        "train.sgd_task_weights",
    }
    assert {"model.tail", "model.flip_average", "train.adapt_blocks"} <= differ
    # the packaged file, read through the same path as `apcnn train -c configs/...`
    root = Path(__file__).resolve().parents[1]
    protocol = ["data.root=DATA", "data.fold=1", "data.folds=5", f"run.out={tmp_path}"]
    from_file = load_config(TrainConfig, root / "configs" / "clothing_paper.yaml", protocol)
    assert _flat(from_file) == p
    assert PAPER_SETTINGS == preset_settings("clothing_paper")
    quick = fold_config("DATA", tmp_path, 0, 5, quick=True, protocol="paper", label_fraction=0.1)
    assert quick.train.epochs_single == 3 and quick.model == paper.model
    assert quick.data.label_fraction == 0.1


def test_protocol_names_default_out_and_fractions():
    from apcnn.config import ConfigError
    from apcnn.reproduce import check_fractions, default_out, fold_config, fraction_dir

    assert default_out() == "runs/reproduce-clothing"
    assert default_out("paper") == "runs/reproduce-clothing-paper"
    with pytest.raises(ConfigError, match="unknown protocol 'nope'; the protocols are: adapted"):
        fold_config("DATA", Path("x"), 0, 5, quick=False, protocol="nope")
    assert check_fractions([0.5, 0.1, 1, 0.1]) == [0.1, 0.5, 1.0]
    for bad in (0, 1.5, -0.2, float("nan")):
        with pytest.raises(ConfigError, match="must be in \\(0, 1\\]"):
            check_fractions([bad])
    assert [fraction_dir(f) for f in (0.1, 0.05, 0.25, 0.125)] == [
        "frac0.10",
        "frac0.05",
        "frac0.25",
        "frac0.125",
    ]
    with pytest.raises(ConfigError, match="data.label_fraction would change the protocol"):
        fold_config("DATA", Path("x"), 0, 5, quick=False, overrides=["data.label_fraction=0.5"])


def test_a_finished_fold_is_never_reused_by_another_protocol_or_fraction(tmp_path):
    from apcnn.config import ConfigError
    from apcnn.reproduce import run_fold

    fold = tmp_path / "fold0"
    fold.mkdir()
    old = {"fold": 0, "results": {}, "overrides": []}  # written before protocols existed
    (fold / "fold.json").write_text(json.dumps(old))
    assert run_fold("DATA", fold, 0, 5, False) == old  # counts as the adapted protocol
    with pytest.raises(ConfigError, match="--protocol adapted, not paper; .*new --out"):
        run_fold("DATA", fold, 0, 5, False, protocol="paper")
    with pytest.raises(ConfigError, match="--label-fraction 1.0, not 0.1"):
        run_fold("DATA", fold, 0, 5, False, label_fraction=0.1)
    paper = dict(old, protocol="paper", label_fraction=0.1)
    (fold / "fold.json").write_text(json.dumps(paper))
    assert run_fold("DATA", fold, 0, 5, False, protocol="paper", label_fraction=0.1) == paper
    with pytest.raises(ConfigError, match="--protocol paper, not adapted"):
        run_fold("DATA", fold, 0, 5, False, label_fraction=0.1)


def test_a_finished_fold_is_matched_by_its_resolved_recipe(tmp_path):
    """fold.json stores the resolved configuration (paths left out): a preset that changed since
    is refused with the changed keys named, and the same recipe reached by other --set flags (or
    with the data elsewhere) is reused; a key the stored recipe lacks counts as its default."""
    from apcnn.config import ConfigError
    from apcnn.reproduce import fold_config, fold_recipe, run_fold

    fold = tmp_path / "fold2"
    fold.mkdir()
    ran_with = ["train.sgd_task_weights=false"]
    cfg = fold_config("/data/a", fold, 2, 5, True, ran_with, protocol="paper")
    record = {
        "fold": 2,
        "results": {},
        "protocol": "paper",
        "overrides": ran_with,
        "label_fraction": 1.0,
        "recipe": fold_recipe(cfg),
    }
    assert "data.root" not in record["recipe"] and record["recipe"]["train.lr"] == 0.01
    (fold / "fold.json").write_text(json.dumps(record))

    def again(overrides, root="/data/b"):
        return run_fold(root, fold, 2, 5, True, overrides, protocol="paper")

    assert again(ran_with) == record  # the data moved: same recipe
    # the same value by the preset or by --set: reused either way
    record["recipe"]["train.lr"] = 0.02
    (fold / "fold.json").write_text(json.dumps(record))
    assert again(ran_with + ["train.lr=0.02"]) == record
    with pytest.raises(ConfigError, match=r"another recipe \(train.lr: 0.02 there, 0.01 now\)"):
        again(ran_with)
    with pytest.raises(ConfigError, match="train.epochs_single: 3 there, 7 now"):
        again(ran_with + ["train.lr=0.02", "train.epochs_single=7"])
    # a key added to the configuration after the fold ran counts as its default there
    del record["recipe"]["train.threshold_max_accuracy_loss"]
    (fold / "fold.json").write_text(json.dumps(record))
    assert again(ran_with + ["train.lr=0.02"]) == record
    with pytest.raises(ConfigError, match="threshold_max_accuracy_loss: 0.003 there, 0.01 now"):
        again(ran_with + ["train.lr=0.02", "train.threshold_max_accuracy_loss=0.01"])


def test_cli_protocol_and_label_fraction(tmp_path, capsys, monkeypatch):
    import apcnn.reproduce
    from apcnn.cli import main

    seen = {}
    monkeypatch.setattr(apcnn.reproduce, "reproduce_clothing", lambda root, **kw: seen.update(kw))
    argv = ["reproduce", "clothing", "--root", str(tmp_path), "--protocol", "paper"]
    assert main([*argv, "--label-fraction", "0.1", "0.25", "--quick"]) == 0
    assert seen["protocol"] == "paper" and seen["label_fractions"] == [0.1, 0.25]
    assert seen["out"] is None and seen["quick"] is True  # None: the protocol's default
    assert main(["reproduce", "clothing", "--root", str(tmp_path)]) == 0
    assert seen["protocol"] == "adapted" and seen["label_fractions"] == []
    with pytest.raises(SystemExit):
        main([*argv[:4], "--protocol", "joint"])
    assert "invalid choice: 'joint'" in capsys.readouterr().err


def test_head_tails_share_no_gradient_between_attributes():
    """The paper protocol's per-attribute CNN tops (``model.tail: head``, stacked for speed):
    attribute j's loss, through the multi-task layer W = L S, has zero gradient on every other
    attribute's copy of the head convolution and its batch norm (train mode: per-copy batch
    statistics), and a non-zero one on its own."""
    import torch

    from apcnn.losses import masked_squared_hinge
    from apcnn.models.backbone import create_backbone
    from apcnn.models.fc_tail import build_attribute_cnn
    from apcnn.models.latent import LatentTaskLayer
    from apcnn.models.tails import StackedBatchNorm2d, StackedConv2d

    torch.manual_seed(0)
    backbone, _ = create_backbone("tf_efficientnet_lite0", weights="none")
    m = 3
    cnn = build_attribute_cnn(backbone, m, tail="head", freeze_trunk=True).train()
    head = LatentTaskLayer(cnn.feature_dim, num_latent=4, num_attributes=m)
    x = torch.randn(6, 3, 64, 64)
    y = torch.where(torch.rand(6, m) < 0.5, -1.0, 1.0)
    stacked = [
        mod for mod in cnn.tails.modules() if isinstance(mod, StackedConv2d | StackedBatchNorm2d)
    ]
    assert any(isinstance(s, StackedConv2d) for s in stacked)
    with torch.no_grad():
        feats = cnn.forward_trunk(x)
    for j in range(m):
        cnn.zero_grad(set_to_none=True)
        head.zero_grad(set_to_none=True)
        only_j = torch.zeros(6, m, dtype=torch.bool)
        only_j[:, j] = True
        loss = masked_squared_hinge(head(cnn.forward_tails(feats)), y, only_j)
        loss.backward()
        for mod in stacked:
            for p in (mod.weight, mod.bias):
                if p is None:
                    continue
                for k in range(m):
                    g = p.grad[mod.copy_slice(k)].abs().sum()
                    assert (g > 0) if k == j else (g == 0), (type(mod).__name__, j, k)


# ------------------------------------------------------------------ label-budget block and report
def _schema():
    from apcnn.data.schema import AttributeSchema

    groups = (("colors", (0, 1)), ("patterns", (2,)), ("cloth_parts", (3,)), ("appearance", (4,)))
    return AttributeSchema(names=("a", "b", "c", "d", "e"), groups=groups)


def _records(schema, fraction: float, folds: int = 2) -> list[dict]:
    """Fold records of methods whose accuracy grows with the fraction (MG-CNN most)."""
    from apcnn.metrics import attribute_metrics

    out = []
    for k in range(folds):
        rng = np.random.default_rng(k)
        y = np.where(rng.random((200, 5)) < 0.3, 1.0, -1.0)
        results = {}
        for i, name in enumerate(("S-CNN", "M-CNN", "MG-CNN")):
            noise = rng.normal(size=y.shape) * (2.0 - fraction - 0.3 * i)
            results[name] = attribute_metrics(y + noise, y, np.ones_like(y, bool), schema)
        kept = {"train": int(1000 * fraction), "val": int(150 * fraction)}
        out.append({"fold": k, "results": results, "labels_kept": kept, "seconds": 1.0})
    return out


def test_label_budget_block_table_and_figure(tmp_path):
    from apcnn.metrics import method_block
    from apcnn.reports import label_budget_md, ordering_folds, write_report
    from apcnn.reproduce import label_budget_block

    schema = _schema()
    records = {f: _records(schema, f) for f in (1.0, 0.1, 0.5)}
    block = label_budget_block(records, schema)
    assert block["fractions"] == [0.1, 0.5, 1.0]
    assert set(block["methods"]) == {"S-CNN", "M-CNN", "MG-CNN"}  # no extract methods here
    assert block["labels_kept"]["train"] == [100.0, 500.0, 1000.0]
    mg = block["methods"]["MG-CNN"]
    for key in ("accuracy", "balanced_accuracy"):
        s = mg[key]
        assert len(s["mean"]) == len(s["std"]) == len(s["folds"]) == 3
        ref = method_block([r["results"]["MG-CNN"] for r in records[0.5]], schema)
        want = ref if key == "accuracy" else ref[key]
        assert s["mean"][1] == want["total"] and s["folds"][1] == want["folds"]
        assert s["std"][1] == pytest.approx(np.std(want["folds"], ddof=1))
    assert mg["accuracy"]["mean"][0] < mg["accuracy"]["mean"][2]
    table = label_budget_md(block)
    assert "| MG-CNN | mA |" in table and "10 %" in table and " ± " in table
    assert "| training labels kept |" in table
    methods = {
        m: method_block([r["results"][m] for r in records[1.0]], schema)
        for m in records[1.0][0]["results"]
    }
    ordering = ordering_folds(methods)
    assert ordering["MG-CNN > M-CNN"]["of"] == 2 and 0 <= ordering["MG-CNN > M-CNN"]["folds"] <= 2
    results = {"protocol": {"name": "paper"}, "methods": methods, "label_budget": block}
    path = write_report(tmp_path, results, schema=schema, title="Clothing, the paper protocol")
    text = path.read_text()
    assert text.startswith("# Clothing, the paper protocol")
    assert "## Label budgets" in text and "label_budget.png" in text
    assert (tmp_path / "label_budget.png").stat().st_size > 5000
    assert "M-CNN > S-CNN in" in text and "MG-CNN > M-CNN in" in text


def test_ordering_folds_counts_strict_wins():
    from apcnn.reports import ordering_folds, ordering_summary

    def block(folds):
        return {"total": float(np.mean(folds)), "folds": folds}

    methods = {
        "S-CNN": block([0.9, 0.9]),
        "M-CNN": block([0.91, 0.9]),
        "MG-CNN": block([0.92, 0.89]),
    }
    got = ordering_folds(methods)
    assert got["M-CNN > S-CNN"]["folds"] == 1  # a tie is no win
    assert got["MG-CNN > M-CNN"]["folds"] == 1
    assert got["M-CNN > S-CNN"]["gain"] == pytest.approx([0.01, 0.0])
    assert ordering_folds({"S-CNN": block([0.9])}) is None
    one = {k: block([v["folds"][0]]) for k, v in methods.items()}
    assert "M-CNN > S-CNN in 1 of 1 fold;" in ordering_summary(one)


# ------------------------------------------------------------------ end to end
def _fake_clothing(root: Path, n: int) -> Path:
    """A fake Clothing tree in the published layout (tests/data/conftest.py's writer)."""
    import importlib.util

    path = Path(__file__).parent / "data" / "conftest.py"
    spec = importlib.util.spec_from_file_location("_clothing_fixture", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.write_clothing(root, n)


@pytest.mark.slow
def test_reproduce_with_label_fractions_on_a_fake_tree(tmp_path, monkeypatch, capsys):
    """`reproduce --protocol paper --quick --label-fraction 0.5 1` end to end on 60 fake photos
    (64 x 96 input, rank 8, fixed penalties): the main run and OUT/frac0.50/fold0, results.json's
    protocol, ordering and label_budget blocks, the report's table and figure; a rerun reuses
    every fold; another protocol in the same folder is refused."""
    from apcnn.config import ConfigError
    from apcnn.reproduce import reproduce_clothing

    monkeypatch.setenv("APCNN_CACHE", str(tmp_path / "cache"))
    root = _fake_clothing(tmp_path, 60)
    out = tmp_path / "paper"
    small = [
        "data.image_size=64",
        "data.image_height=96",
        "data.num_workers=0",
        "model.rank=8",
        "train.batch_size=32",
        "train.epochs_single=1",
        # no ridge CV of the CNN methods (most of the time on 34 training photos)
        "train.linear_probe=false",
        "mtl.lam=0.01",
        "mtl.task_weights=null",
    ]
    kw = dict(out=out, folds=3, quick=True, overrides=small, protocol="paper", progress=False)
    results = reproduce_clothing(root, label_fractions=[0.5, 1.0], **kw)
    assert "| MG-CNN | accuracy |" in capsys.readouterr().out  # the label-budget table
    saved = json.loads((out / "results.json").read_text())
    assert saved["protocol"]["name"] == "paper"
    assert saved["protocol"]["label_fractions"] == [0.5, 1.0]
    assert set(saved["ordering"]) == {"M-CNN > S-CNN", "MG-CNN > M-CNN"}
    budget = saved["label_budget"]
    assert budget["fractions"] == [0.5, 1.0]
    assert set(budget["methods"]) == {"S-CNN", "M-CNN", "MG-CNN", "S-extract", "M-extract"}
    for name, series in budget["methods"].items():
        assert series["accuracy"]["mean"][1] == saved["methods"][name]["total"]
        assert series["accuracy"]["std"] == [None, None]  # one fold: no spread
    main = json.loads((out / "fold0" / "fold.json").read_text())
    half = json.loads((out / "frac0.50" / "fold0" / "fold.json").read_text())
    assert (half["protocol"], half["label_fraction"], main["label_fraction"]) == ("paper", 0.5, 1.0)
    assert half["labels_kept"]["train"] < 0.6 * main["labels_kept"]["train"]
    assert budget["labels_kept"]["train"] == [
        half["labels_kept"]["train"],
        main["labels_kept"]["train"],
    ]
    meta = json.loads((out / "fold0" / "checkpoints" / "MG-CNN" / "meta.json").read_text())
    assert meta["config"]["model"]["tail"] == "head"
    assert meta["config"]["train"]["adapt_blocks"] == 0
    report = (out / "report.md").read_text()
    assert report.startswith("# Clothing, Table III: the paper protocol")
    assert "## Label budgets" in report and (out / "label_budget.png").exists()
    assert "M-CNN > S-CNN in" in report
    # finished folds are read back, not redone
    again = reproduce_clothing(root, label_fractions=[0.5], **kw)
    assert again["methods"] == results["methods"]
    assert again["label_budget"]["methods"] == saved["label_budget"]["methods"]
    with pytest.raises(ConfigError, match="--protocol paper, not adapted"):
        reproduce_clothing(root, **dict(kw, protocol="adapted"))


@pytest.mark.slow
@pytest.mark.skipif(not DATA.exists(), reason="real Clothing data not present")
def test_reproduce_paper_quick_on_real_data(tmp_path, monkeypatch, capsys):
    """`reproduce --protocol paper --quick` on the first 400 real photos (about 2.5 min on 2
    cores from an empty cache): per-attribute head tails from ImageNet weights, no joint
    adaptation, all five methods, the report; the whole photos' figures are in the README."""
    from _clothing_subset import clothing_subset
    from apcnn.reproduce import METHODS, reproduce_clothing

    monkeypatch.setenv("APCNN_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "paper"
    root = clothing_subset(tmp_path / "clothing", 400, DATA)
    reproduce_clothing(root, out=out, quick=True, protocol="paper")
    assert "against the paper" in capsys.readouterr().out
    saved = json.loads((out / "results.json").read_text())
    assert saved["protocol"]["name"] == "paper" and "label_budget" not in saved
    assert saved["methods"].keys() == set(METHODS)
    for block in saved["methods"].values():
        assert 0.8 < block["total"] <= 1.0  # 88-91 % on these photos
    assert set(saved["ordering"]) == {"M-CNN > S-CNN", "MG-CNN > M-CNN"}
    meta = json.loads((out / "fold0" / "checkpoints" / "MG-CNN" / "meta.json").read_text())
    assert meta["config"]["model"]["tail"] == "head"
    assert meta["config"]["model"]["flip_average"] is False
    assert meta["config"]["train"]["adapt_blocks"] == 0
    assert not (out / "fold0" / "checkpoints" / "adapted_top").exists()
    report = (out / "report.md").read_text()
    assert report.startswith("# Clothing, Table III: the paper protocol")
