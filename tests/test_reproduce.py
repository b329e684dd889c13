"""`apcnn reproduce clothing --quick` on the real data (skips when ../shared/data is absent)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ClothingAttributeDataset"


def test_missing_dataset_folder_gives_one_clear_error(tmp_path, capsys):
    from apcnn.cli import main

    assert main(["reproduce", "clothing", "--root", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "nope" in err and "\n" == err[-1] and err.count("\n") == 1


@pytest.mark.slow
@pytest.mark.skipif(not DATA.exists(), reason="real Clothing data not present")
def test_reproduce_quick_on_real_data(tmp_path, monkeypatch):
    from apcnn.reproduce import METHODS, reproduce_clothing

    monkeypatch.setenv("APCNN_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "repro"
    results = reproduce_clothing(DATA, out=out, quick=True)
    saved = json.loads((out / "results.json").read_text())
    assert saved["methods"].keys() == set(METHODS)
    for block in saved["methods"].values():
        assert set(block["groups"]) == {"colors", "patterns", "cloth_parts", "appearance"}
        assert len(block["per_attribute"]) == 23
        assert 0.5 < block["total"] <= 1.0
    assert (out / "report.md").exists()
    # a finished fold is not redone
    again = reproduce_clothing(DATA, out=out, quick=True)
    assert again["methods"] == results["methods"]
