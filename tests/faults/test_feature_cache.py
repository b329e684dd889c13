"""The feature cache notices changed images, and users can see and clear it.

Before: a dataset's cache key held its paths, options and sample ids only, so after an image was
edited, replaced, emptied or truncated, training reused the stale features and succeeded. Now the
key includes each image file's size and modification time (``AttributeDataset.files_digest``).
"""

from __future__ import annotations

import os
import shutil

import pytest
import torch
from _data_trees import corrupt_file, tiny_folder_config, write_jpeg, write_labelled_images

from apcnn.cli import main
from apcnn.data import create_dataset
from apcnn.features import FeatureCache


def _later(path, seconds: int = 5) -> None:
    """Move ``path``'s modification time ``seconds`` into the future: an edit made later (two
    writes in one test can fall in the same clock tick of the file system)."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + seconds * 10**9))


def _edit(path):
    write_jpeg(path, seed=99, size=(20, 20))  # new pixels, same name and size in pixels


def _replace(path):
    other = path.with_name("other.jpg")
    write_jpeg(other, seed=7, size=(22, 18))
    os.replace(other, path)


def _empty(path):
    path.write_bytes(b"")


def _same_size_edit(path):
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # one byte of the scan data: same size, different content
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "change",
    [_edit, _replace, _empty, corrupt_file, _same_size_edit],
    ids=["edited", "replaced", "emptied", "truncated", "same-size-edit"],
)
def test_changed_image_changes_the_cache_key(tmp_path, change):
    root = write_labelled_images(tmp_path / "ds", n=4)
    before = create_dataset("folder", root=root).cache_key()
    change(root / "2.jpg")
    _later(root / "2.jpg")
    assert create_dataset("folder", root=root).cache_key() != before
    # the unchanged images of a subset keep their key
    ds = create_dataset("folder", root=root)
    assert ds.subset([0, 1]).cache_key() == ds.subset([0, 1]).cache_key()


def test_unchanged_files_keep_the_key(tmp_path):
    root = write_labelled_images(tmp_path / "ds", n=4)
    a = create_dataset("folder", root=root)
    b = create_dataset("folder", root=root)
    assert a.cache_key() == b.cache_key() and len(a.files_digest()) == 64


def test_training_recomputes_features_after_an_image_is_edited(tmp_path, monkeypatch):
    from apcnn.training import train

    monkeypatch.setenv("APCNN_CACHE", str(tmp_path / "cache"))
    root = write_labelled_images(tmp_path / "ds", n=16)
    files = tmp_path / "cache" / "features"
    train(tiny_folder_config(root, tmp_path / "run1"))
    first = {p.name for p in files.glob("*.safetensors")}
    assert len(first) == 1
    _edit(root / "5.jpg")
    _later(root / "5.jpg")
    train(tiny_folder_config(root, tmp_path / "run2"))
    second = {p.name for p in files.glob("*.safetensors")}
    assert len(second) == 2 and first < second  # a new entry: the features were recomputed


def _fill(cache_dir, n: int = 2) -> FeatureCache:
    cache = FeatureCache(cache_dir)
    for k in range(n):
        key = {"dataset": f"{k:032x}", "backbone": "tf_efficientnet_lite0", "tail": "head"}
        cache.save(key, torch.zeros(10 + k, 8))
    return cache


def test_cache_info_lists_folder_entries_and_size(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("APCNN_CACHE", str(tmp_path))
    _fill(tmp_path / "features")
    assert main(["cache", "info"]) == 0
    out = capsys.readouterr().out
    assert f"feature cache: {tmp_path / 'features'}" in out
    assert "entries: 2, total" in out and "MiB" in out
    assert "10x8" in out and "11x8" in out and "backbone=tf_efficientnet_lite0 tail=head" in out
    assert main(["cache", "info", "--dir", str(tmp_path / "nothing")]) == 0
    assert "entries: 0" in capsys.readouterr().out


def test_cache_clear_asks_then_deletes_only_cache_files(tmp_path, monkeypatch, capsys):
    cache = _fill(tmp_path / "features")
    keep = tmp_path / "features" / "notes.txt"
    keep.write_text("mine")
    (tmp_path / "features" / f".{'a' * 64}.safetensors.x1y2.tmp").write_bytes(b"half")
    monkeypatch.setattr("sys.stdin", open(os.devnull))  # not a terminal: no prompt
    assert main(["cache", "clear", "--dir", str(tmp_path / "features")]) == 2
    assert "pass --yes" in capsys.readouterr().err and len(cache.entries()) == 2
    assert main(["cache", "clear", "--yes", "--dir", str(tmp_path / "features")]) == 0
    assert "deleted 2 cached feature file(s)" in capsys.readouterr().out
    assert cache.entries() == [] and sorted(p.name for p in keep.parent.iterdir()) == ["notes.txt"]
    assert main(["cache", "clear", "--yes", "--dir", str(tmp_path / "features")]) == 0
    assert "nothing to delete" in capsys.readouterr().out


def test_cache_entry_without_its_json_is_still_listed(tmp_path):
    cache = _fill(tmp_path / "c", n=1)
    (entry,) = cache.entries()
    entry.path.with_suffix(".json").unlink()
    (bare,) = cache.entries()
    assert bare.key_parts is None and "(no key file)" in bare.summary()
    shutil.rmtree(tmp_path / "c")
    assert cache.entries() == []
