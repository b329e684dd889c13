"""``apcnn demo``: the whole pipeline on the embedded synthetic dataset, no download.

Generates the synthetic attribute images, trains S-CNN and MG-CNN on the ImageNet-pretrained
default backbone, prints the per-group results table and writes ``OUT/results.json`` (the schema of
docs/design.md section 3) and ``OUT/report.md``. The settings are the packaged preset
``apcnn/configs/demo.yaml`` (``configs/demo.yaml`` in a checkout), so ``apcnn train -c
configs/demo.yaml`` reproduces it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

#: ``--quick``: a smaller data set and schedule, as overrides over the demo preset
QUICK_SETTINGS: dict[str, Any] = {
    "data.options": {"num_images": 300},
    "train.epochs_single": 2,
    "train.epochs_joint": 1,
    "train.rounds": 1,
}


def demo_config(out: str | Path, *, seed: int = 0, quick: bool = False) -> Any:
    """The demo's TrainConfig: the ``demo`` preset (+ QUICK_SETTINGS), writing to ``out``."""
    from .config import TrainConfig, load_config, preset_path

    settings = dict(QUICK_SETTINGS if quick else {}, **{"run.out": str(out), "train.seed": seed})
    overrides = [f"{key}={json.dumps(value)}" for key, value in settings.items()]
    return load_config(TrainConfig, preset_path("demo"), overrides)


def run_demo(
    out: str | Path = "runs/demo", *, seed: int = 0, quick: bool = False, overwrite: bool = False
) -> dict[str, Any]:
    """Train the demo, print the table, write results.json and report.md into ``out``.

    A folder that already holds a run (a training run or an earlier demo) is refused unless
    ``overwrite`` (``apcnn demo --overwrite``): nothing is deleted by accident.
    """
    from .engine import train
    from .reports import format_table
    from .runlog import atomic_write_json

    held = [n for n in ("checkpoints/state", "metrics.json") if (Path(out) / n).exists()]
    if held and not overwrite:
        from .config import ConfigError

        raise ConfigError(
            f"{out} already holds a run ({held[0]}; its checkpoints, metrics and logs would be "
            "deleted); pass --overwrite to replace it or --out DIR for a new demo"
        )
    cfg = demo_config(out, seed=seed, quick=quick)
    result = train(cfg, overwrite=overwrite)
    results = result["results_json"]
    atomic_write_json(Path(out) / "results.json", results)
    print()
    print(format_table(results, None, title="accuracy (%) on the synthetic test split"))
    print(f"\nresults: {Path(out) / 'results.json'}\nreport:  {Path(out) / 'report.md'}")
    return result
