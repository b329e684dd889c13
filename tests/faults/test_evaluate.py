"""Evaluation faults: data whose columns are reordered or renamed, a root with added or removed
images (different rebuilt splits), checkpoints whose metadata disagree with their tensors."""

from __future__ import annotations

import shutil

import pytest
from _safety_helpers import folder_config, rewrite_checkpoint, write_folder_dataset

from apcnn.checkpoint import CheckpointError


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    """(data root, run folder, test accuracy) of an S-CNN run on a 40-image folder dataset."""
    import json

    from apcnn.training import train

    base = tmp_path_factory.mktemp("folder_run")
    root = write_folder_dataset(base / "data")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("APCNN_CACHE", str(base / "cache"))
        train(folder_config(root, base / "run"))
    total = json.loads((base / "run" / "metrics.json").read_text())["methods"]["S-CNN"]["total"]
    return root, base / "run", total


def _evaluate(ckpt, root, **kw):
    from apcnn.inference import evaluate_checkpoint

    return evaluate_checkpoint(ckpt, root=str(root), **kw)["metrics"]["accuracy"]["total"]


def test_columns_are_matched_by_name(folder_run, tmp_path):
    root, run, total = folder_run
    reordered = write_folder_dataset(tmp_path / "data", columns=("round", "striped", "red"))
    assert _evaluate(run / "checkpoints" / "S-CNN", reordered) == pytest.approx(total, abs=1e-6)


def test_other_attributes_are_named(folder_run, tmp_path):
    root, run, _ = folder_run
    other = write_folder_dataset(tmp_path / "data")
    header, *rows = (other / "labels.csv").read_text().splitlines()
    assert header == "file,striped,red,round"
    lines = ["file,striped,red,square,extra", *(row + ",1" for row in rows)]
    (other / "labels.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"missing: round; extra: square, extra\)") as info:
        _evaluate(run / "checkpoints" / "S-CNN", other)
    assert len(str(info.value).splitlines()) == 1


def test_added_images_do_not_change_the_test_split(folder_run, tmp_path):
    """20 more images at the root: the k-fold split rebuilt from the data would differ (and take
    training images into the test split); the recorded test split is evaluated."""
    root, run, total = folder_run
    grown = tmp_path / "data"
    shutil.copytree(root, grown)
    more = write_folder_dataset(tmp_path / "more", n=20, seed=1)
    lines = (grown / "labels.csv").read_text().splitlines()
    for line in (more / "labels.csv").read_text().splitlines()[1:]:
        name = "new_" + line.split(",")[0]
        shutil.copy(more / line.split(",")[0], grown / name)
        lines.append(name + "," + line.split(",", 1)[1])
    (grown / "labels.csv").write_text("\n".join(lines) + "\n")
    assert _evaluate(run / "checkpoints" / "S-CNN", grown) == pytest.approx(total, abs=1e-6)


def test_a_split_overlapping_training_is_refused(folder_run, tmp_path, capsys):
    """A test image removed from the data: the recorded split cannot be used, the rebuilt one
    holds training images: refused, or evaluated with --allow-overlap and a loud warning."""
    from apcnn.checkpoint import read_checkpoint_meta

    root, run, _ = folder_run
    ckpt = run / "checkpoints" / "S-CNN"
    gone = read_checkpoint_meta(ckpt)["split_ids"]["test"][0]
    shrunk = tmp_path / "data"
    shutil.copytree(root, shrunk)
    lines = (shrunk / "labels.csv").read_text().splitlines()
    (shrunk / "labels.csv").write_text(
        "\n".join(x for x in lines if not x.startswith(gone + ",")) + "\n"
    )
    with pytest.warns(RuntimeWarning, match="not in this data"):
        with pytest.raises(ValueError, match="shares images with the data the model was"):
            _evaluate(ckpt, shrunk)
    with pytest.warns(RuntimeWarning, match="not in this data"):
        _evaluate(ckpt, shrunk, allow_overlap=True)
    assert "WARNING" in capsys.readouterr().err


def test_schema_shorter_than_the_outputs_fails_at_load(folder_run, tmp_path):
    from apcnn.predictor import load_predictor

    _, run, _ = folder_run

    def drop_last_name(tensors, meta):
        names = meta["schema"]["names"][:-1]
        meta["schema"]["names"] = names
        meta["schema"]["kinds"] = meta["schema"]["kinds"][: len(names)]
        meta["schema"]["groups"] = {n: [i] for i, n in enumerate(names)}

    ckpt = rewrite_checkpoint(run / "checkpoints" / "S-CNN", tmp_path / "ckpt", drop_last_name)
    with pytest.raises(CheckpointError, match="names 2 attributes but the model has 3 outputs"):
        load_predictor(ckpt)


def test_tensor_shapes_that_disagree_with_the_metadata(folder_run, tmp_path):
    from apcnn.predictor import load_predictor

    _, run, _ = folder_run

    def other_rank(tensors, meta):
        meta["model"]["rank"] = 2  # the tensors hold rank 3

    ckpt = rewrite_checkpoint(run / "checkpoints" / "S-CNN", tmp_path / "ckpt", other_rank)
    with pytest.raises(CheckpointError, match="tensor shapes disagree") as info:
        load_predictor(ckpt)
    assert len(str(info.value).splitlines()) == 1
