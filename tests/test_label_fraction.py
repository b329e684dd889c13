"""``data.label_fraction``: a stratified, nested, seeded subset of the train and val labels; the
test split and every other label consumer see only what is kept."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from apcnn.data.splits import label_fraction_mask

FRACTIONS = (0.05, 0.1, 0.25, 0.5, 1.0)


def _labels(n: int = 400, m: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Skewed classes (attribute k: positive rate 0.05 .. 0.5), 10 % missing, one attribute with
    a single positive."""
    rng = np.random.default_rng(seed)
    rates = np.linspace(0.05, 0.5, m)
    y = np.where(rng.random((n, m)) < rates, 1.0, -1.0).astype(np.float32)
    y[:, 0] = -1.0
    y[7, 0] = 1.0  # one positive only
    mask = rng.random((n, m)) > 0.1
    mask[7, 0] = True
    return np.where(mask, y, 0.0).astype(np.float32), mask


def _want(count: int, fraction: float) -> int:
    return 0 if count == 0 else max(1, int(np.floor(fraction * count + 0.5)))


@pytest.mark.parametrize("fraction", FRACTIONS)
def test_each_attribute_and_class_keeps_its_share(fraction):
    y, mask = _labels()
    keep = label_fraction_mask(y, mask, fraction, seed=3, stream=(1, 0))
    assert keep.dtype == bool and keep.shape == y.shape
    assert not (keep & ~mask).any()  # only labelled entries are kept
    for m in range(y.shape[1]):
        for c in (-1.0, 1.0):
            have = int((mask[:, m] & (y[:, m] == c)).sum())
            assert int((keep[:, m] & (y[:, m] == c)).sum()) == _want(have, fraction), (m, c)
    assert keep[7, 0]  # a class with one label keeps it at any fraction


def test_budgets_are_nested_deterministic_and_seeded():
    y, mask = _labels()
    keeps = [label_fraction_mask(y, mask, f, seed=0, stream=(2, 0)) for f in FRACTIONS]
    for small, large in zip(keeps, keeps[1:]):
        assert not (small & ~large).any()  # the 5 % subset lies inside the 10 % one, ...
    assert np.array_equal(keeps[-1], mask)  # 100 %: every label
    again = label_fraction_mask(y, mask, 0.1, seed=0, stream=(2, 0))
    assert np.array_equal(again, keeps[1])
    # another fold, split or seed draws another subset of the same size
    for kwargs in ({"seed": 1, "stream": (2, 0)}, {"seed": 0, "stream": (3, 0)}):
        other = label_fraction_mask(y, mask, 0.1, **kwargs)
        assert other.sum() == keeps[1].sum() and not np.array_equal(other, keeps[1])
    # columns name the draws: a column keeps its subset when moved
    cols = label_fraction_mask(
        y[:, ::-1], mask[:, ::-1], 0.1, seed=0, stream=(2, 0), columns=range(y.shape[1] - 1, -1, -1)
    )
    assert np.array_equal(cols[:, ::-1], keeps[1])


def test_bad_arguments_are_refused():
    y, mask = _labels(20, 2)
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="fraction must be in"):
            label_fraction_mask(y, mask, bad)
    with pytest.raises(ValueError, match="shapes"):
        label_fraction_mask(y, mask[:, :1], 0.5)


