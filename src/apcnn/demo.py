"""``apcnn demo``: the whole pipeline on the embedded synthetic dataset, no download.

Generates the synthetic attribute images, trains S-CNN and MG-CNN on the ImageNet-pretrained
default backbone, prints the per-group results table and writes ``OUT/results.json`` (the schema of
DESIGN.md section 3) and ``OUT/report.md``. The same settings are ``configs/demo.yaml`` (a test
keeps the two equal), so ``apcnn train -c configs/demo.yaml`` reproduces it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# The demo preset, as config overrides (kept equal to configs/demo.yaml by a test).
DEMO_SETTINGS: dict[str, Any] = {
    "data.name": "synthetic",
    "data.image_size": 128,
    "data.num_workers": 0,
    "model.tail": "fc",
    "model.rank": 16,
    "mtl.mu": 0.002,
    "mtl.gamma": 1e-5,
    "mtl.lam": 1e-4,
    "mtl.max_outer": 3,
    "mtl.max_iter": 100,
    "mtl.inner_tol": 1e-4,
    "train.batch_size": 64,
    "train.lr": 0.01,
    "train.epochs_single": 6,
    "train.epochs_joint": 2,
    "train.rounds": 2,
    "train.methods": ["S-CNN", "MG-CNN"],
}

QUICK_SETTINGS: dict[str, Any] = {
    "data.options": {"num_images": 300},
    "train.epochs_single": 2,
    "train.epochs_joint": 1,
    "train.rounds": 1,
}


def demo_config(out: str | Path, *, seed: int = 0, quick: bool = False) -> Any:
    import json

    from .config import TrainConfig, load_config

    settings = dict(DEMO_SETTINGS, **(QUICK_SETTINGS if quick else {}))
    settings["run.out"] = str(out)
    settings["train.seed"] = seed
    overrides = [f"{key}={json.dumps(value)}" for key, value in settings.items()]
    return load_config(TrainConfig, None, overrides)


def run_demo(
    out: str | Path = "runs/demo", *, seed: int = 0, quick: bool = False
) -> dict[str, Any]:
    """Train the demo, print the table, write results.json and report.md into ``out``."""
    from .engine import train
    from .reports import format_table
    from .runlog import atomic_write_json

    cfg = demo_config(out, seed=seed, quick=quick)
    result = train(cfg, overwrite=True)
    results = result["results_json"]
    atomic_write_json(Path(out) / "results.json", results)
    print()
    print(format_table(results, None, title="accuracy (%) on the synthetic test split"))
    print(f"\nresults: {Path(out) / 'results.json'}\nreport:  {Path(out) / 'report.md'}")
    return result
