"""Data faults: bad images, duplicate rows, files and names that are not UTF-8, skipped images.

Each test builds its fault in tmp_path (the fake trees of tests/data/conftest.py) and asserts the
one-line error naming the file (exit status 2 through the CLI) or the correct result.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings

import pytest
from _data_trees import (
    corrupt_file,
    tiny_folder_config,
    write_awa,
    write_celeba,
    write_clothing,
    write_cub,
    write_folder,
    write_labelled_images,
)

from apcnn.cli import main
from apcnn.data import CorruptImageError, DuplicateRowError, EncodingError, create_dataset


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    lines = [x for x in err.splitlines() if x.startswith("apcnn ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# ------------------------------------------------------------------ apcnn data verify
def test_verify_decodes_by_default_and_names_a_truncated_image(tmp_path, capsys):
    root = write_folder(tmp_path / "ds")
    corrupt_file(root / "b.jpg")
    assert main(["data", "verify", "folder", "--root", str(root)]) == 2
    line = _error_line(capsys)
    assert "1 problem(s)" in line and "corrupt image" in line and "b.jpg" in line
    # --fast skips decoding: the truncated file is not seen (and the report says so)
    assert main(["data", "verify", "folder", "--root", str(root), "--fast"]) == 0
    assert "(not decoded: --fast)" in capsys.readouterr().out
    # the older spelling still decodes
    assert (
        main(["data", "verify", "folder", "--root", str(root), "--fast", "--option", "decode=true"])
        == 2
    )
    assert "b.jpg" in _error_line(capsys)


def test_verify_reports_an_empty_image_even_with_fast(tmp_path, capsys):
    root = write_folder(tmp_path / "ds")
    (root / "d.jpg").write_bytes(b"")
    for extra in ([], ["--fast"]):
        assert main(["data", "verify", "folder", "--root", str(root), *extra]) == 2
        line = _error_line(capsys)
        assert "empty image (0 bytes)" in line and "d.jpg" in line


def test_verify_lists_every_problem_in_the_report_and_json(tmp_path, capsys):
    root = write_folder(tmp_path / "ds")
    corrupt_file(root / "a.jpg")
    (root / "d.jpg").write_bytes(b"")
    out_json = tmp_path / "report.json"
    assert main(["data", "verify", "folder", "--root", str(root), "--json", str(out_json)]) == 2
    out = capsys.readouterr().out
    assert "2 problem(s):" in out and "a.jpg" in out and "d.jpg" in out
    report = json.loads(out_json.read_text())
    assert not report["ok"] and report["num_problems"] == 2
    assert report["images"]["corrupt"] == 1 and report["images"]["empty"] == 1


def test_verify_reports_duplicate_images(tmp_path, capsys):
    root = write_folder(tmp_path / "ds")
    shutil.copy(root / "a.jpg", root / "e.jpg")
    with open(root / "labels.csv", "a") as f:
        f.write("e.jpg,0,1,1,dog,test\n")
    out_json = tmp_path / "report.json"
    assert main(["data", "verify", "folder", "--root", str(root), "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    assert "1 duplicate group(s)" in out and "a.jpg = e.jpg" in out
    assert json.loads(out_json.read_text())["duplicates"] == [["a.jpg", "e.jpg"]]


def test_verify_checks_labels_against_groups(tmp_path, capsys):
    bad = write_folder(tmp_path / "bad", groups="colour: [red, blue]\n")
    assert main(["data", "verify", "folder", "--root", str(bad)]) == 2
    line = _error_line(capsys)
    assert "groups.yaml" in line and "unknown attribute 'blue'" in line
    partial = write_folder(tmp_path / "partial", groups="shape: [round]\n")
    assert main(["data", "verify", "folder", "--root", str(partial)]) == 0
    out = capsys.readouterr().out
    assert "attribute(s) in no group get a group of their own: striped, red" in out
    one_sided = write_folder(
        tmp_path / "one", rows=["file,striped,red", "a.jpg,1,0", "b.jpg,1,1", "d.jpg,1,0"]
    )
    assert main(["data", "verify", "folder", "--root", str(one_sided)]) == 0
    assert "attribute 'striped': all 3 labels are positive" in capsys.readouterr().out


# ------------------------------------------------------------ duplicate rows in the loaders
def test_folder_rejects_an_image_listed_twice_with_line_numbers(tmp_path, capsys):
    rows = ["file,striped,red", "a.jpg,1,0", "b.jpg,0,1", "", "./a.jpg,0,1", "d.jpg,1,1"]
    root = write_folder(tmp_path / "ds", rows=rows)
    with pytest.raises(
        DuplicateRowError, match=r"labels\.csv:5: image 'a\.jpg' is already listed on line 2"
    ):
        create_dataset("folder", root=root)
    assert main(["data", "verify", "folder", "--root", str(root)]) == 2
    assert "labels.csv:5" in _error_line(capsys)


def test_celeba_rejects_duplicate_images(tmp_path):
    base = write_celeba(tmp_path / "a", n=4)
    attr = base / "Anno" / "list_attr_celeba.txt"
    lines = attr.read_text().splitlines()
    lines[5] = lines[5].replace("000004.jpg", "000002.jpg")  # line 6 repeats line 4's image
    attr.write_text("\n".join(lines) + "\n")
    with pytest.raises(
        DuplicateRowError,
        match=r"list_attr_celeba\.txt:6: image '000002\.jpg' is already listed on line 4",
    ):
        create_dataset("celeba", root=base)
    base = write_celeba(tmp_path / "b", n=4)
    part = base / "Eval" / "list_eval_partition.txt"
    part.write_text(part.read_text() + "000001.jpg 2\n")
    with pytest.raises(DuplicateRowError, match=r"list_eval_partition\.txt:5: image '000001\.jpg'"):
        create_dataset("celeba", root=base)


def test_cub_rejects_duplicate_ids_and_images(tmp_path):
    base = write_cub(tmp_path / "a", n=4)
    images = base / "images.txt"
    first = images.read_text().splitlines()[0]
    images.write_text(images.read_text() + first + "\n")
    with pytest.raises(DuplicateRowError, match=r"images\.txt:5: id 1 is already listed on line 1"):
        create_dataset("cub", root=base)
    base = write_cub(tmp_path / "b", n=4)
    lines = (base / "images.txt").read_text().splitlines()
    lines[3] = "4 " + lines[1].split()[1]  # id 4 names id 2's image
    (base / "images.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(DuplicateRowError, match=r"is listed under ids 2 and 4"):
        create_dataset("cub", root=base)


def test_awa_rejects_duplicate_classes_and_train_test_overlap(tmp_path):
    base = write_awa(tmp_path / "a")
    classes = base / "classes.txt"
    classes.write_text(classes.read_text().replace("\tbobcat", "\tbat"))
    with pytest.raises(
        DuplicateRowError, match=r"classes\.txt:4: 'bat' is already listed on line 2"
    ):
        create_dataset("awa2", root=base)
    base = write_awa(tmp_path / "b", testclasses=("blue+whale", "collie", "bat"))
    with pytest.raises(
        DuplicateRowError, match="'bat' is in both trainclasses.txt and testclasses"
    ):
        create_dataset("awa2", root=base, split="test")


# ------------------------------------------------------------- files and names not UTF-8
def test_label_files_that_are_not_utf8_are_named(tmp_path, capsys):
    root = write_folder(tmp_path / "ds")
    csv = root / "labels.csv"
    csv.write_bytes(csv.read_bytes().replace(b"cat,train", b"ch\xe8vre,train"))
    with pytest.raises(
        EncodingError, match=r"labels\.csv:2: label file is not valid UTF-8 \(byte 0xe8"
    ):
        create_dataset("folder", root=root)
    assert main(["data", "verify", "folder", "--root", str(root)]) == 2
    assert "labels.csv:2" in _error_line(capsys)
    base = write_awa(tmp_path / "awa")
    (base / "classes.txt").write_bytes((base / "classes.txt").read_bytes() + b"     6\tgn\xfa\n")
    with pytest.raises(EncodingError, match=r"classes\.txt:6: classes\.txt is not valid UTF-8"):
        create_dataset("awa2", root=base)
    base = write_celeba(tmp_path / "celeba", n=3)
    part = base / "Eval" / "list_eval_partition.txt"
    part.write_bytes(part.read_bytes() + b"\xff\n")
    with pytest.raises(EncodingError, match=r"list_eval_partition\.txt:4"):
        create_dataset("celeba", root=base)


def test_groups_file_that_is_not_utf8_is_named(tmp_path):
    root = write_folder(tmp_path / "ds")
    (root / "groups.yaml").write_bytes(b"couleur: [red]\nforme: [round, striped]\n# \xe9\n")
    with pytest.raises(EncodingError, match=r"groups\.yaml:3: groups file is not valid UTF-8"):
        create_dataset("folder", root=root)


def test_image_file_name_that_is_not_utf8_is_named(tmp_path, capsys):
    base = write_clothing(tmp_path, n=4)
    os.rename(base / "images" / "000004.jpg", os.fsencode(base / "images") + b"/caf\xe9.jpg")
    with pytest.raises(EncodingError, match=r"caf\\xe9\.jpg'?: file name is not valid UTF-8"):
        create_dataset("clothing", root=base)
    assert main(["data", "verify", "clothing", "--root", str(base)]) == 2
    assert "caf\\xe9.jpg" in _error_line(capsys)


def test_config_file_that_is_not_utf8_is_named(tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_bytes(b"# r\xe9glages\ndata:\n  name: synthetic\n")
    assert main(["train", "-c", str(cfg), "--out", str(tmp_path / "run")]) == 2
    line = _error_line(capsys)
    assert "run.yaml" in line and "UTF-8" in line


# ----------------------------------------------------------------- data.skip_bad_images
def test_skip_bad_images_works_in_training(tmp_path, monkeypatch):
    from apcnn.training import train

    monkeypatch.setenv("APCNN_CACHE", str(tmp_path / "cache"))
    root = write_labelled_images(tmp_path / "ds", n=16)
    corrupt_file(root / "3.jpg")
    cfg = tiny_folder_config(root, tmp_path / "run", "data.skip_bad_images=true")
    with pytest.warns(RuntimeWarning, match=r"skipped 1 bad image.*3\.jpg"):
        result = train(cfg)
    assert "results_json" in result
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(CorruptImageError, match=r"3\.jpg"):  # and without the flag: named
            train(tiny_folder_config(root, tmp_path / "run2"))


def test_lazily_skipped_image_in_feature_extraction_is_named(tmp_path):
    from apcnn.features import extract_features

    root = write_labelled_images(tmp_path / "ds", n=6)
    corrupt_file(root / "2.jpg")
    ds = create_dataset("folder", root=root, image_size=16, skip_bad_images=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(
            CorruptImageError, match=r"2\.jpg: 1 image\(s\) failed to load.*check_images=True"
        ):
            extract_features(lambda x: x.mean(dim=(2, 3)), ds, batch_size=4)
