"""Builders shared by the run-safety and error-boundary fault tests (tests/faults/)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

#: a folder-dataset run: small images, S-CNN only, one epoch (seconds on a CPU)
FOLDER_RUN = [
    "data.name=folder",
    "data.image_size=64",
    "data.num_workers=0",
    "model.tail=head",
    "model.rank=3",
    "train.batch_size=16",
    "train.epochs_single=1",
    "train.methods=[S-CNN]",
]

ATTRIBUTES = ("striped", "red", "round")


def write_folder_dataset(root: Path, n: int = 40, *, columns=ATTRIBUTES, seed: int = 0) -> Path:
    """``root/labels.csv`` + ``n`` small PNGs whose colour carries the labels (learnable)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    labels = rng.integers(0, 2, size=(n, len(ATTRIBUTES)))
    rows = ["file," + ",".join(columns)]
    for i in range(n):
        name = f"img_{i:03d}.png"
        colour = tuple(int(60 + 150 * v) for v in labels[i])
        pixels = np.clip(rng.normal(colour, 20, size=(24, 24, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels, "RGB").save(root / name)
        by_name = dict(zip(ATTRIBUTES, labels[i]))
        rows.append(name + "," + ",".join(str(by_name[c]) for c in columns))
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def folder_config(root: Path, out: Path, *extra: str):
    from apcnn.config import TrainConfig, load_config

    return load_config(
        TrainConfig, None, [*FOLDER_RUN, f"data.root={root}", f"run.out={out}", *extra]
    )


def snapshot(folder: Path) -> dict[str, str]:
    """relative path -> sha256 of every file under ``folder`` (to assert nothing changed)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def copy_run(run: Path, dest: Path) -> Path:
    """A private copy of a trained run folder (the session's ``tiny_run`` must stay unchanged)."""
    shutil.copytree(run, dest)
    return dest


def rewrite_checkpoint(src: Path, dest: Path, edit) -> Path:
    """Copy checkpoint ``src`` to ``dest`` with ``edit(tensors, meta)`` applied (re-saved, so the
    hashes are valid: the fault is in the content, not a damaged file)."""
    from apcnn.checkpoint import load_checkpoint, save_checkpoint

    tensors, meta = load_checkpoint(src)
    edit(tensors, meta)
    save_checkpoint(dest, tensors, meta)
    return dest
