"""The command line's own behaviour: help on every option, ``config show``, ``data template``,
``--checkpoint RUN_DIR``, the next steps after training, and light commands without torch."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from apcnn.cli import build_parser, checkpoint_dir, main, next_steps


def _subparsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _subparsers(sub, (*path, name))


def test_every_option_and_argument_has_help():
    missing = []
    for path, parser in _subparsers(build_parser()):
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            if not action.help:
                missing.append(" ".join(path) + " " + (action.option_strings or [action.dest])[0])
    assert not missing, missing


def test_config_show_without_preset_lists_the_presets(capsys):
    from apcnn.config import list_presets

    assert main(["config", "show"]) == 0
    out = capsys.readouterr().out
    assert all(f"  {name}" in out for name in list_presets())
    assert main(["config", "list"]) == 0
    assert capsys.readouterr().out.split() == list_presets()


def test_config_show_lists_every_key_with_type_value_and_meaning(capsys):
    from apcnn.config import config_keys

    rows = config_keys("folder")
    assert len(rows) >= 50
    assert not [r["key"] for r in rows if not r["help"]], "every key has a meaning"
    by_key = {r["key"]: r for r in rows}
    assert by_key["data.name"]["value"] == "folder" and by_key["data.name"]["set_by_preset"]
    assert by_key["data.folds"]["value"] == 5 and not by_key["data.folds"]["set_by_preset"]
    assert by_key["mtl.loss"]["type"].startswith("one of")
    assert "group-sparsity" in by_key["mtl.mu"]["help"]
    assert main(["config", "show", "folder"]) == 0
    out = capsys.readouterr().out
    assert '* data.name = "folder"  [str]' in out
    assert "  data.val_fraction = 0.15  [float]" in out
    assert main(["config", "show", "--defaults"]) == 0
    assert 'data.name = "synthetic"' in capsys.readouterr().out
    assert main(["config", "show", "nosuch"]) == 2
    assert "no preset 'nosuch'" in capsys.readouterr().err


def test_data_template_is_accepted_by_verify_once_images_exist(tmp_path, capsys):
    from PIL import Image

    root = tmp_path / "mine"
    assert main(["data", "template", str(root)]) == 0
    assert "apcnn data verify folder --root" in capsys.readouterr().out
    assert {p.name for p in root.iterdir()} == {"images", "labels.csv", "groups.yaml", "README.txt"}
    assert main(["data", "verify", "folder", "--root", str(root)]) == 2  # images not there yet
    assert "example1.jpg" in capsys.readouterr().err
    for name in ("example1.jpg", "example2.jpg"):
        Image.new("RGB", (16, 16)).save(root / "images" / name)
    assert main(["data", "verify", "folder", "--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "2 images, 5 attributes in 3 groups" in out and "OK" in out
    # a second template into the same folder refuses, naming the file
    assert main(["data", "template", str(root)]) == 2
    assert "labels.csv already exists" in capsys.readouterr().err


def _fake_run(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    for name in ("S-CNN", "MG-CNN", "state"):
        (run / "checkpoints" / name).mkdir(parents=True)
        (run / "checkpoints" / name / "meta.json").write_text("{}")
    return run


def test_checkpoint_run_dir_lists_the_checkpoints(tmp_path, capsys):
    run = _fake_run(tmp_path)
    ckpt = str(run / "checkpoints" / "MG-CNN")
    assert checkpoint_dir(ckpt) == ckpt
    for folder in (run, run / "checkpoints"):
        assert main(["evaluate", "--checkpoint", str(folder)]) == 2
        err = capsys.readouterr().err
        assert "not a checkpoint" in err and ckpt in err and "S-CNN" in err
        assert "state" not in err.replace(str(tmp_path), "")


def test_next_steps_name_the_run_and_the_commands(tmp_path):
    run = _fake_run(tmp_path)
    text = next_steps(run)
    assert f"results: {run}" in text
    assert f"apcnn evaluate --checkpoint {run}/checkpoints/MG-CNN" in text
    assert f"apcnn predict --checkpoint {run}/checkpoints/MG-CNN IMAGE" in text
    assert f"apcnn report {run}" in text


@pytest.mark.parametrize(
    "argv", [["--help"], ["config", "show"], ["config", "show", "folder"], ["data", "--help"]]
)
def test_light_commands_do_not_import_torch(argv, tmp_path):
    code = (
        "import sys\n"
        "from apcnn.cli import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if 'apcnn' in m)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
