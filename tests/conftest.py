"""Fixtures shared by the whole suite: one feature cache and one tiny trained run per session, so
that tests reading a trained run do not each train their own."""

from __future__ import annotations

import pytest


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
