"""docs/datasets.md works as written: every ``apcnn`` command in its shell blocks parses, the
"Bring your own data in 5 minutes" blocks run end to end on a tiny folder of photos (template,
fill in, verify, train, evaluate, predict, report), and the worked examples verify."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
DOC = (REPO / "docs" / "datasets.md").read_text(encoding="utf-8")

#: the quick schedule added to the doc's `apcnn train` command (the commands stay the doc's)
QUICK = [
    "data.image_size=64",
    "data.num_workers=0",
    "model.rank=4",
    "mtl.max_outer=2",
    "train.batch_size=16",
    "train.epochs_single=1",
    "train.epochs_joint=1",
    "train.rounds=1",
]


def blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, re.S)


def section(title: str) -> str:
    start = DOC.index(f"## {title}")
    end = DOC.find("\n## ", start + 1)
    return DOC[start : end if end >= 0 else None]


def commands(text: str) -> list[list[str]]:
    """The ``apcnn ...`` lines of the bash blocks of ``text`` as argv lists (without ``apcnn``)."""
    out = []
    for block in blocks(text, "bash"):
        for line in block.splitlines():
            line = line.split(" #")[0].strip()
            if line.startswith("apcnn "):
                out.append(shlex.split(line)[1:])
    return out


def test_every_command_in_the_doc_parses():
    from apcnn.cli import build_parser

    argvs = commands(DOC)
    assert len(argvs) >= 12
    parser = build_parser()
    for argv in argvs:
        args = parser.parse_args(argv)
        assert callable(args.func), argv


def test_readme_links_the_datasets_doc_first():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    links = re.findall(r"\]\(([^)#]+\.md)", readme)
    assert links and links[0] == "docs/datasets.md", links[:3]


def _fill_in(root: Path, n: int = 30) -> None:
    """What a user does in step 2: photos in images/, one labels.csv row each (the template's
    attribute columns, yes/no/1/0 and some unknown cells), groups.yaml kept."""
    from PIL import Image

    rng = np.random.default_rng(0)
    lines = (root / "labels.csv").read_text().splitlines()
    header = next(line for line in lines if not line.startswith("#"))  # after the help lines
    names = header.split(",")[1:]
    rows = [header]
    for i in range(n):
        red = i % 2
        color = (200, 30, 30) if red else (30, 30, 200)
        pixels = rng.integers(0, 40, (48, 48, 3)) + np.array(color)
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(root / "images" / f"p{i}.jpg")
        cells = {
            "red": str(red),
            "blue": "yes" if not red else "no",
            "striped": str(i % 3 == 0),
            "plain": "" if i % 7 == 0 else str(int(i % 3 != 0)),
            "long_sleeves": str((i // 2) % 2),
        }
        rows.append(",".join([f"p{i}.jpg", *(cells[a] for a in names)]))
    (root / "labels.csv").write_text("\n".join(rows) + "\n")


def test_bring_your_own_data_runs_as_written(tmp_path, monkeypatch, capsys):
    from apcnn.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("APCNN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("APCNN_PROGRESS", "plain")
    (tmp_path / "configs").symlink_to(REPO / "configs")
    argvs = commands(section("Bring your own data in 5 minutes"))
    assert [a[:2] for a in argvs] == [
        ["data", "template"],
        ["data", "verify"],
        ["train", "-c"],
        ["evaluate", "--checkpoint"],
        ["predict", "--checkpoint"],
        ["report", "runs/mydata"],
    ]
    # the template as the doc shows it, then step 2
    assert main(argvs[0]) == 0
    written = (tmp_path / "mydata" / "labels.csv").read_text()
    assert blocks(section("Bring your own data in 5 minutes"), "text")[0] in written
    _fill_in(tmp_path / "mydata")
    # the example image named in the predict command
    (tmp_path / "mydata/images/p0.jpg").rename(tmp_path / "mydata/images/example1.jpg")
    labels = tmp_path / "mydata" / "labels.csv"
    labels.write_text(labels.read_text().replace("p0.jpg", "example1.jpg"))
    for argv in argvs[1:]:
        if argv[0] == "train":
            argv = [*argv, *(x for item in QUICK for x in ("--set", item))]
        assert main(argv) == 0, argv
        out = capsys.readouterr().out
        if argv[0] == "train":
            assert "apcnn evaluate --checkpoint runs/mydata/checkpoints/MG-CNN" in out
            assert "apcnn report runs/mydata" in out
    assert (tmp_path / "runs/mydata/report.html").is_file()


def test_worked_folder_example_verifies(tmp_path, capsys):
    """The labels.csv and groups.yaml of "The folder format in full", as printed."""
    from PIL import Image

    from apcnn.cli import main
    from apcnn.data import create_dataset

    text = section("The folder format in full")
    csv = next(b for b in blocks(text, "text") if b.startswith("file,class,split"))
    groups = blocks(text, "yaml")[0]
    root = tmp_path / "shirts"
    (root / "images").mkdir(parents=True)
    for name in "abcd":
        Image.new("RGB", (16, 16)).save(root / "images" / f"{name}.jpg")
    (root / "labels.csv").write_text(csv)
    (root / "groups.yaml").write_text(groups)
    assert main(["data", "verify", "folder", "--root", str(root)]) == 0
    assert "4 images, 4 attributes in 3 groups" in capsys.readouterr().out
    ds = create_dataset("folder", root=root)
    assert ds.schema.names == ("red", "blue", "striped", "collar")
    assert ds.schema.class_names == ("dress", "shirt")
    assert ds.split_sizes == {"all": 4, "test": 1, "train": 2, "val": 1}
    assert int((~ds.mask).sum()) == 2  # c.jpg striped, b.jpg collar


@pytest.mark.parametrize(
    "argv", [a for a in commands(DOC) if a[:3] == ["data", "verify", "synthetic"]]
)
def test_synthetic_example_verifies(argv, tmp_path, monkeypatch, capsys):
    from apcnn.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(argv) == 0
    assert "dataset synthetic" in capsys.readouterr().out
