"""Fixtures shared by the whole suite: one feature cache and one tiny trained run per session, so
that tests reading a trained run do not each train their own."""

from __future__ import annotations

import os

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two pytest-xdist workers on the 2 cores: each worker, and every process
    # its tests start, gets one thread (two torch processes with two OpenMP threads each spin
    # against each other on 2 cores and run 10-20x slower)
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    """Long tests first, so that two workers do not end on one long test each other waits for;
    multi-process tests on one worker (their processes would otherwise share the cores with
    the other worker's multi-process test)."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable: slow first
    for item in items:
        if item.get_closest_marker("distributed"):
            item.add_marker(pytest.mark.xdist_group("multiprocess"))


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory):
    """The feature cache folder of the session (the engine-level tests' module fixtures use the
    same one): the tiny synthetic dataset's trunk features are extracted once."""
    return tmp_path_factory.getbasetemp() / "cache"


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, session_cache):
    """``(run folder, train() result)`` of the tiny synthetic run of ``_tiny.TINY`` (S-CNN,
    M-CNN, MG-CNN, one round). Tests may add files to the folder, never change or remove any."""
    from _tiny import tiny_config
    from apcnn.training import train

    out = tmp_path_factory.mktemp("tiny") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("APCNN_CACHE", str(session_cache))
        result = train(tiny_config(out))
    return out, result
