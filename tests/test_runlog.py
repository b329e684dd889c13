from __future__ import annotations

import json
import os
import random

import numpy as np
import pytest
import torch

from apcnn.runlog import (
    RunDir,
    atomic_write_bytes,
    atomic_write_json,
    read_metrics,
    seed_everything,
    to_jsonable,
)


def test_rundir_logs_and_metrics(tmp_path):
    out = tmp_path / "run"
    with RunDir(out, rank=0, console=False) as run:
        run.logger.info("hello %d", 42)
        run.log_metrics(1, loss=torch.tensor(0.5), acc=np.float32(0.25), note="x")
        run.log_metrics(2, loss=float("nan"))
    assert "hello 42" in (out / "train.log").read_text()
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == [1, 2]
    assert rows[0]["loss"] == 0.5 and rows[0]["acc"] == 0.25 and rows[0]["note"] == "x"
    assert rows[1]["loss"] is None  # non-finite -> null, strict JSON
    for line in (out / "metrics.jsonl").read_text().splitlines():
        json.loads(line)


def test_non_zero_rank_writes_nothing(tmp_path, monkeypatch):
    out = tmp_path / "run"
    monkeypatch.setenv("RANK", "1")
    with RunDir(out, console=False) as run:
        assert run.rank == 1 and not run.is_main
        run.logger.info("silent")
        run.log_metrics(1, loss=1.0)
        run.save_json("x.json", {"a": 1})
    assert not out.exists()


def test_two_rundirs_do_not_share_handlers(tmp_path):
    a = RunDir(tmp_path / "a", rank=0, console=False)
    b = RunDir(tmp_path / "b", rank=0, console=False)
    a.logger.info("only-a")
    a.close()
    b.close()
    assert "only-a" not in (tmp_path / "b" / "train.log").read_text()


def test_save_json_atomic_and_strict(tmp_path, monkeypatch):
    run = RunDir(tmp_path, rank=0, console=False)
    path = run.save_json("results.json", {"x": np.float64(0.5), "arr": np.arange(3), "p": tmp_path})
    assert json.loads(path.read_text()) == {"x": 0.5, "arr": [0, 1, 2], "p": str(tmp_path)}

    def boom(src, dst):
        raise OSError("simulated crash")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        run.save_json("results.json", {"x": 1.0})
    monkeypatch.undo()
    assert json.loads(path.read_text())["x"] == 0.5  # old content intact
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    run.close()


def _no(name):
    raise ValueError(name)


def test_to_jsonable_and_helpers(tmp_path):
    with pytest.raises(TypeError, match="as JSON"):
        to_jsonable({"f": object()})
    assert to_jsonable((1, float("inf"))) == [1, None]
    p = atomic_write_bytes(tmp_path / "sub" / "f.bin", b"abc")
    assert p.read_bytes() == b"abc"
    # strict JSON: NaN inside a numpy array becomes null (parse_constant would reject NaN)
    text = atomic_write_json(tmp_path / "n.json", np.array([np.nan, 1.0])).read_text()
    assert json.loads(text, parse_constant=_no) == [None, 1.0]


def test_write_environment(tmp_path):
    with RunDir(tmp_path, rank=0, console=False) as run:
        env = json.loads(run.write_environment(seed=7).read_text())
    for key in ("python", "torch", "apcnn", "numpy", "devices", "seed", "command", "git"):
        assert key in env
    assert env["seed"] == 7 and env["torch"] == torch.__version__


def _draws():
    return random.random(), np.random.rand(), torch.rand(2).tolist()  # noqa: NPY002


def test_seed_everything_repeats_cpu_runs(monkeypatch):
    for var in ("PYTHONHASHSEED", "CUBLAS_WORKSPACE_CONFIG"):  # restored after the test
        monkeypatch.setenv(var, "x")
        monkeypatch.delenv(var)
    was = torch.are_deterministic_algorithms_enabled()
    try:
        seed_everything(5)
        first = _draws()
        torch.manual_seed(0)
        net_a = torch.nn.Linear(3, 2)
        seed_everything(5)
        assert _draws() == first
        torch.manual_seed(0)
        net_b = torch.nn.Linear(3, 2)
        assert torch.equal(net_a.weight, net_b.weight)
        seed_everything(6, deterministic=False)
        assert _draws() != first
        with pytest.raises(ValueError, match="seed"):
            seed_everything(-1)
    finally:
        torch.use_deterministic_algorithms(was)


