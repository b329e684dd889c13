"""Run-folder faults: two processes on one --out, `apcnn demo` or `train` over a finished run.

Each asserts a one-line error and an unchanged run folder (nothing lost by accident).
"""

from __future__ import annotations

import fcntl
import os

import pytest
from _safety_helpers import copy_run, snapshot

from _tiny import tiny_config
from apcnn.cli import main
from apcnn.config import ConfigError, save_config


@pytest.fixture(autouse=True)
def _feature_cache(session_cache, monkeypatch):
    monkeypatch.setenv("APCNN_CACHE", str(session_cache))


def _hold_lock(folder, pid: int):
    """Hold ``folder/.lock`` the way a running `apcnn train` does (flock on an open file)."""
    folder.mkdir(parents=True, exist_ok=True)
    f = open(folder / ".lock", "a+")  # noqa: SIM115 - held until the test closes it
    fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    f.seek(0)
    f.truncate()
    f.write(f"{pid}\n")
    f.flush()
    return f


def test_second_train_on_a_locked_folder_names_the_holder(tmp_path, capsys):
    from apcnn.training import train

    out = tmp_path / "run"
    holder = _hold_lock(out, 424242)
    try:
        with pytest.raises(ConfigError, match=r"in use by another apcnn process \(pid 424242\)"):
            train(tiny_config(out))
        config = tmp_path / "tiny.yaml"
        save_config(tiny_config(out), config)
        assert main(["train", "-c", str(config), "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert "pid 424242" in err and len(err.splitlines()) == 1, err
        assert not (out / "checkpoints").exists()  # the refused process wrote nothing
    finally:
        holder.close()


def test_the_lock_is_released_and_records_the_pid(tmp_path):
    from apcnn.training.run import run_lock

    with run_lock(tmp_path / "run") as path:
        assert path.read_text().strip() == str(os.getpid())
        with pytest.raises(ConfigError, match=f"pid {os.getpid()}"), run_lock(tmp_path / "run"):
            pass
    with run_lock(tmp_path / "run"):  # released: the next run may start
        pass


def test_demo_does_not_delete_a_training_run(tiny_run, tmp_path, capsys):
    run = copy_run(tiny_run[0], tmp_path / "run")
    before = snapshot(run)
    assert main(["demo", "--quick", "--out", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert "--overwrite" in err and len(err.splitlines()) == 1, err
    assert snapshot(run) == before


def test_demo_takes_an_explicit_overwrite(monkeypatch, tmp_path):
    import apcnn.demo

    seen = {}
    monkeypatch.setattr(apcnn.demo, "run_demo", lambda **kw: seen.update(kw))
    assert main(["demo", "--quick", "--out", str(tmp_path), "--overwrite"]) == 0
    assert seen["overwrite"] is True
    assert main(["demo", "--quick", "--out", str(tmp_path)]) == 0
    assert seen["overwrite"] is False


def test_train_does_not_replace_a_finished_run(tiny_run, tmp_path):
    from apcnn.training import train

    run = copy_run(tiny_run[0], tmp_path / "run")
    before = snapshot(run)
    with pytest.raises(ConfigError, match="already holds a run"):
        train(tiny_config(run))
    assert snapshot(run) == before
