"""k-fold / train-val / seen-unseen splits and AttributeDataset.subset determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from apcnn.data import create_dataset
from apcnn.data.splits import (
    indices_of_classes,
    kfold_indices,
    seen_unseen_classes,
    seen_unseen_split,
    train_val_split,
)


def test_kfold_is_the_documented_protocol():
    folds = kfold_indices(1856, k=5, seed=0)
    perm = np.random.default_rng(0).permutation(1856)
    for (train, test), part in zip(folds, np.array_split(perm, 5), strict=True):
        np.testing.assert_array_equal(test, np.sort(part))
        np.testing.assert_array_equal(train, np.setdiff1d(np.arange(1856), part))
        assert train.dtype == np.int64 and test.dtype == np.int64
    allt = np.concatenate([t for _, t in folds])
    np.testing.assert_array_equal(np.sort(allt), np.arange(1856))
    assert [len(t) for _, t in folds] == [372, 371, 371, 371, 371]


def test_kfold_deterministic_and_seeded():
    a, b = kfold_indices(50, 5, seed=3), kfold_indices(50, 5, seed=3)
    assert all(np.array_equal(x[1], y[1]) for x, y in zip(a, b, strict=True))
    c = kfold_indices(50, 5, seed=4)
    assert not all(np.array_equal(x[1], y[1]) for x, y in zip(a, c, strict=True))
    with pytest.raises(ValueError, match="k=6 folds need at least k samples"):
        kfold_indices(5, 6)
    with pytest.raises(ValueError, match="k must be an int >= 2"):
        kfold_indices(10, 1)


def test_train_val_split():
    idx = np.arange(100, 140)
    tr, va = train_val_split(idx, 0.25, seed=1)
    assert len(va) == 10 and len(tr) == 30 and not set(tr) & set(va)
    assert set(tr) | set(va) == set(idx.tolist())
    tr2, va2 = train_val_split(idx, 0.25, seed=1)
    assert np.array_equal(va, va2) and np.array_equal(tr, tr2)
    tr3, va3 = train_val_split(3, 0.01)
    assert len(va3) == 1 and len(tr3) == 2  # at least one validation sample
    with pytest.raises(ValueError, match="val_fraction"):
        train_val_split(idx, 1.0)


def test_seen_unseen():
    seen, unseen = seen_unseen_classes(10, 3, seed=0)
    assert len(unseen) == 3 and sorted([*seen, *unseen]) == list(range(10))
    cids = np.array([0, 1, 2, 3, -1, 1])
    s, u = seen_unseen_split(cids, [1, 3])
    assert s.tolist() == [0, 2] and u.tolist() == [1, 3, 5]
    assert indices_of_classes(cids, [2, 3]).tolist() == [2, 3]


def test_subset_contract_and_determinism():
    ds = create_dataset("synthetic", num_images=40, image_size=24, missing_rate=0.2)
    folds = kfold_indices(len(ds), k=4, seed=0)
    sub = ds.subset(folds[1][1])
    sub2 = ds.subset(folds[1][1])
    assert type(sub) is type(ds) and len(sub) == 10
    np.testing.assert_array_equal(sub.targets, ds.targets[folds[1][1]])
    np.testing.assert_array_equal(sub.mask, ds.mask[folds[1][1]])
    np.testing.assert_array_equal(sub.class_ids, ds.class_ids[folds[1][1]])
    j = int(folds[1][1][3])
    assert torch.equal(sub[3]["image"], ds[j]["image"])
    assert int(sub[3]["index"]) == 3  # index is the position in the subset
    assert sub.cache_key() == sub2.cache_key() != ds.cache_key()
    assert ds.subset(folds[2][1]).cache_key() != sub.cache_key()
    # subset of subset, boolean masks, and the original is untouched
    subsub = sub.subset([0, 2])
    assert subsub.sample_ids.tolist() == [sub.sample_ids[0], sub.sample_ids[2]]
    mask = np.zeros(len(ds), dtype=bool)
    mask[[1, 5]] = True
    assert ds.subset(mask).sample_ids.tolist() == [ds.sample_ids[1], ds.sample_ids[5]]
    assert len(ds) == 40
    with pytest.raises(IndexError, match="subset indices"):
        ds.subset([0, 40])


def test_cache_key_stable_across_constructions():
    a = create_dataset("synthetic", num_images=30)
    b = create_dataset("synthetic", num_images=30)
    c = create_dataset("synthetic", num_images=30, seed=1)
    d = create_dataset("synthetic", num_images=30, label_noise=0.1)
    assert a.cache_key() == b.cache_key()
    assert len({a.cache_key(), c.cache_key(), d.cache_key()}) == 3
    assert len(a.cache_key()) == 32
