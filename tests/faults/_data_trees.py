"""The data fault tests' builders: the fake dataset trees of ``tests/data/conftest.py`` (loaded
from that file, so both suites write the same published layouts) and a tiny folder-dataset run."""

from __future__ import annotations

import importlib.util
from pathlib import Path

_CONFTEST = Path(__file__).resolve().parents[1] / "data" / "conftest.py"
_spec = importlib.util.spec_from_file_location("_apcnn_data_trees", _CONFTEST)
assert _spec is not None and _spec.loader is not None
trees = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(trees)

write_jpeg = trees.write_jpeg
corrupt_file = trees.corrupt_file
write_folder = trees.write_folder
write_clothing = trees.write_clothing
write_celeba = trees.write_celeba
write_cub = trees.write_cub
write_awa = trees.write_awa

#: a folder-dataset training run of a few seconds on a CPU (S-CNN only, one epoch)
TINY_FOLDER_RUN = [
    "data.name=folder",
    "data.image_size=32",
    "data.num_workers=0",
    "model.tail=head",
    "model.rank=2",
    "mtl.max_outer=2",
    "train.batch_size=8",
    "train.epochs_single=1",
    "train.epochs_joint=1",
    "train.rounds=1",
    "train.methods=[S-CNN]",
]


def write_labelled_images(root: Path, n: int = 16) -> Path:
    """``root/labels.csv`` (columns a, b) and ``n`` small JPEGs ``0.jpg .. n-1.jpg``."""
    root.mkdir(parents=True, exist_ok=True)
    rows = ["file,a,b"]
    for i in range(n):
        write_jpeg(root / f"{i}.jpg", seed=i, size=(20, 20))
        rows.append(f"{i}.jpg,{i % 2},{(i // 2) % 2}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def tiny_folder_config(root: Path, out: Path, *extra: str):
    """The :class:`apcnn.config.TrainConfig` of a tiny run on the folder dataset at ``root``."""
    from apcnn.config import TrainConfig, load_config

    return load_config(
        TrainConfig, None, [*TINY_FOLDER_RUN, f"data.root={root}", f"run.out={out}", *extra]
    )
