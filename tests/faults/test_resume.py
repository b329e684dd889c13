"""Resume faults: a --resume with a config that changes results, an interrupted step's
metric lines. The refused resume leaves config.yaml and environment.json as they were."""

from __future__ import annotations

import json

import pytest
from _safety_helpers import copy_run, snapshot

from _tiny import tiny_config
from apcnn.config import ConfigError


@pytest.fixture(autouse=True)
def _feature_cache(session_cache, monkeypatch):
    monkeypatch.setenv("APCNN_CACHE", str(session_cache))


def test_resume_with_changed_results_is_refused_with_a_diff(tiny_run, tmp_path):
    from apcnn.training import train

    run = copy_run(tiny_run[0], tmp_path / "run")
    before = snapshot(run)
    with pytest.raises(ConfigError) as info:
        train(tiny_config(run, "train.lr=0.02", "mtl.mu=0.5"), resume=True)
    message = str(info.value)
    assert "train.lr: 0.01 -> 0.02" in message and "mtl.mu: 0.01 -> 0.5" in message
    assert len(message.splitlines()) == 1
    after = snapshot(run)
    for name in ("config.yaml", "environment.json", "metrics.jsonl"):
        assert after[name] == before[name], name  # the run's own record is intact


def test_resume_ignores_keys_that_do_not_change_results():
    from apcnn.training.state import RESUME_FREE_KEYS, config_changes

    saved = {"data": {"num_workers": 2, "root": "a"}, "train": {"device": "cpu", "lr": 0.1}}
    new = {"data": {"num_workers": 0, "root": "a"}, "train": {"device": "cuda", "lr": 0.1}}
    assert config_changes(saved, new) == []
    assert {"data.num_workers", "train.device", "run.out"} <= RESUME_FREE_KEYS
    new["data"]["root"] = "b"
    assert config_changes(saved, new) == ["data.root: a -> b"]


class _Stop(Exception):
    pass


def test_interrupted_step_leaves_no_duplicate_metric_lines(tmp_path, monkeypatch):
    """Stop after the second SGD epoch logged its lines but before its checkpoint; the resumed
    run reruns that epoch: metrics.jsonl holds each step's lines once."""
    from apcnn.training import train, trainer

    extra = ["train.methods=[S-CNN]", "train.epochs_single=2"]
    cfg = tiny_config(tmp_path / "run", *extra)
    original = trainer.Trainer.save_state

    def stop_before_second_checkpoint(self):
        if self.state.completed == 2:  # epoch 1 ran and logged, its state is not saved
            raise _Stop
        original(self)

    monkeypatch.setattr(trainer.Trainer, "save_state", stop_before_second_checkpoint)
    with pytest.raises(_Stop):
        train(cfg)
    monkeypatch.setattr(trainer.Trainer, "save_state", original)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any(r["step"] == 1 for r in rows)  # the interrupted step had logged
    train(tiny_config(tmp_path / "run", *extra), resume=True)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    logged = [r["step"] for r in rows]  # one line per SGD / solve step
    assert logged == sorted(set(logged)) and 1 in logged, logged
