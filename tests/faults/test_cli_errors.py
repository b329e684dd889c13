"""The CLI's error boundary: OS errors (permission, disk full, a file where a folder should be),
errors inside DataLoader workers, bad config values, `evaluate --json` to an unwritable place.
Each is one line on stderr, exit status 2, and nothing half-written."""

from __future__ import annotations

import errno

import pytest
from _safety_helpers import folder_config, write_folder_dataset

from apcnn.cli import main
from apcnn.config import ConfigError, TrainConfig, load_config, save_config


@pytest.fixture(autouse=True)
def _feature_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("APCNN_CACHE", str(tmp_path / "cache"))


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    lines = [x for x in err.splitlines() if x.startswith("apcnn ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize(
    ("code", "reason", "fix"),
    [
        (errno.EACCES, "Permission denied", "permissions"),
        (errno.ENOSPC, "No space left on device", "free some space"),
        (errno.EROFS, "Read-only file system", "read-only"),
    ],
)
def test_os_errors_are_one_line_naming_the_file(monkeypatch, capsys, code, reason, fix):
    import apcnn.demo

    def fail(**_):
        raise OSError(code, reason, "/runs/demo/metrics.jsonl")

    monkeypatch.setattr(apcnn.demo, "run_demo", fail)
    assert main(["demo"]) == 2
    line = _one_line(capsys)
    assert "/runs/demo/metrics.jsonl" in line and reason in line and fix in line, line


def test_out_below_a_file(tmp_path, capsys):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    config = tmp_path / "c.yaml"
    save_config(folder_config(tmp_path, tmp_path / "unused"), config)
    assert main(["train", "-c", str(config), "--out", str(blocker / "run")]) == 2
    assert "file.txt" in _one_line(capsys)


def test_corrupt_image_in_a_dataloader_worker(tmp_path, capsys):
    root = write_folder_dataset(tmp_path / "data", n=12)
    (root / "img_005.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    config = tmp_path / "c.yaml"
    save_config(folder_config(root, tmp_path / "run"), config)
    args = ["train", "-c", str(config), "--set", "data.num_workers=2", "--out", str(tmp_path / "r")]
    assert main(args) == 2
    line = _one_line(capsys)
    assert "img_005.png" in line and "DataLoader worker" in line, line


def test_worker_error_line_is_the_original_message():
    from apcnn.cli import error_line
    from apcnn.data.errors import CorruptImageError

    wrapped = CorruptImageError(
        "Caught CorruptImageError in DataLoader worker process 1.\nOriginal Traceback (most "
        'recent call last):\n  File "x.py", line 3, in f\n    raise ...\n'
        "apcnn.data.errors.CorruptImageError: /data/a.jpg: cannot decode (truncated)\n"
    )
    assert error_line(wrapped).startswith("/data/a.jpg: cannot decode (truncated) (in a")


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("train.device=tpu", "train.device"),
        ("train.lr=.inf", "train.lr"),
        ("train.lr=1e999", "train.lr"),
        ("mtl.mu=.inf", "mtl.mu"),
    ],
)
def test_bad_config_values_are_config_errors(override, key, tmp_path, capsys):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(TrainConfig, None, [override])
    config = tmp_path / "c.yaml"
    save_config(load_config(TrainConfig, None, []), config)
    assert main(["train", "-c", str(config), "--set", override, "--out", str(tmp_path)]) == 2
    assert key in _one_line(capsys)


def test_evaluate_json_is_checked_before_the_table(monkeypatch, tmp_path, capsys):
    import apcnn.inference
    import apcnn.runlog

    calls = []
    result = {"metrics": {"accuracy": {"total": 1.0}}, "table": "THE TABLE"}
    monkeypatch.setattr(
        apcnn.inference, "evaluate_checkpoint", lambda *a, **k: calls.append(1) or result
    )
    missing = tmp_path / "no" / "such" / "m.json"
    assert main(["evaluate", "--checkpoint", "x", "--json", str(missing)]) == 2
    assert "does not exist" in _one_line(capsys) and not calls  # refused before evaluating

    def full(path, obj, **_):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(apcnn.runlog, "atomic_write_json", full)
    assert main(["evaluate", "--checkpoint", "x", "--json", str(tmp_path / "m.json")]) == 2
    captured = capsys.readouterr()
    assert "THE TABLE" not in captured.out  # no table over a failed command
    assert "No space left on device" in captured.err and "m.json" in captured.err