# ------------------------------------------------------------------ the split protocol
def _write_clothing(root: Path, n: int) -> Path:
    """The fixture writer of tests/data/conftest.py (the published layout, ``n`` photos)."""
    path = Path(__file__).parent / "data" / "conftest.py"
    spec = importlib.util.spec_from_file_location("_clothing_fixture", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rng = np.random.default_rng(0)
    values = {a: rng.choice([1.0, 2.0], size=n, p=[0.8, 0.2]) for a in module.CLOTHING_BINARY}
    for v in values.values():
        v[rng.random(n) < 0.1] = np.nan
    return module.write_clothing(root, n, values)


def _cfg(root: Path | None, *extra: str):
    from apcnn.config import TrainConfig, load_config

    data = (
        ["data.name=clothing", f"data.root={root}"]
        if root
        else ["data.name=synthetic", "data.options={num_images: 240}"]
    )
    return load_config(TrainConfig, None, [*data, "data.fold=1", *extra])


@pytest.mark.parametrize("kind", ["kfold", "official"])
def test_build_datasets_thins_train_and_val_only(tmp_path, kind):
    from apcnn.data.splits import build_datasets

    root = _write_clothing(tmp_path, 120) if kind == "kfold" else None
    full = build_datasets(_cfg(root), None)
    part = build_datasets(_cfg(root, "data.label_fraction=0.25"), None)
    assert full.keys() == part.keys() == {"train", "val", "test"}
    # splits of one source still share it (one feature cache, one adaptation)
    assert (part["train"][0] is part["val"][0]) == (full["train"][0] is full["val"][0])
    for split in full:
        (src, idx), (thin, tidx) = full[split], part[split]
        assert np.array_equal(idx, tidx)
        y, m = src.targets[idx], src.mask[idx]
        ty, tm = thin.targets[tidx], thin.mask[tidx]
        if split == "test":  # never touched
            assert np.array_equal(ty, y) and np.array_equal(tm, m)
            continue
        assert not (tm & ~m).any() and tm.sum() < m.sum()
        assert np.array_equal(ty[tm], y[tm]) and not ty[~tm].any()  # no target leaks
        for a in range(y.shape[1]):
            for c in (-1.0, 1.0):
                have = int((m[:, a] & (y[:, a] == c)).sum())
                assert int((tm[:, a] & (ty[:, a] == c)).sum()) == _want(have, 0.25)
    # the dataset the splits came from is not modified in place
    assert not np.array_equal(full["train"][0].mask, part["train"][0].mask)
    again = build_datasets(_cfg(root, "data.label_fraction=0.25"), None)
    assert all(np.array_equal(again[s][0].mask, part[s][0].mask) for s in part)


def test_fraction_one_is_bit_identical(tmp_path):
    from apcnn.data.splits import build_datasets

    root = _write_clothing(tmp_path, 60)
    a = build_datasets(_cfg(root), None)
    b = build_datasets(_cfg(root, "data.label_fraction=1.0"), None)
    for split in a:
        (sa, ia), (sb, ib) = a[split], b[split]
        assert np.array_equal(ia, ib)
        assert sa.targets.tobytes() == sb.targets.tobytes()
        assert sa.mask.tobytes() == sb.mask.tobytes()
    assert b["train"][0] is b["test"][0]  # no copy at 1.0


def test_extract_methods_never_read_masked_targets(tmp_path):
    """S-extract and M-extract read which labels exist from the masks: changing the targets of
    masked entries (what a leak would see) changes nothing."""
    import copy
    from types import SimpleNamespace

    import torch

    from apcnn.data import create_dataset
    from apcnn.data.splits import build_datasets
    from apcnn.reproduce import extract_methods, fold_config
    from apcnn.training.inputs import SplitData

    root = _write_clothing(tmp_path, 90)
    cfg = fold_config(root, tmp_path / "out", 0, 3, quick=True, label_fraction=0.5)
    cfg.model.rank = 4
    datasets = build_datasets(cfg, None)
    schema = create_dataset("clothing", root=root).schema
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(90, 12)).astype(np.float32)

    def splits(leak: bool) -> dict:
        out = {}
        for name, (src, idx) in datasets.items():
            y = torch.as_tensor(src.targets[idx])
            m = torch.as_tensor(src.mask[idx])
            if leak:  # the entries a mask hides get labels
                y = torch.where(m, y, torch.as_tensor(rng.choice([-1.0, 1.0], y.shape)).float())
            out[name] = SplitData(name, torch.as_tensor(feats[idx]), y, m, np.asarray(idx))
        return out

    def run(leak: bool) -> dict:
        s = splits(leak)
        trainer = SimpleNamespace(
            cfg=copy.deepcopy(cfg),
            splits=s,
            schema=schema,
            pretrained_inputs=lambda split: s[split].inputs,
        )
        results, _ = extract_methods(trainer, quick=True)
        return results

    clean, leaked = run(False), run(True)
    for method in ("S-extract", "M-extract"):
        assert clean[method]["accuracy"] == leaked[method]["accuracy"], method
    assert clean["S-extract"]["multiclass"] == leaked["S-extract"]["multiclass"]
