"""The built wheel works on its own: presets inside, `apcnn demo --quick` from an installed copy.

The wheel is built from a copy of the source (nothing is written into the checkout), installed
without dependencies into a fresh virtual environment that borrows this environment's packages
through a ``.pth`` line (torch, timm, ... are not reinstalled), and run from outside the checkout,
so the ``apcnn`` it imports is the installed one, not ``src/``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _build_wheel(tmp_path: Path) -> Path:
    source = tmp_path / "source"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc")
    shutil.copytree(ROOT / "src", source / "src", ignore=ignore)
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, source / name)
    dist = tmp_path / "dist"
    # no build isolation: this environment's setuptools builds it (works offline)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    _run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(dist), "."], source)
    (wheel,) = dist.glob("apcnn-*.whl")
    return wheel


def _install(wheel: Path, env_dir: Path) -> Path:
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    purelib = _run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], env_dir
    ).strip()
    # this environment's packages, after the new environment's own (the wheel's apcnn wins)
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (Path(purelib) / "_apcnn_test_deps.pth").write_text("\n".join(sorted(deps)) + "\n")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    _run([*pip, "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)], env_dir)
    return env_dir / "bin"


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="venv layout (bin/) of POSIX systems")
def test_installed_wheel_has_presets_and_runs_the_demo(tmp_path):
    pytest.importorskip("setuptools")
    wheel = _build_wheel(tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    for preset in ("demo", "clothing", "awa2", "celeba", "cub", "folder"):
        assert f"apcnn/configs/{preset}.yaml" in names
    assert "apcnn/py.typed" in names

    bin_dir = _install(wheel, tmp_path / "env")
    work = tmp_path / "elsewhere"  # a working folder outside the checkout
    work.mkdir()
    env = dict(os.environ, APCNN_CACHE=str(tmp_path / "cache"))
    env.pop("PYTHONPATH", None)
    where = _run(
        [
            str(bin_dir / "python"),
            "-c",
            "import apcnn, apcnn.config as c; print(apcnn.__file__); print(c.preset_path('demo'))",
        ],
        work,
        env,
    ).split()
    assert all(Path(p).is_relative_to(tmp_path / "env") for p in where), where
    printed = _run([str(bin_dir / "apcnn"), "demo", "--quick", "--out", "demo"], work, env)
    assert "MG-CNN" in printed
    results = json.loads((work / "demo" / "results.json").read_text())
    assert set(results["methods"]) == {"S-CNN", "MG-CNN"}
    assert (work / "demo" / "report.md").is_file()