# ------------------------------------------------------------------------------- progress bars
def test_progress_is_plain_and_periodic_off_a_terminal(monkeypatch, capsys):
    from apcnn.runlog import PlainProgress, progress

    monkeypatch.delenv("APCNN_PROGRESS", raising=False)
    monkeypatch.setenv("APCNN_PROGRESS_INTERVAL", "0")
    bar = progress(total=4, desc="training", unit="step")  # capsys: stderr is not a terminal
    assert isinstance(bar, PlainProgress)
    for k in range(4):
        bar.set_postfix_str(f"S-CNN sgd r0 e{k}")
        bar.update(1)
    bar.close()
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = err.splitlines()
    assert len(lines) == 5  # one per update (interval 0) and one at close
    assert lines[0].startswith("training: 1/4 (25%)") and "[S-CNN sgd r0 e0]" in lines[0]
    assert lines[-1].startswith("training: 4/4 (100%)") and "step/s" in lines[-1]
    bar = progress(total=2, desc="quiet", disable=True)
    bar.update(2)
    bar.close()
    assert capsys.readouterr().err == ""


def test_progress_closing_line_and_modes(monkeypatch, capsys):
    from apcnn.runlog import PlainProgress, progress

    monkeypatch.setenv("APCNN_PROGRESS_INTERVAL", "3600")
    assert list(progress(range(3), desc="items", unit="img")) == [0, 1, 2]
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("items: 3/3 (100%)") and "img/s" in line
    monkeypatch.setenv("APCNN_PROGRESS", "off")
    bar = progress(total=2, desc="quiet")
    bar.update(2)
    bar.close()
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("APCNN_PROGRESS", "bar")
    bar = progress(total=2, desc="bar")
    assert not isinstance(bar, PlainProgress) and hasattr(bar, "set_postfix")
    bar.close()


def test_log_lines_go_through_an_active_bar(tmp_path, monkeypatch):
    """With a tqdm bar on screen, a RunDir console line is written with tqdm.write (the bar is
    cleared and redrawn below the line, never split by it)."""
    import tqdm

    written = []
    monkeypatch.setattr(
        tqdm.tqdm, "write", classmethod(lambda cls, s, file=None: written.append(s))
    )
    with RunDir(tmp_path / "run", rank=0, console=True) as run:
        bar = tqdm.tqdm(total=3, file=open(os.devnull, "w"))  # noqa: SIM115
        try:
            run.logger.info("solver round 1")
        finally:
            bar.close()
        assert written == ["solver round 1"]
        run.logger.info("no bar now")  # plain stream write
    assert written == ["solver round 1"]


@pytest.mark.slow
def test_a_non_terminal_run_log_has_no_carriage_returns(tmp_path):
    """``apcnn train`` with stderr redirected to a file: progress as plain lines, no '\\r'."""
    import subprocess
    import sys

    log = tmp_path / "stderr.log"
    argv = [
        sys.executable, "-m", "apcnn", "train", "-c", "configs/demo.yaml",
        "--out", str(tmp_path / "run"),
        "--set", "data.image_size=64", "--set", "data.options={num_images: 64}",
        "--set", "model.rank=4", "--set", "mtl.max_outer=2",
        "--set", "train.epochs_single=1", "--set", "train.epochs_joint=1",
        "--set", "train.rounds=1",
    ]  # fmt: skip
    env = {**os.environ, "APCNN_CACHE": str(tmp_path / "cache"), "APCNN_PROGRESS_INTERVAL": "0"}
    env.pop("APCNN_PROGRESS", None)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(log, "w") as f:
        proc = subprocess.run(
            argv, stderr=f, stdout=subprocess.PIPE, env=env, cwd=repo, timeout=600
        )
    text = log.read_text()
    assert proc.returncode == 0, text[-2000:]
    assert "\r" not in text
    assert "\x1b[" not in text  # no cursor movement either
    assert any(line.startswith("training: ") and "/" in line for line in text.splitlines())
    assert "\r" not in (tmp_path / "run" / "train.log").read_text()
    assert "apcnn report" in proc.stdout.decode()
