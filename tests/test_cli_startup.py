"""Light commands start fast: help, ``config show|list``, ``data template`` and ``data verify``
(with and without ``--fast``) import none of torch, torchvision, timm, scikit-learn or
matplotlib (torch alone takes seconds to import on a small machine).

A behaviour check, not a timing test: each command runs through ``apcnn.cli.main`` in a fresh
interpreter, which then prints the heavy modules found in ``sys.modules``. The measured start-up
times are in docs/benchmarks.md ("CLI start-up").
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("torch", "torchvision", "timm", "sklearn", "matplotlib")

_PROBE = """
import contextlib, io, json, sys
from apcnn.cli import main
out, err = io.StringIO(), io.StringIO()
try:
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(json.loads(sys.argv[1]))
except SystemExit as e:
    rc = e.code
heavy = [m for m in json.loads(sys.argv[2]) if m in sys.modules]
print(json.dumps({"rc": rc, "heavy": heavy, "out": out.getvalue(), "err": err.getvalue()}))
"""


def _run(argv: list[str], cwd: Path) -> dict:
    """Run ``main(argv)`` in a fresh interpreter; its exit status, output and heavy modules."""
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(argv), json.dumps(HEAVY)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def folder_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 6-image folder dataset (labels.csv with a missing label, groups.yaml)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("light") / "shirts"
    (root / "images").mkdir(parents=True)
    rows = ["file,red,striped"]
    for i in range(6):
        Image.new("RGB", (16, 12), (40 * i, 90, 200)).save(root / "images" / f"{i}.jpg")
        rows.append(f"images/{i}.jpg,{i % 2},{'' if i == 0 else (i // 2) % 2}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    (root / "groups.yaml").write_text("color: [red]\npattern: [striped]\n")
    return root


LIGHT = [
    ["--help"],
    ["train", "--help"],
    ["data", "verify", "--help"],
    ["config", "show"],
    ["config", "show", "folder"],
    ["config", "show", "clothing"],  # validates model.pool_region
    ["config", "show", "--defaults"],
    ["config", "list"],
    ["data", "template", "{tmp}/template"],
    ["data", "verify", "folder", "--root", "{root}", "--fast"],
    ["data", "verify", "folder", "--root", "{root}"],
    ["data", "verify", "synthetic", "--root", "{tmp}", "--fast"],
]


@pytest.mark.parametrize("argv", LIGHT, ids=[" ".join(a) for a in LIGHT])
def test_light_command_imports_no_heavy_module(argv, folder_tree, tmp_path):
    argv = [a.format(tmp=tmp_path, root=folder_tree) for a in argv]
    result = _run(argv, cwd=tmp_path)
    assert result["rc"] == 0, result["err"]
    assert result["heavy"] == [], f"apcnn {' '.join(argv)} imported {result['heavy']}"


def test_verify_fast_still_reports_the_labels(folder_tree, tmp_path):
    result = _run(["data", "verify", "folder", "--root", str(folder_tree), "--fast"], tmp_path)
    assert result["rc"] == 0, result["err"]
    assert "6 images, 2 attributes in 2 groups" in result["out"]
    assert "(not decoded: --fast)" in result["out"]


@pytest.mark.parametrize(
    "override, key",
    [("mtl.mu=high", "mtl.mu"), ("model.pool_region=[0.5,0.2,0,1]", "model.pool_region")],
)
def test_config_error_before_torch(override, key, tmp_path):
    """``apcnn train`` refuses a bad key before it imports torch (one line, exit status 2)."""
    preset = Path(__file__).resolve().parents[1] / "src" / "apcnn" / "configs" / "folder.yaml"
    result = _run(["train", "-c", str(preset), "--set", override], tmp_path)
    assert result["rc"] == 2
    assert key in result["err"]
    assert result["heavy"] == []


def test_dataset_still_loads_images_and_concatenates(folder_tree):
    """Torch is imported only where images become tensors: ``ds[i]``, ``ds + ds``, DataLoader."""
    import torch
    from torch.utils.data import ConcatDataset, DataLoader

    from apcnn.data import create_dataset

    ds = create_dataset("folder", root=folder_tree, image_size=32)
    item = ds[1]
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
    assert item["target"].tolist() == [1.0, -1.0] and item["mask"].tolist() == [True, True]
    assert ds[0]["mask"].tolist() == [True, False]
    both = ds + ds.subset([0, 1])
    assert isinstance(both, ConcatDataset) and len(both) == 8
    batch = next(iter(DataLoader(ds, batch_size=4)))
    assert batch["image"].shape == (4, 3, 32, 32) and batch["index"].tolist() == [0, 1, 2, 3]
    ds.transform = lambda img: torch.zeros(1)
    assert ds[2]["image"].shape == (1,)
